"""Build a FLUX.1 Fill / Kontext diffusers pipeline from ComfyUI-style single files, offline.

Each component is read once (safetensors), its floating tensors cast to the run dtype (fp8-stored files
are upcast; ComfyUI's "scaled" fp8 files have their ``scale_weight`` applied first), converted with
diffusers' own converters where the layout needs it (``convert_flux_transformer_checkpoint_to_diffusers``
for the BFL transformer, ``convert_ldm_vae_checkpoint`` for ``ae.safetensors``; CLIP-L and T5 files are
already in transformers' layout), and loaded into a module built on the meta device from the config
read from the shapes (``flux_probe``). Tokenizers come from disk (``tokenizers``); the scheduler config
is FLUX.1's, written in code. Nothing is fetched.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidModelError
from ..models import load_state_dict
from . import flux_probe as probe
from .flux_files import Component, FluxFiles
from .tokenizers import find_t5_tokenizer_dir, find_tokenizer_dir, load_t5_tokenizer

PIPELINE_CLASSES = {"flux-fill": "FluxFillPipeline", "flux-kontext": "FluxKontextInpaintPipeline"}
# diffusers' BFL converter splits single_blocks.*.linear1 at FLUX.1's widths (3 x 3072 + 4 x 3072)
_CONVERTER_INNER = 3072
_CLIP_IGNORED = ("text_projection.weight", "logit_scale", "embeddings.position_ids")


def load_flux_single_file_pipeline(files: FluxFiles, torch_dtype, tokenizer_dir: str | None = None,
                                   t5_tokenizer_dir: str | None = None):
    """The ``FluxFillPipeline`` / ``FluxKontextInpaintPipeline`` of ``files``, in ``torch_dtype``, on the CPU."""
    import diffusers
    from transformers import CLIPTokenizer

    clip_dir = find_tokenizer_dir(tokenizer_dir)
    t5_dir = find_t5_tokenizer_dir(t5_tokenizer_dir)
    states: dict[Any, dict] = {}  # one read per file, even when all four parts share a checkpoint

    def state_of(part: Component) -> dict:
        if part.path not in states:
            states[part.path] = load_state_dict(part.path)
        state = states[part.path]
        if part.prefix:
            return {k[len(part.prefix):]: v for k, v in state.items() if k.startswith(part.prefix)}
        return state

    transformer = build_transformer(state_of(files.transformer), files.config, torch_dtype, files.transformer.label)
    text_encoder = build_clip(state_of(files.clip_l), torch_dtype, files.clip_l.label)
    text_encoder_2 = build_t5(state_of(files.t5), torch_dtype, files.t5.label)
    vae = build_vae(state_of(files.vae), torch_dtype, files.vae.label)
    states.clear()
    tokenizer = CLIPTokenizer(str(clip_dir / "vocab.json"), str(clip_dir / "merges.txt"),
                              pad_token="<|endoftext|>", model_max_length=77)
    tokenizer_2 = load_t5_tokenizer(t5_dir)
    _check_vocab(len(tokenizer), text_encoder.config.vocab_size, files.clip_l.label, clip_dir, exact=True)
    _check_vocab(len(tokenizer_2), text_encoder_2.config.vocab_size, files.t5.label, t5_dir, exact=False)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**probe.FLUX_SCHEDULER_CONFIG)
    pipeline_class = getattr(diffusers, PIPELINE_CLASSES[files.family])
    return pipeline_class(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                          text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)


def cast_state(state: dict, torch_dtype) -> dict:
    """Floating tensors in ``torch_dtype`` (fp8 upcast); ComfyUI's scaled fp8 (``*.scale_weight``) unscaled."""
    import torch

    out: dict = {}
    for key, value in state.items():
        if key == "scaled_fp8" or key.endswith((".scale_weight", ".scale_input")):
            continue
        if value.is_floating_point():
            value = value.to(torch.float32) if value.element_size() == 1 else value
            scale = state.get(key[: -len("weight")] + "scale_weight") if key.endswith(".weight") else None
            if scale is not None:
                value = value.to(torch.float32) * scale.to(torch.float32)
            value = value.to(torch_dtype)
        out[key] = value
    return out


def build_transformer(state: dict, config: dict, torch_dtype, what: str):
    """``FluxTransformer2DModel`` from a BFL (optionally ``model.diffusion_model.``-prefixed) or diffusers state."""
    from diffusers import FluxTransformer2DModel

    state = cast_state(state, torch_dtype)
    if probe.transformer_layout(probe.shapes_of(state)) != "diffusers":
        prefixed = {k[len(probe.BFL_PREFIX):]: v for k, v in state.items() if k.startswith(probe.BFL_PREFIX)}
        state = convert_bfl_transformer(prefixed or state, config, what)
    return _load_module(lambda: FluxTransformer2DModel(**config), state, what)


def convert_bfl_transformer(state: dict, config: dict, what: str) -> dict:
    """BFL -> diffusers names through diffusers' converter; ``linear1`` of the single blocks is split here at
    the transformer's own width when it is not FLUX.1's 3072 (the converter's constant)."""
    import torch
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    inner = config["num_attention_heads"] * config["attention_head_dim"]
    state = dict(state)
    pieces: dict[str, torch.Tensor] = {}
    if inner != _CONVERTER_INNER:
        sizes = (inner, inner, inner, 4 * inner)
        placeholder = 7 * _CONVERTER_INNER
        for i in range(config["num_single_layers"]):
            for kind in ("weight", "bias"):
                key = f"single_blocks.{i}.linear1.{kind}"
                if key not in state:
                    continue
                tensor = state.pop(key)
                q, k, v, mlp = torch.split(tensor, sizes, dim=0)
                base = f"single_transformer_blocks.{i}."
                pieces.update({f"{base}attn.to_q.{kind}": q, f"{base}attn.to_k.{kind}": k,
                               f"{base}attn.to_v.{kind}": v, f"{base}proj_mlp.{kind}": mlp})
                state[key] = tensor.new_empty((placeholder, 0) if kind == "weight" else (placeholder,))
    try:
        converted = convert_flux_transformer_checkpoint_to_diffusers(state)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise InvalidModelError(f"{what} could not be converted from the BFL layout: {type(exc).__name__}: "
                                f"{exc}") from exc
    converted.update(pieces)
    return converted


def build_clip(state: dict, torch_dtype, what: str):
    """``CLIPTextModel`` from a transformers-layout CLIP-L file (``text_model.*`` names)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    state = {k.removeprefix("text_model."): v for k, v in cast_state(state, torch_dtype).items()}
    state = {k: v for k, v in state.items() if k not in _CLIP_IGNORED}
    config = CLIPTextConfig(**probe.clip_config(probe.shapes_of(state), what))
    return _load_module(lambda: CLIPTextModel(config), state, what)


def build_t5(state: dict, torch_dtype, what: str):
    """``T5EncoderModel`` from a transformers-layout T5 encoder file (``encoder.*``, ``shared.weight``)."""
    import torch
    from transformers import T5Config, T5EncoderModel

    state = cast_state(state, torch_dtype)
    if torch_dtype == torch.float16:  # T5 overflows fp16 in its feed-forward output (transformers keeps it fp32)
        state = {k: v.float() if ".wo." in k else v for k, v in state.items()}
    if "shared.weight" in state:
        state.setdefault("encoder.embed_tokens.weight", state["shared.weight"])
    config = T5Config(**probe.t5_config(probe.shapes_of(state), what))
    return _load_module(lambda: T5EncoderModel(config), state, what)


def build_vae(state: dict, torch_dtype, what: str):
    """FLUX's ``AutoencoderKL`` from ``ae.safetensors`` (BFL/ldm layout, via diffusers' converter) or diffusers'."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    state = cast_state(state, torch_dtype)
    config = probe.vae_config(probe.shapes_of(state), what)
    if probe.vae_layout(probe.shapes_of(state)) == "ldm":
        try:
            state = convert_ldm_vae_checkpoint(state, config)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise InvalidModelError(f"{what} could not be converted from the ldm layout: {exc}") from exc
    return _load_module(lambda: AutoencoderKL(**config), state, what)


def _load_module(factory, state: dict, what: str):
    """Build on the meta device (no second copy of the weights), then take the tensors as they are."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        module = factory()
    try:
        result = module.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:  # shape mismatches
        raise InvalidModelError(f"{what} does not fit the model its shapes describe: {exc}") from exc
    tied = {"encoder.embed_tokens.weight"}
    missing = [k for k in result.missing_keys if k not in tied]
    unloaded = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if missing or unloaded or result.unexpected_keys:
        detail = []
        if missing or unloaded:
            names = missing or unloaded
            detail.append(f"{len(names)} tensors are missing, e.g. {', '.join(names[:3])}")
        if result.unexpected_keys:
            detail.append(f"{len(result.unexpected_keys)} are not part of the model, e.g. "
                          f"{', '.join(result.unexpected_keys[:3])}")
        raise InvalidModelError(f"{what}: the weights are incomplete or of another model: {'; '.join(detail)}")
    module.eval()
    return module


def _check_vocab(tokens: int, vocab: int, what: str, folder, exact: bool) -> None:
    if tokens > vocab or (exact and tokens != vocab):
        raise InvalidModelError(f"{what}: the tokenizer found in {folder} has {tokens} tokens but the text encoder "
                                f"has {vocab} embeddings; point --tokenizer-dir / $BACKDROP_CLIP_TOKENIZER or "
                                "$BACKDROP_T5_TOKENIZER at the matching files")
