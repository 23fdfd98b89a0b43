"""Put an engine into a loaded pipeline: the pipeline then samples with it instead of its torch UNet.

The engine must fit the pipeline (family, UNet channels, conditioning sizes). If the pipeline's LoRA
stack differs from the one baked into the engine, a refittable engine takes the new stack's weights
by name (TensorRT's Refitter, or onnxruntime initializer overrides for a portable ONNX export);
otherwise the error says which engine to export.

With ``components=True`` (OpenVINO engines) the text encoder(s) and the VAE run on their engines too.
They are found from the UNet engine's manifest (export/engine_export.py ``component_key``), so a
pipeline runs entirely on engines; the product-exact paste-back after decoding is unchanged.

A FLUX pipeline (Fill, Kontext) takes a FLUX transformer engine (ONNX or OpenVINO) the same way: the
pipeline's ``transformer`` becomes a ``BackendFluxTransformer``; a portable ONNX export is refit to
another LoRA stack by initializer name, an OpenVINO one must have the stack baked in.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from ..runtime.engines.adapter import BackendUNet
from ..runtime.engines.denoiser import denoiser_spec
from ..runtime.engines.load import open_backend
from ..runtime.engines.manifest import EngineManifest, read_manifest
from ..runtime.errors import InvalidInputError
from .memory_need import check_load_fits, fp32_weight_bytes, memory_backend
from .refit import base_parameters, effective_lora_weights, refit_map_from_dict, refit_weights


def check_fits(manifest: EngineManifest, spec: Any, engine_name: str) -> None:
    """Raise unless the engine's UNet (or FLUX transformer) interface is the pipeline's."""
    engine = manifest.spec
    ours, theirs = engine.to_dict(), spec.to_dict()
    fields = [f for f in dict.fromkeys([*ours, *theirs]) if f not in ("config", "latent_multiple")]
    wrong = [f"{f}: engine {ours.get(f)}, pipeline {theirs.get(f)}" for f in fields if ours.get(f) != theirs.get(f)]
    if wrong:
        raise InvalidInputError(f"{engine_name} was exported from a {engine.describe()} and does not fit this "
                                f"pipeline's {spec.describe()} ({'; '.join(wrong)})")


def lora_stack(handle: Any) -> tuple[tuple[str, str, float], ...]:
    return tuple((s.name, s.fingerprint, float(s.strength)) for s in handle.loras)


def attach_engine(handle: Any, engine_path: str | os.PathLike, provider: str = "auto",
                  threads: int | None = None, components: bool = False, locator: Any = None,
                  memory_limit: float | None = None) -> Any:
    """A ``LoadedPipeline`` like ``handle`` whose UNet is the engine at ``engine_path`` (and, with
    ``components``, whose text encoders and VAE are that engine's sibling engines). A CPU engine is opened only
    where its measured need fits in ``memory_limit`` bytes (None: what the machine has available; ``math.inf``:
    not checked), else ``InsufficientMemoryError`` (export/memory_need.py)."""
    from ..runtime.inpainting.loras import activated

    engine_path = Path(engine_path)
    manifest = read_manifest(engine_path)
    spec = denoiser_spec(handle.denoiser)
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
            weights = refit_weights(refit_map_from_dict(manifest.refit_map), *_refit_set(handle.denoiser, manifest))
        if manifest.format == "onnx":
            overrides = weights
    if manifest.format != "tensorrt":  # a TensorRT engine's weights go to the GPU
        check_load_fits(engine_path.name, memory_backend(manifest.format, manifest.optimized_for),
                        manifest.precision, fp32_weight_bytes(handle.denoiser), memory_limit)
    backend = open_backend(engine_path, device=device, provider=provider, threads=threads,
                           initializer_overrides=overrides, manifest=manifest)
    if needs_refit and manifest.format == "tensorrt":
        from .tensorrt_build import refit_engine

        refit_engine(backend.engine, weights)
    if handle.is_flux:
        from ..runtime.engines.flux_adapter import BackendFluxTransformer

        if components:
            raise InvalidInputError("whole-pipeline engines (text encoders, VAE) are for SD1.5/SDXL pipelines; for "
                                    "FLUX only the transformer runs on an engine")
        return _with_transformer(handle, BackendFluxTransformer(backend, dtype=handle.dtype, device=handle.device))
    unet = BackendUNet(backend, dtype=handle.dtype, device=handle.device)
    attached = handle.with_unet(unet)
    if components:
        if needs_refit:
            raise InvalidInputError(f"{engine_path.name}'s text encoder and VAE engines have the LoRA stack "
                                    f"{_describe(manifest.loras)} baked in, but the pipeline uses "
                                    f"{_describe(lora_stack(handle))}; export the whole pipeline for this stack")
        parts = pipeline_parts(handle, manifest, engine_path, threads, locator, memory_limit)
        pipe = type(attached.pipe)(**{**attached.pipe.components, **parts})
        pipe.set_progress_bar_config(disable=True)
        attached = dataclasses.replace(attached, pipe=pipe)
    return dataclasses.replace(attached, loras=())


def attach_frozen_compile(handle: Any) -> Any:
    """A ``LoadedPipeline`` like ``handle`` whose UNet, its LoRA stack applied, runs behind Inductor with frozen
    weights (``TorchUNetBackend(freeze=True)``: compiled on the first step, the weights a snapshot from then on;
    what ``backdrop run --engine auto`` uses when the bench chose the frozen compile)."""
    from ..runtime.engines.torch_backend import TorchUNetBackend
    from ..runtime.inpainting.loras import activated

    with activated(handle) as pipe:
        unet = pipe.unet
    attached = handle.with_unet(BackendUNet(TorchUNetBackend(unet, freeze=True), dtype=handle.dtype,
                                            device=handle.device))
    return dataclasses.replace(attached, loras=())


def _with_transformer(handle: Any, transformer: Any) -> Any:
    """A shallow copy of a FLUX ``handle`` whose pipeline uses ``transformer`` (an engine), LoRAs baked in."""
    from ..runtime.inpainting.loader import BaseState

    pipe = type(handle.pipe)(**{**handle.pipe.components, "transformer": transformer})
    pipe.set_progress_bar_config(disable=True)
    return dataclasses.replace(handle, pipe=pipe, state=BaseState(), loras=())


def pipeline_parts(handle: Any, manifest: EngineManifest, engine_path: Path, threads: int | None = None,
                   locator: Any = None, memory_limit: float | None = None) -> dict[str, Any]:
    """{"text_encoder": ..., "vae": ...}: engine-backed modules for every part exported beside the UNet engine
    (each opened where it fits in ``memory_limit``, as in ``attach_engine``)."""
    from ..runtime.engines.components import EngineTextEncoder, EngineVAE
    from ..runtime.engines.openvino_backend import OpenVinoModel
    from .cache import EngineCache, component_key
    from .pipeline_export import component_modules

    if manifest.format != "openvino":
        raise InvalidInputError(f"{engine_path.name} is a {manifest.format} engine; whole-pipeline engines (text "
                                "encoders, VAE) are OpenVINO engines: export format openvino with components")
    folders = [engine_path.parent]
    if locator is not None:
        folders += [f for f in locator.folders("openvino") if f != engine_path.parent]
    cache = EngineCache(folders)
    wanted = component_modules(handle.pipe)
    engines, missing = {}, []
    for name in wanted:
        hit = cache.find(component_key(manifest, name))
        if hit is None:
            missing.append(name)
        else:
            check_load_fits(hit[0].name, "openvino", hit[1].precision, fp32_weight_bytes(wanted[name]), memory_limit)
            engines[name] = OpenVinoModel(hit[0], hit[1].precision, threads)
    if missing:
        raise InvalidInputError(f"{engine_path.name} has no {', '.join(missing)} engine(s) beside it; export it again "
                                "with components 'whole pipeline' (BackdropExportEngine, or backdrop run --engine "
                                "with --engine-components)")
    parts: dict[str, Any] = {"vae": EngineVAE(engines["vae_encoder"], engines["vae_decoder"], handle.pipe.vae)}
    for name in ("text_encoder", "text_encoder_2"):
        if name in engines:
            parts[name] = EngineTextEncoder(engines[name], wanted[name].config)
    return parts


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
