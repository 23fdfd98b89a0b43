"""What a FLUX single file holds, read from tensor names and shapes only (no weights are loaded).

ComfyUI keeps FLUX.1 as separate files: the transformer (BFL layout ``double_blocks.*``, sometimes
prefixed ``model.diffusion_model.``, or diffusers' ``transformer_blocks.*``), CLIP-L and T5-XXL in
transformers' layout, and the autoencoder ``ae.safetensors`` (BFL/ldm layout ``encoder.down.*``). An
all-in-one checkpoint holds all four under ``model.diffusion_model.``, ``text_encoders.clip_l.transformer.``,
``text_encoders.t5xxl.transformer.`` and ``vae.``. Every config value shapes can tell is read from
them, so a tiny test model and the released 12B model load through the same code; the rest follows
FLUX.1's own rules (rotary axes split 1:7:7 of the head width as FLUX.1's [16, 56, 56] of 128, 4x MLP).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidModelError

Shapes = Mapping[str, tuple[int, ...]]
BFL_PREFIX = "model.diffusion_model."
CHECKPOINT_PREFIXES = {"transformer": BFL_PREFIX, "clip_l": "text_encoders.clip_l.transformer.",
                       "t5": "text_encoders.t5xxl.transformer.", "vae": "vae."}
FILL_IN_CHANNELS = 384  # 64 packed latent + 64 masked image + 256 packed mask channels
KONTEXT_IN_CHANNELS = 64
# FLUX.1's scheduler (scheduler/scheduler_config.json of the released FLUX.1 Fill / Kontext [dev] folders)
FLUX_SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
                         "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
                         "max_image_seq_len": 4096}
# FLUX.1's autoencoder constants (not in the weights)
FLUX_VAE_FACTORS = {"scaling_factor": 0.3611, "shift_factor": 0.1159}


def safetensors_shapes(path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a .safetensors header, without reading the weights."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as exc:  # a truncated header raises several different types
        raise InvalidModelError(f"{path.name} could not be read as a safetensors file ({type(exc).__name__}: "
                                f"{exc})") from exc


def shapes_of(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state.items()}


def sub_shapes(shapes: Shapes, prefix: str) -> dict[str, tuple[int, ...]]:
    """The entries under ``prefix``, the prefix removed."""
    return {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}


def transformer_layout(shapes: Shapes) -> str | None:
    """``"bfl"``, ``"diffusers"`` or None: which FLUX transformer layout the (unprefixed) names use."""
    if "double_blocks.0.img_attn.norm.query_norm.scale" in shapes:
        return "bfl"
    if "transformer_blocks.0.attn.norm_q.weight" in shapes and "x_embedder.weight" in shapes:
        return "diffusers"
    return None


def strip_transformer_prefix(shapes: Shapes) -> dict[str, tuple[int, ...]]:
    """BFL files come with or without ``model.diffusion_model.``; ComfyUI's own saves keep it."""
    prefixed = sub_shapes(shapes, BFL_PREFIX)
    return prefixed if transformer_layout(prefixed) else dict(shapes)


def is_flux_checkpoint(shapes: Shapes) -> bool:
    """An all-in-one FLUX checkpoint (or any file whose transformer sits under ``model.diffusion_model.``)."""
    return transformer_layout(sub_shapes(shapes, BFL_PREFIX)) == "bfl"


def _get(shapes: Shapes, key: str, what: str) -> tuple[int, ...]:
    try:
        return shapes[key]
    except KeyError:
        raise InvalidModelError(f"{what} is missing the tensor {key!r}; the file is incomplete or not this "
                                "kind of model") from None


def _count(shapes: Shapes, pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in shapes if (m := regex.match(k))})


def rope_axes(head_dim: int, what: str) -> list[int]:
    """FLUX.1's rotary split of one head: [16, 56, 56] of 128, i.e. 1/8 and 7/16 twice (each even)."""
    axes = [head_dim // 8, head_dim * 7 // 16, head_dim * 7 // 16]
    if head_dim % 32 or sum(axes) != head_dim:
        raise InvalidModelError(f"{what}: a head width of {head_dim} cannot be split into FLUX.1's rotary axes "
                                "(1/8, 7/16, 7/16 of the head); this is not a FLUX.1 transformer")
    return axes


def transformer_config(shapes: Shapes, what: str) -> dict[str, Any]:
    """``FluxTransformer2DModel`` config from an unprefixed BFL or diffusers state's shapes."""
    layout = transformer_layout(shapes)
    if layout == "bfl":
        names = {"img_in": "img_in.weight", "txt_in": "txt_in.weight", "vector_in": "vector_in.in_layer.weight",
                 "qk": "double_blocks.0.img_attn.norm.query_norm.scale", "mlp": "double_blocks.0.img_mlp.0.weight",
                 "out": "final_layer.linear.weight", "guidance": "guidance_in.in_layer.weight",
                 "double": r"double_blocks\.(\d+)\.", "single": r"single_blocks\.(\d+)\."}
    elif layout == "diffusers":
        names = {"img_in": "x_embedder.weight", "txt_in": "context_embedder.weight",
                 "vector_in": "time_text_embed.text_embedder.linear_1.weight",
                 "qk": "transformer_blocks.0.attn.norm_q.weight", "mlp": "transformer_blocks.0.ff.net.0.proj.weight",
                 "out": "proj_out.weight", "guidance": "time_text_embed.guidance_embedder.linear_1.weight",
                 "double": r"transformer_blocks\.(\d+)\.", "single": r"single_transformer_blocks\.(\d+)\."}
    else:
        raise InvalidModelError(
            f"{what} is not a FLUX.1 transformer: it has neither 'double_blocks.*' (BFL/ComfyUI layout) nor "
            "'transformer_blocks.*' with 'x_embedder' (diffusers layout) tensors. models/diffusion_models holds "
            "FLUX transformers such as flux1-fill-dev.safetensors.")
    hidden, in_channels = _get(shapes, names["img_in"], what)
    head_dim = _get(shapes, names["qk"], what)[0]
    if hidden % head_dim:
        raise InvalidModelError(f"{what}: hidden size {hidden} is not a multiple of the head width {head_dim}")
    mlp = _get(shapes, names["mlp"], what)[0]
    if mlp != 4 * hidden:
        raise InvalidModelError(f"{what}: the MLP is {mlp} wide for a hidden size of {hidden}; FLUX.1's is 4x")
    return {
        "patch_size": 1,
        "in_channels": int(in_channels),
        "out_channels": int(_get(shapes, names["out"], what)[0]),
        "num_layers": _count(shapes, names["double"]),
        "num_single_layers": _count(shapes, names["single"]),
        "attention_head_dim": int(head_dim),
        "num_attention_heads": int(hidden // head_dim),
        "joint_attention_dim": int(_get(shapes, names["txt_in"], what)[1]),
        "pooled_projection_dim": int(_get(shapes, names["vector_in"], what)[1]),
        "guidance_embeds": names["guidance"] in shapes,
        "axes_dims_rope": rope_axes(int(head_dim), what),
    }


def family_for(config: dict[str, Any], filename: str) -> str:
    """``flux-fill`` (384 input channels) or ``flux-kontext`` (64, and the file named ``*kontext*``).

    FLUX.1 Kontext [dev] and the FLUX.1 [dev] text-to-image model have identical shapes, so a 64-channel
    transformer counts as Kontext only when its file name says so; anything else is refused."""
    channels = config["in_channels"]
    if channels == FILL_IN_CHANNELS:
        return "flux-fill"
    if channels == KONTEXT_IN_CHANNELS:
        if "kontext" in filename.lower():
            return "flux-kontext"
        raise InvalidModelError(
            f"{filename} is a 64-channel FLUX.1 transformer: FLUX.1 Kontext [dev] and the FLUX.1 [dev]/[schnell] "
            "text-to-image models have the same shapes, and only Kontext inpaints here. If this file is "
            "Kontext, give it a name containing 'kontext' (e.g. flux1-kontext-dev.safetensors); FLUX.1 [dev] "
            "itself is not an inpainting model: use FLUX.1 Fill (flux1-fill-dev.safetensors).")
    raise InvalidModelError(
        f"{filename} is a FLUX.1 transformer with {channels} input channels; FLUX.1 Fill (384) and FLUX.1 "
        "Kontext (64) inpaint here, other variants (Depth, Canny: 128) do not.")


def clip_config(shapes: Shapes, what: str) -> dict[str, Any]:
    """``CLIPTextConfig`` values from a transformers-layout CLIP text encoder (``text_model.`` stripped).

    Head count follows CLIP's 64-wide heads (CLIP-L: 12 heads of 64)."""
    tokens = _get(shapes, "embeddings.token_embedding.weight", what)
    hidden = int(tokens[1])
    return {
        "vocab_size": int(tokens[0]),
        "hidden_size": hidden,
        "max_position_embeddings": int(_get(shapes, "embeddings.position_embedding.weight", what)[0]),
        "num_hidden_layers": _count(shapes, r"encoder\.layers\.(\d+)\."),
        "intermediate_size": int(_get(shapes, "encoder.layers.0.mlp.fc1.weight", what)[0]),
        "num_attention_heads": max(1, hidden // 64),
        "projection_dim": hidden,
        "hidden_act": "quick_gelu",
        "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,  # the openai/clip-vit-large-patch14 values
    }


def t5_config(shapes: Shapes, what: str) -> dict[str, Any]:
    """``T5Config`` values from a transformers-layout T5 encoder (``encoder.*``, ``shared.weight``)."""
    vocab, d_model = _get(shapes, "shared.weight", what)
    attn = "encoder.block.0.layer.0.SelfAttention."
    buckets, heads = _get(shapes, attn + "relative_attention_bias.weight", what)
    inner = _get(shapes, attn + "q.weight", what)[0]
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in shapes
    wi = "encoder.block.0.layer.1.DenseReluDense." + ("wi_0.weight" if gated else "wi.weight")
    return {
        "vocab_size": int(vocab), "d_model": int(d_model), "d_kv": int(inner // heads), "num_heads": int(heads),
        "d_ff": int(_get(shapes, wi, what)[0]), "num_layers": _count(shapes, r"encoder\.block\.(\d+)\."),
        "relative_attention_num_buckets": int(buckets), "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu" if gated else "relu", "dropout_rate": 0.0,
        "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0, "is_encoder_decoder": False,
        "tie_word_embeddings": False,
    }


def vae_layout(shapes: Shapes) -> str | None:
    """``"ldm"`` (BFL ae.safetensors), ``"diffusers"`` or None."""
    if "encoder.down.0.block.0.conv1.weight" in shapes:
        return "ldm"
    if "encoder.down_blocks.0.resnets.0.conv1.weight" in shapes:
        return "diffusers"
    return None


def vae_config(shapes: Shapes, what: str) -> dict[str, Any]:
    """``AutoencoderKL`` config of FLUX's autoencoder (no quant convs, 16 latent channels) from its shapes."""
    layout = vae_layout(shapes)
    if layout is None:
        raise InvalidModelError(f"{what} is not an autoencoder (no 'encoder.down.*' or 'encoder.down_blocks.*' "
                                "tensors); models/vae holds FLUX's ae.safetensors")
    down, block = ("encoder.down.", "block") if layout == "ldm" else ("encoder.down_blocks.", "resnets")
    levels = _count(shapes, re.escape(down) + r"(\d+)\.")
    channels = [int(_get(shapes, f"{down}{i}.{block}.0.conv2.weight", what)[0]) for i in range(levels)]
    latent = int(_get(shapes, "decoder.conv_in.weight", what)[1])
    if "quant_conv.weight" in shapes or "post_quant_conv.weight" in shapes:
        raise InvalidModelError(f"{what} has quant convs: an SD-style autoencoder, not FLUX's (ae.safetensors)")
    return {
        "in_channels": int(_get(shapes, "encoder.conv_in.weight", what)[1]),
        "out_channels": int(_get(shapes, "decoder.conv_out.weight", what)[0]),
        "latent_channels": latent,
        "block_out_channels": channels,
        "layers_per_block": _count(shapes, re.escape(f"{down}0.{block}.") + r"(\d+)\."),
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "norm_num_groups": 32,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        **FLUX_VAE_FACTORS,
    }


def component_kind(shapes: Shapes) -> str | None:
    """``clip_l``, ``t5``, ``vae``, ``transformer`` or None: what one component file holds, by its names."""
    if "text_model.embeddings.token_embedding.weight" in shapes or "embeddings.token_embedding.weight" in shapes:
        return "clip_l"
    if "shared.weight" in shapes and any(k.startswith("encoder.block.") for k in shapes):
        return "t5"
    if vae_layout(shapes):
        return "vae"
    if transformer_layout(strip_transformer_prefix(shapes)):
        return "transformer"
    return None


def clip_shapes(shapes: Shapes) -> dict[str, tuple[int, ...]]:
    """CLIP-L names without the ``text_model.`` prefix transformers' files carry."""
    return {k.removeprefix("text_model."): v for k, v in shapes.items()}
