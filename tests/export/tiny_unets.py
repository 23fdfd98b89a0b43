"""Tiny UNets of the real diffusers class (SD1.5-style and SDXL-style) and random peft LoRAs for them."""

from __future__ import annotations

import torch

SD15_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]


def tiny_sd15_unet(in_channels: int = 9, seed: int = 0):
    """SD1.5 layout (cross-attention down/up blocks, 8 heads, conv projections), 32/64 channels."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8).eval()


def tiny_sdxl_unet(in_channels: int = 9, seed: int = 0):
    """SDXL layout: text_time added embeddings (text_embeds [B,16] + 6 time ids of 8), linear projections."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=48, attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=16 + 6 * 8, norm_num_groups=8).eval()


def add_random_lora(unet, name: str, seed: int, rank: int = 4, targets: list[str] | None = None) -> None:
    """Attach a peft LoRA adapter with random, non-zero A and B (so it visibly changes the output)."""
    from peft import LoraConfig

    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets or SD15_LORA_TARGETS,
                                init_lora_weights=False), adapter_name=name)
    with torch.no_grad():
        for param_name, param in unet.named_parameters():
            if f"lora_B.{name}" in param_name:
                param.mul_(0.3)
