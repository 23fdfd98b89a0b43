"""Read a single-file (original LDM layout) SD checkpoint's architecture from its tensor shapes.

The shipped configs in ``configs/<family>/`` describe the released models. Everything that can be
read from weight shapes (channels, depths, in-channels, context size, vocab...) is taken from the
checkpoint instead, so a fine-tune, a 4-channel base model or a custom size still loads exactly.
What shapes cannot tell (attention head counts) follows each family's rule: SD1.x uses 8 heads,
SDXL and the CLIP text encoders use 64-wide heads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidModelError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD15_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."
SD2_OPENCLIP_PREFIX = "cond_stage_model.model."
FAMILIES = ("sd15", "sdxl")


@dataclass(frozen=True)
class CheckpointLayout:
    """What a single-file checkpoint holds: family, UNet in-channels and per-component config overrides."""

    family: str
    unet_in_channels: int
    overrides: dict[str, dict[str, Any]]  # component folder -> config values read from shapes

    @property
    def is_inpainting(self) -> bool:
        return self.unet_in_channels == 9


def probe_checkpoint(state: dict[str, Any], name: str = "checkpoint") -> CheckpointLayout:
    """Detect the family and read component configs from shapes; clear errors for anything else."""
    if not any(k.startswith(UNET_PREFIX) for k in state):
        raise InvalidModelError(
            f"{name} has no '{UNET_PREFIX}*' tensors, so it is not a single-file Stable Diffusion checkpoint "
            "(a LoRA, VAE or diffusers-format file?). Put LoRAs in models/loras and diffusers folders in "
            "models/diffusers.")
    family = _family(state, name)
    unet = _unet_config(state, family, name)
    overrides = {"unet": unet, "vae": _vae_config(state, name)}
    clip_prefix = SD15_CLIP_PREFIX if family == "sd15" else SDXL_CLIP_PREFIX
    overrides["text_encoder"] = _clip_config(state, clip_prefix + "text_model.", name)
    if family == "sdxl":
        overrides["text_encoder_2"] = _open_clip_config(state, SDXL_OPENCLIP_PREFIX, name)
        pooled = overrides["text_encoder_2"]["projection_dim"]
        extra = unet.get("projection_class_embeddings_input_dim", 0) - pooled
        if extra <= 0 or extra % 6:
            raise InvalidModelError(f"{name}: the SDXL UNet's added-condition size does not fit its text encoder")
        unet["addition_time_embed_dim"] = extra // 6
    return CheckpointLayout(family=family, unet_in_channels=unet["in_channels"], overrides=overrides)


def _family(state: dict[str, Any], name: str) -> str:
    if any(k.startswith(SDXL_OPENCLIP_PREFIX) for k in state):
        return "sdxl"
    if any(k.startswith(SD15_CLIP_PREFIX) for k in state):
        return "sd15"
    if any(k.startswith(SD2_OPENCLIP_PREFIX) for k in state):
        raise InvalidModelError(
            f"{name} is an SD2.x checkpoint, which single-file loading does not support (its prediction type "
            "cannot be read from the weights). Convert it to a diffusers folder in models/diffusers.")
    raise InvalidModelError(f"{name} has a UNet but no text encoder this loader recognises (SD1.x or SDXL)")


def _tensor(state: dict[str, Any], key: str, name: str):
    try:
        return state[key]
    except KeyError:
        raise InvalidModelError(f"{name} is missing the tensor {key!r}; the file is incomplete or corrupt") from None


def _indices(state: dict[str, Any], pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` (a regex with one group) over the keys."""
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state if (m := regex.match(k))})


def _unet_config(state: dict[str, Any], family: str, name: str) -> dict[str, Any]:
    p = UNET_PREFIX
    conv_in = _tensor(state, p + "input_blocks.0.0.weight", name)
    levels: list[dict[str, int]] = [{"resnets": 0, "depth": 0, "channels": 0}]
    for i in _indices(state, re.escape(p) + r"input_blocks\.(\d+)\.")[1:]:
        if p + f"input_blocks.{i}.0.op.weight" in state:
            levels.append({"resnets": 0, "depth": 0, "channels": 0})
            continue
        level = levels[-1]
        level["resnets"] += 1
        level["channels"] = int(_tensor(state, p + f"input_blocks.{i}.0.out_layers.3.weight", name).shape[0])
        depth = len(_indices(state, re.escape(p + f"input_blocks.{i}.1.transformer_blocks.") + r"(\d+)\."))
        level["depth"] = max(level["depth"], depth)
    layers = {lv["resnets"] for lv in levels}
    if len(layers) != 1 or 0 in layers:
        raise InvalidModelError(f"{name}: the UNet's down blocks have uneven depth; not an SD1.x/SDXL UNet")
    channels = [lv["channels"] for lv in levels]
    attn_keys = [k for k in state if k.startswith(p) and k.endswith("attn2.to_k.weight")]
    if not attn_keys:
        raise InvalidModelError(f"{name}: the UNet has no cross-attention, so it cannot take a text prompt")
    proj_in = next(k for k in state if k.startswith(p) and k.endswith(".proj_in.weight"))
    mid_depth = len(_indices(state, re.escape(p + "middle_block.1.transformer_blocks.") + r"(\d+)\."))
    config: dict[str, Any] = {
        "in_channels": int(conv_in.shape[1]),
        "out_channels": int(_tensor(state, p + "out.2.weight", name).shape[0]),
        "block_out_channels": channels,
        "layers_per_block": layers.pop(),
        "cross_attention_dim": int(state[attn_keys[0]].shape[1]),
        "use_linear_projection": state[proj_in].dim() == 2,
        "down_block_types": ["CrossAttnDownBlock2D" if lv["depth"] else "DownBlock2D" for lv in levels],
        "up_block_types": ["CrossAttnUpBlock2D" if lv["depth"] else "UpBlock2D" for lv in reversed(levels)],
    }
    if family == "sdxl":
        config["transformer_layers_per_block"] = [max(1, lv["depth"]) for lv in levels]
        if mid_depth != config["transformer_layers_per_block"][-1]:
            raise InvalidModelError(f"{name}: the UNet's middle block depth differs from its last down block")
        config["attention_head_dim"] = [max(1, c // 64) for c in channels]
        label = _tensor(state, p + "label_emb.0.0.weight", name)
        config["projection_class_embeddings_input_dim"] = int(label.shape[1])
    else:
        config["transformer_layers_per_block"] = 1
    return config


def _vae_config(state: dict[str, Any], name: str) -> dict[str, Any]:
    p = VAE_PREFIX
    conv_in = _tensor(state, p + "encoder.conv_in.weight", name)
    levels = _indices(state, re.escape(p + "encoder.down.") + r"(\d+)\.")
    blocks = _indices(state, re.escape(p + "encoder.down.0.block.") + r"(\d+)\.")
    channels = [int(_tensor(state, p + f"encoder.down.{i}.block.0.conv2.weight", name).shape[0]) for i in levels]
    return {
        "in_channels": int(conv_in.shape[1]),
        "out_channels": int(_tensor(state, p + "decoder.conv_out.weight", name).shape[0]),
        "latent_channels": int(_tensor(state, p + "post_quant_conv.weight", name).shape[0]),
        "block_out_channels": channels,
        "layers_per_block": len(blocks),
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels),
    }


def _clip_config(state: dict[str, Any], prefix: str, name: str) -> dict[str, Any]:
    tokens = _tensor(state, prefix + "embeddings.token_embedding.weight", name)
    hidden = int(tokens.shape[1])
    return {
        "vocab_size": int(tokens.shape[0]),
        "hidden_size": hidden,
        "max_position_embeddings": int(_tensor(state, prefix + "embeddings.position_embedding.weight", name).shape[0]),
        "num_hidden_layers": len(_indices(state, re.escape(prefix + "encoder.layers.") + r"(\d+)\.")),
        "intermediate_size": int(_tensor(state, prefix + "encoder.layers.0.mlp.fc1.weight", name).shape[0]),
        "num_attention_heads": max(1, hidden // 64),
        "projection_dim": hidden,
    }


def _open_clip_config(state: dict[str, Any], prefix: str, name: str) -> dict[str, Any]:
    tokens = _tensor(state, prefix + "token_embedding.weight", name)
    hidden = int(tokens.shape[1])
    return {
        "vocab_size": int(tokens.shape[0]),
        "hidden_size": hidden,
        "max_position_embeddings": int(_tensor(state, prefix + "positional_embedding", name).shape[0]),
        "num_hidden_layers": len(_indices(state, re.escape(prefix + "transformer.resblocks.") + r"(\d+)\.")),
        "intermediate_size": int(_tensor(state, prefix + "transformer.resblocks.0.mlp.c_fc.weight", name).shape[0]),
        "num_attention_heads": max(1, hidden // 64),
        "projection_dim": int(_tensor(state, prefix + "text_projection", name).shape[1]),
    }
