"""Put an engine into a loaded pipeline: the pipeline then samples with it instead of its torch UNet.

The engine must fit the pipeline (family, UNet channels, conditioning sizes). If the pipeline's LoRA
stack differs from the one baked into the engine, a refittable engine takes the new stack's weights
by name (TensorRT's Refitter, or onnxruntime initializer overrides for a portable ONNX export);
otherwise the error says which engine to export.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from ..runtime.engines.adapter import BackendUNet
from ..runtime.engines.load import open_backend
from ..runtime.engines.manifest import EngineManifest, read_manifest
from ..runtime.engines.spec import UNetSpec
from ..runtime.errors import InvalidInputError
from .refit import base_parameters, effective_lora_weights, refit_map_from_dict, refit_weights


def check_fits(manifest: EngineManifest, spec: UNetSpec, engine_name: str) -> None:
    """Raise unless the engine's UNet interface is the pipeline UNet's."""
    engine = manifest.spec
    fields = ("family", "in_channels", "out_channels", "context_dim", "text_embeds_dim", "time_ids_dim")
    wrong = [f"{f}: engine {getattr(engine, f)}, pipeline {getattr(spec, f)}" for f in fields
             if getattr(engine, f) != getattr(spec, f)]
    if wrong:
        raise InvalidInputError(f"{engine_name} was exported from a {engine.describe()} and does not fit this "
                                f"pipeline's {spec.describe()} ({'; '.join(wrong)})")


def lora_stack(handle: Any) -> tuple[tuple[str, str, float], ...]:
    return tuple((s.name, s.fingerprint, float(s.strength)) for s in handle.loras)


def attach_engine(handle: Any, engine_path: str | os.PathLike, provider: str = "auto",
                  threads: int | None = None) -> Any:
    """A ``LoadedPipeline`` like ``handle`` whose UNet is the engine at ``engine_path``."""
    from ..runtime.inpainting.loras import activated

    engine_path = Path(engine_path)
    manifest = read_manifest(engine_path)
    spec = UNetSpec.from_unet(handle.pipe.unet)
    check_fits(manifest, spec, engine_path.name)
    if manifest.base_fingerprint and manifest.base_fingerprint != handle.fingerprint:
        raise InvalidInputError(f"{engine_path.name} was exported from {manifest.base_model or 'another model'}, "
                                f"not from {handle.name}; export an engine from this pipeline")
    device = str(handle.device)
    overrides = None
    needs_refit = lora_stack(handle) != manifest.loras
    if needs_refit:
        if not manifest.refit_map:
            raise InvalidInputError(
                f"{engine_path.name} has the LoRA stack {_describe(manifest.loras)} baked in, but the pipeline "
                f"uses {_describe(lora_stack(handle))}. Export an engine for this stack, or a refittable one "
                "(a portable ONNX export, or TensorRT with refittable on).")
        with activated(handle) as pipe:
            weights = refit_weights(refit_map_from_dict(manifest.refit_map), *_refit_set(pipe.unet, manifest))
        if manifest.format == "onnx":
            overrides = weights
    backend = open_backend(engine_path, device=device, provider=provider, threads=threads,
                           initializer_overrides=overrides, manifest=manifest)
    if needs_refit and manifest.format == "tensorrt":
        from .tensorrt_build import refit_engine

        refit_engine(backend.engine, weights)
    unet = BackendUNet(backend, dtype=handle.dtype, device=handle.device)
    return dataclasses.replace(handle.with_unet(unet), loras=())


def _refit_set(unet: Any, manifest: EngineManifest) -> tuple[dict[str, Any], set[str]]:
    """The weights to send: the pipeline's LoRA layers, plus the layers the engine's baked LoRAs changed
    (back to their base values). Returns them and the names that may be skipped when not refittable."""
    lora = effective_lora_weights(unet)
    if not manifest.loras:
        return lora, set()
    base = base_parameters(unet)
    baked = manifest.extra.get("lora_layers")
    restore = set(base) if baked is None else set(baked)  # older manifests do not list them: send everything
    current = {**{name: base[name] for name in restore if name in base}, **lora}
    return current, set(current) - set(lora)


def _describe(loras: tuple[tuple[str, str, float], ...]) -> str:
    return "[" + ", ".join(f"{name}@{strength:g}" for name, _, strength in loras) + "]" if loras else "(none)"
