"""Which UNet / FLUX transformer layers the LoRA covers, and how it is attached with peft."""

from __future__ import annotations

import re
from typing import Any

# Every trainable layer kind of an SD1.5/SDXL UNet: attention, feed-forward, transformer projections,
# resnet convolutions and time-embedding projections, and the time embedding MLP itself.
ALL_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out",
                    "conv1", "conv2", "conv_shortcut", "time_emb_proj", "time_embedding.linear_1",
                    "time_embedding.linear_2"]
# Every linear layer of a FLUX.1 transformer's blocks (diffusers FluxTransformer2DModel names): in the double blocks
# the image and text attention (q/k/v, out, the added q/k/v and out), both feed-forwards and both modulation linears;
# in the single blocks the attention q/k/v, proj_mlp (together BFL's fused ``linear1``), proj_out (``linear2``) and
# the modulation linear; and the embedders (image and text inputs, timestep, guidance and pooled-text MLPs). A ``*``
# stands for one block index: ``proj_out`` alone would also catch the transformer's final output projection, which
# stays frozen, like ``norm_out`` (ComfyUI maps that one with a scale/shift swap).
ALL_FLUX_TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                    "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                    "ff_context.net.2", "proj_mlp", "single_transformer_blocks.*.proj_out", "norm1.linear",
                    "norm1_context.linear", "single_transformer_blocks.*.norm.linear", "x_embedder",
                    "context_embedder", "time_text_embed.timestep_embedder.linear_1",
                    "time_text_embed.timestep_embedder.linear_2", "time_text_embed.guidance_embedder.linear_1",
                    "time_text_embed.guidance_embedder.linear_2", "time_text_embed.text_embedder.linear_1",
                    "time_text_embed.text_embedder.linear_2"]
ADAPTER_NAME = "backdrop_train"


def default_targets(flux: bool) -> list[str]:
    """All layers of the family's denoiser: ``ALL_FLUX_TARGETS`` for a FLUX transformer, else ``ALL_UNET_TARGETS``."""
    return list(ALL_FLUX_TARGETS if flux else ALL_UNET_TARGETS)


def peft_targets(targets: list[str]) -> list[str] | str:
    """peft ``target_modules``: the list as is (each name matches a module path ending in it), or, when a name
    holds ``*`` (one block index), one regex that keeps the same suffix rule for every name."""
    if not any("*" in t for t in targets):
        return list(targets)
    parts = [r"(?:.*\.)?" + re.escape(t).replace(r"\*", r"\d+") for t in targets]
    return "(?:" + "|".join(parts) + ")"


def lora_config(rank: int, alpha: float | None = None, targets: list[str] | None = None):
    """A peft ``LoraConfig`` over ``targets`` (default: all UNet layers); alpha defaults to the rank."""
    from peft import LoraConfig

    from ..errors import InvalidInputError

    if rank < 1:
        raise InvalidInputError(f"LoRA rank must be at least 1, got {rank}")
    return LoraConfig(r=int(rank), lora_alpha=float(alpha if alpha is not None else rank),
                      target_modules=peft_targets(list(targets or ALL_UNET_TARGETS)), init_lora_weights=True)


def attach_lora(unet: Any, rank: int, alpha: float | None = None, targets: list[str] | None = None) -> list:
    """Freeze ``unet``, add a trainable LoRA adapter in place and return its parameters (float32)."""
    import torch

    unet.requires_grad_(False)
    unet.add_adapter(lora_config(rank, alpha, targets), adapter_name=ADAPTER_NAME)
    params = []
    for name, param in unet.named_parameters():
        if "lora_" in name:
            param.data = param.data.to(torch.float32)
            param.requires_grad_(True)
            params.append(param)
    return params


def lora_state(unet: Any) -> dict:
    """The adapter's weights as peft keys without the adapter name (``<module>.lora_A.weight``)."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME).items()}


def load_lora_state(unet: Any, state: dict) -> None:
    """Put saved adapter weights (``lora_state`` keys) back into ``unet``'s adapter."""
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(unet, state, adapter_name=ADAPTER_NAME)
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        from ..errors import InvalidModelError

        raise InvalidModelError(f"{len(unexpected)} LoRA weights do not fit this UNet, e.g. {unexpected[0]}")
