"""Open an exported engine file as a UNet backend, using the manifest beside it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from .base import UNetBackend
from .manifest import EngineManifest, read_manifest

ONNX_PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")


def default_provider(manifest: EngineManifest, device: str) -> str:
    """CUDA for a GPU-optimised graph or a GPU device, else the CPU."""
    if manifest.optimized_for == "cuda" or device.startswith("cuda"):
        return "cuda"
    return "cpu"


def open_backend(engine_path: str | os.PathLike, device: str = "cpu", provider: str = "auto",
                 threads: int | None = None, initializer_overrides: dict[str, Any] | None = None,
                 manifest: EngineManifest | None = None) -> UNetBackend:
    """A backend for ``engine_path`` (``.onnx`` through onnxruntime, ``.engine``/``.plan`` through TensorRT,
    ``.xml`` through OpenVINO on the CPU); a FLUX transformer engine gives a ``FluxBackend``."""
    engine_path = Path(engine_path)
    manifest = manifest or read_manifest(engine_path)
    if manifest.component == "transformer":
        from .flux_backend import open_flux_backend

        return open_flux_backend(engine_path, manifest.spec, manifest.format, manifest.precision, provider=provider,
                                 device=device, threads=threads, initializer_overrides=initializer_overrides)
    if manifest.component != "unet":
        raise InvalidInputError(f"{engine_path.name} is a {manifest.component} engine, not a UNet; load it with the "
                                "whole-pipeline engines (export.attach.attach_pipeline_engines)")
    if manifest.format == "openvino":
        from .openvino_backend import OpenVinoUNetBackend

        if initializer_overrides:
            raise InvalidInputError(f"{engine_path.name}: OpenVINO engines have their LoRA stack baked in; export "
                                    "one for this stack")
        if device.startswith("cuda") or provider not in ("auto", "cpu"):
            raise InvalidInputError(f"{engine_path.name} is an OpenVINO engine: it runs on the CPU (provider "
                                    f"'auto' or 'cpu'), not on {provider if provider != 'auto' else device}")
        shallow = manifest.extra.get("shallow")
        shallow_path = engine_path.with_name(shallow) if shallow and engine_path.with_name(shallow).is_file() else None
        return OpenVinoUNetBackend(engine_path, manifest.spec, precision=manifest.precision,
                                   profile=manifest.profile, threads=threads, shallow_path=shallow_path)
    if manifest.format == "tensorrt":
        from .tensorrt_backend import TensorRTUNetBackend

        if initializer_overrides:
            raise InvalidInputError("TensorRT engines take new weights through a refit, not overrides")
        return TensorRTUNetBackend(engine_path, manifest.spec, device=device if device.startswith("cuda") else "cuda")
    from .ort_backend import OrtUNetBackend

    if provider not in ONNX_PROVIDERS:
        raise InvalidInputError(f"unknown provider {provider!r}; choose one of {', '.join(ONNX_PROVIDERS)}")
    chosen = default_provider(manifest, device) if provider == "auto" else provider
    if manifest.optimized_for == "cuda" and chosen == "cpu":
        raise InvalidInputError(f"{engine_path.name} was optimised for CUDA (it uses GPU-only fused ops); "
                                "run it with provider cuda, or export one for the CPU")
    return OrtUNetBackend(engine_path, manifest.spec, profile=manifest.profile, provider=chosen, threads=threads,
                          initializer_overrides=initializer_overrides, fp16=manifest.precision == "fp16")
