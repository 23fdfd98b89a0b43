"""Tiny segment-anything models built in code (no weights), and saving them like real checkpoints."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

TINY_IMAGE_SIZE = 128
TINY_PATCH = 16
TINY_WINDOW = 4  # 8x8 token grid -> 2x2 windows, block 1 is global


def build_tiny_sam(seed: int = 0) -> Sam:
    """A SAM with the real classes and tiny dims (embed 32, depth 2, 2 heads, 128 px); eval mode.

    Position embeddings, normally zero-initialised, are randomised so that a wrongly mapped tensor
    would change the outputs.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        grid = TINY_IMAGE_SIZE // TINY_PATCH
        sam = Sam(
            image_encoder=ImageEncoderViT(
                depth=2,
                embed_dim=32,
                img_size=TINY_IMAGE_SIZE,
                mlp_ratio=4,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                num_heads=2,
                patch_size=TINY_PATCH,
                qkv_bias=True,
                use_rel_pos=True,
                global_attn_indexes=(1,),
                window_size=TINY_WINDOW,
                out_chans=32,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=32,
                image_embedding_size=(grid, grid),
                input_image_size=(TINY_IMAGE_SIZE, TINY_IMAGE_SIZE),
                mask_in_chans=8,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=8),
                transformer_dim=32,
                iou_head_depth=3,
                iou_head_hidden_dim=32,
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
    with torch.no_grad():
        for name, param in sam.named_parameters():
            if "rel_pos" in name or name.endswith("pos_embed"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return sam.eval()


def save_sam(model: torch.nn.Module, path: str | Path) -> Path:
    """Write ``model``'s state dict as .safetensors or .pth (``torch.save``), chosen by suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, str(path))
    return path
