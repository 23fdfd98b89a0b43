"""LoRAs from models/loras, applied with peft through diffusers' LoRA loaders.

A handle's LoRA stack is applied right before it runs (``activated``): adapters load once per base
pipeline and are then switched with ``set_adapters`` (each with its own strength), disabled for a
handle without LoRAs (peft then runs the base layers untouched, so outputs equal the base model's
exactly), or fused for speed. Both the kohya/ComfyUI and the diffusers/peft key formats load;
before loading, every LoRA key is checked against the base model so a LoRA for another base model
fails with the list of keys that do not fit instead of loading half-way.

FLUX.1 Fill and Kontext pipelines take FLUX LoRAs the same way (diffusers' ``FluxLoraLoaderMixin`` converts the
kohya/ComfyUI ``lora_unet_double_blocks_*`` layout, ai-toolkit and diffusers/peft ``transformer.*``
keys); a FLUX.1 [dev] LoRA on Fill's wider ``x_embedder`` input is zero-padded by diffusers, so that
one narrower input is accepted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import InvalidInputError, InvalidModelError
from ..models import get_locator, load_state_dict
from .loader import LoadedPipeline, LoraSpec, content_fingerprint

_ROLE_SUFFIXES = {
    ".lora_A.weight": "down", ".lora_B.weight": "up", ".lora.down.weight": "down", ".lora.up.weight": "up",
    ".lora_linear_layer.down.weight": "down", ".lora_linear_layer.up.weight": "up",
}
MAX_LISTED_KEYS = 12


def lora_spec(name: str, strength: float) -> LoraSpec:
    """Resolve ``name`` in models/loras (listed names only) and describe it for a stack."""
    path = get_locator().resolve("loras", name)
    return LoraSpec(name=name, fingerprint=content_fingerprint(path), strength=float(strength))


def add_lora(handle: LoadedPipeline, name: str, strength: float, fuse: bool | None = None) -> LoadedPipeline:
    """``handle`` with one more LoRA on its stack (the same file twice adds the strengths)."""
    spec = lora_spec(name, strength)
    stack = list(handle.loras)
    for i, existing in enumerate(stack):
        if existing.fingerprint == spec.fingerprint:
            stack[i] = existing._replace(strength=existing.strength + spec.strength)
            break
    else:
        stack.append(spec)
    return handle.with_loras(tuple(stack), handle.fuse_loras if fuse is None else fuse)


@contextmanager
def activated(handle: LoadedPipeline) -> Iterator[Any]:
    """Configure the shared base pipeline for ``handle``'s LoRA stack and hold it for one run."""
    with handle.state.lock:
        _apply_stack(handle)
        yield handle.pipe


def _apply_stack(handle: LoadedPipeline) -> None:
    pipe, state, wanted = handle.pipe, handle.state, handle.loras
    if state.fused and (state.fused != wanted or not handle.fuse_loras):
        pipe.unfuse_lora()
        state.fused = ()
    for spec in wanted:
        if spec.fingerprint not in state.adapters:
            state.adapters[spec.fingerprint] = _load_adapter(pipe, spec, len(state.adapters))
    if not wanted:
        if state.adapters:
            pipe.disable_lora()
        return
    names = [state.adapters[s.fingerprint] for s in wanted]
    pipe.enable_lora()
    pipe.set_adapters(names, adapter_weights=[s.strength for s in wanted])
    if handle.fuse_loras and not state.fused:
        pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
        state.fused = wanted


def _load_adapter(pipe: Any, spec: LoraSpec, index: int) -> str:
    path = get_locator().resolve("loras", spec.name)
    if path.suffix.lower() != ".safetensors":
        raise InvalidInputError(f"LoRA {spec.name}: only .safetensors LoRAs are loaded")
    state = load_state_dict(path)
    check_lora_fits(pipe, state, spec.name)
    adapter = f"lora{index}_{re.sub(r'[^A-Za-z0-9]', '_', path.stem)[:40]}"
    try:
        pipe.load_lora_weights(state, adapter_name=adapter)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise InvalidModelError(f"LoRA {spec.name} could not be applied: {exc}") from exc
    return adapter


def check_lora_fits(pipe: Any, state: dict, name: str) -> None:
    """Raise ``InvalidModelError`` listing every LoRA key that has no matching layer or shape."""
    flux = hasattr(pipe, "transformer")
    try:
        if flux:
            converted = pipe.lora_state_dict(dict(state))
        else:
            converted, _ = pipe.lora_state_dict(dict(state), unet_config=pipe.unet.config)
    except (ValueError, KeyError, IndexError, AssertionError, NotImplementedError) as exc:
        raise InvalidModelError(f"{name} is not a LoRA diffusers can read for this base model: {exc}") from exc
    denoiser = ("transformer", pipe.transformer) if flux else ("unet", pipe.unet)
    components = {denoiser[0]: denoiser[1], "text_encoder": getattr(pipe, "text_encoder", None),
                  "text_encoder_2": getattr(pipe, "text_encoder_2", None)}
    problems, checked = [], 0
    for key, tensor in converted.items():
        role, module_path = _role(key)
        if role is None:
            continue
        checked += 1
        component, _, inner = module_path.partition(".")
        problem = _mismatch(components.get(component), inner, role, tensor)
        if problem and flux and inner == "x_embedder" and role == "down" and problem.startswith("input size"):
            got, size = (int(n) for n in re.findall(r"\d+", problem)[:2])
            problem = None if got < size else problem  # diffusers zero-pads a [dev] LoRA to Fill's input
        if problem:
            problems.append(f"{key}: {problem}")
    if not checked:
        raise InvalidModelError(f"{name} holds no LoRA weights (no lora_A/lora_B or lora_down/lora_up keys)")
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems[:MAX_LISTED_KEYS])
        more = f"\n  ... and {len(problems) - MAX_LISTED_KEYS} more" if len(problems) > MAX_LISTED_KEYS else ""
        raise InvalidModelError(
            f"LoRA {name} does not fit this base model: {len(problems)} of {checked} weights do not match "
            f"(it was probably trained for another base model):\n{listed}{more}")


def _role(key: str) -> tuple[str | None, str]:
    for suffix, role in _ROLE_SUFFIXES.items():
        if key.endswith(suffix):
            return role, key[: -len(suffix)]
    return None, key


def _mismatch(model: Any, path: str, role: str, tensor) -> str | None:
    if model is None:
        return "this pipeline has no such component"
    module = None
    for candidate in (path, path.removeprefix("text_model."), f"text_model.{path}"):
        try:
            module = model.get_submodule(candidate)
            break
        except AttributeError:
            continue
    if module is None:
        return "no such layer in the base model"
    weight = getattr(module, "base_layer", module).weight
    size = int(weight.shape[1] if role == "down" else weight.shape[0])
    got = int(tensor.shape[1] if role == "down" else tensor.shape[0])
    if size != got:
        side = "input" if role == "down" else "output"
        return f"{side} size {got}, the layer has {size}"
    return None
