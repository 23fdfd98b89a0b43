"""Export a pipeline's UNet to an engine file with a manifest, reusing a cached engine when one matches.

One call covers the four products: a portable ONNX (``optimize_for=""``; refittable by initializer
name, the input for TensorRT), an onnxruntime-optimised ONNX (``"cpu"`` or ``"cuda"``), a TensorRT
engine, and an OpenVINO IR for the CPU (fp32, bf16, fp16, int8-compressed weights, or w8a8: static int8
weights and activations calibrated on captured pipeline inputs, export/calibration.py; see
export/openvino_export.py). The active LoRA stack is fused in; the key (export/cache.py) names base weights, LoRA stack,
profile, precision and, for TensorRT, version and GPU, so changing any of them builds a new engine and
repeating a request finds the one already built.

A FLUX transformer (FLUX.1 Fill, Kontext) takes the same path with its own contract (``FluxSpec``,
export/flux_export.py): a portable, refittable ONNX or an OpenVINO IR (fp32, bf16/fp16 where the CPU has
the unit, int8 weights), component ``transformer``, no shape profile (batch and sequence lengths are
dynamic). The onnxruntime-optimised graphs and TensorRT are UNet-only and refused for it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runtime.engines.denoiser import denoiser_spec
from ..runtime.engines.flux_spec import FluxSpec
from ..runtime.engines.manifest import EngineManifest, write_manifest
from ..runtime.engines.profile import ShapeProfile
from ..runtime.engines.spec import UNetSpec
from ..runtime.errors import InvalidInputError
from ..runtime.progress import ProgressFn, report, within
from .cache import EngineCache, EngineKey, component_key, engine_file_name
from .calibration import RANDOM_LABEL, Calibration, CapturePlan, capture_unet_inputs, random_unet_inputs
from .graph_rewrites import rewrites_for
from .memory_need import check_export_fits, fp32_copy_bytes, fp32_weight_bytes, memory_backend
from .onnx_export import EXPORTER, OPSET, export_unet_onnx
from .onnx_files import staging_dir
from .refit import effective_lora_weights, refit_map_to_dict

FORMATS = ("onnx", "tensorrt", "openvino")
ONNX_TARGETS = ("", "cpu", "cuda")
FORMAT_PRECISIONS = {"onnx": ("fp32", "fp16"), "tensorrt": ("fp16", "bf16", "fp32"),
                     "openvino": ("fp32", "bf16", "fp16", "int8", "w8a8")}
FOLDER_KINDS = {"onnx": "onnx", "tensorrt": "tensorrt", "openvino": "openvino"}
SUFFIXES = {"onnx": ".onnx", "tensorrt": ".engine", "openvino": ".xml"}


@dataclass(frozen=True)
class EngineRequest:
    """What to build."""

    format: str = "onnx"  # "onnx" | "tensorrt" | "openvino"
    precision: str = "fp32"  # onnx: fp32 | fp16; tensorrt: fp16 | bf16 | fp32; openvino: + int8 | w8a8
    profile: ShapeProfile | None = None  # required for TensorRT; recorded for ONNX
    optimize_for: str = ""  # onnx only: "" portable, "cpu", "cuda"
    refittable: bool = False  # tensorrt only
    optimization_level: int = 3  # tensorrt only

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise InvalidInputError(f"unknown engine format {self.format!r}; choose one of {', '.join(FORMATS)}")
        if self.format == "tensorrt" and self.profile is None:
            raise InvalidInputError("a TensorRT engine needs a shape profile (resolutions and batch sizes)")
        if self.format == "onnx" and self.optimize_for not in ONNX_TARGETS:
            raise InvalidInputError(f"optimize_for must be '', 'cpu' or 'cuda', got {self.optimize_for!r}")
        if self.precision not in FORMAT_PRECISIONS[self.format]:
            raise InvalidInputError(f"a {self.format} engine is built in {', '.join(FORMAT_PRECISIONS[self.format])}, "
                                    f"not {self.precision!r}")
        if self.format == "openvino":
            from ..runtime.engines.openvino_backend import check_native

            check_native(self.precision)  # bf16/fp16 only where this CPU computes them


@dataclass(frozen=True)
class BaseIdentity:
    """The weights an engine is built from: base model and LoRA stack."""

    name: str
    fingerprint: str
    loras: tuple[tuple[str, str, float], ...] = field(default=())


@dataclass
class EngineResult:
    path: Path
    manifest: EngineManifest
    cached: bool


def engine_key(spec: UNetSpec | FluxSpec, base: BaseIdentity, request: EngineRequest, trt_version: str = "",
               compute_capability: str = "", calibration: str = "") -> EngineKey:
    """The cache key; ``calibration`` names where a ``w8a8`` engine's scales came from (part of the key)."""
    builder: tuple[tuple[str, Any], ...] = ()
    if request.format == "tensorrt":
        builder = (("optimization_level", request.optimization_level), ("refittable", request.refittable))
    elif request.format == "openvino" and not isinstance(spec, FluxSpec):
        # engines from before these changes are not reused: fp32 time embeddings, then export_rewrites
        builder = (("time_embedding", "fp32 inputs"), ("rewrites", rewrites_for(request.precision)))
        if request.precision == "w8a8":
            from .openvino_export import W8A8_RECIPE

            builder += (("calibration", calibration), ("recipe", W8A8_RECIPE))
    return EngineKey(base_fingerprint=base.fingerprint, loras=tuple(base.loras), spec=spec, profile=request.profile,
                     precision=request.precision, format=request.format,
                     optimized_for=request.optimize_for if request.format == "onnx" else "",
                     tensorrt_version=trt_version, compute_capability=compute_capability, builder=builder,
                     component=denoiser_component(spec))


def denoiser_component(spec: UNetSpec | FluxSpec) -> str:
    """The manifest component of a denoiser engine: ``transformer`` for FLUX, ``unet`` otherwise."""
    return "transformer" if isinstance(spec, FluxSpec) else "unet"


def check_flux_request(request: EngineRequest) -> EngineRequest:
    """The request as a FLUX transformer engine takes it (no shape profile), or an error saying what fits."""
    if request.format not in ("onnx", "openvino"):
        raise InvalidInputError(f"FLUX transformer engines are exported as onnx or openvino, not {request.format} "
                                "(TensorRT is checked for SD UNets only)")
    if request.precision == "w8a8":
        raise InvalidInputError("w8a8 (static int8) engines are calibrated for SD1.5/SDXL UNets; export a FLUX "
                                "transformer as OpenVINO int8 (int8 weights) or bf16")
    if request.format == "onnx" and (request.optimize_for or request.precision != "fp32"):
        raise InvalidInputError("a FLUX transformer ONNX export is the portable fp32 graph (onnxruntime's UNet "
                                "fusions and fp16 conversion are for SD UNets); use optimize_for '' and precision "
                                "fp32, or an OpenVINO engine for int8/bf16")
    return dataclasses.replace(request, profile=None)


def default_precision(format: str) -> str:
    """fp16 for TensorRT, fp32 for ONNX; for OpenVINO bf16 where this CPU has a bf16 unit, else fp32."""
    if format == "tensorrt":
        return "fp16"
    if format == "openvino":
        from ..runtime.engines.precision import native_support

        return "bf16" if native_support("bf16")[0] else "fp32"
    return "fp32"


def export_engine(unet: Any, base: BaseIdentity, request: EngineRequest, folder: str | os.PathLike,
                  search: Sequence[str | os.PathLike] = (), timing_cache_dir: str | os.PathLike | None = None,
                  calibration: Calibration | None = None, memory_limit: float | None = None) -> EngineResult:
    """Build (or find) the engine for ``unet`` as its LoRA stack is active now; write it into ``folder``.

    A ``w8a8`` engine is calibrated on ``calibration``: (label, input sets or a callable that captures them,
    called only when the engine is not cached); without one, on ``random_unet_inputs`` (labelled so).
    Before building, the export's memory need is checked against ``memory_limit`` bytes (None: what the machine
    has available; ``math.inf``: not checked): ``InsufficientMemoryError`` says what it needs (memory_need.py)."""
    request.validate()
    folder = Path(folder)
    spec = denoiser_spec(unet)
    if isinstance(spec, FluxSpec):
        request = check_flux_request(request)
    if request.precision == "w8a8" and calibration is None:
        calibration = Calibration(RANDOM_LABEL, lambda: random_unet_inputs(spec))
    trt_version = compute_capability = ""
    if request.format == "tensorrt":
        from ..runtime.engines.tensorrt_backend import import_tensorrt
        from .tensorrt_build import gpu_identity

        trt_version = import_tensorrt().__version__
        compute_capability, _ = gpu_identity()
    key = engine_key(spec, base, request, trt_version, compute_capability,
                     calibration.label if calibration else "").digest()
    hit = EngineCache([folder, *search]).find(key)
    if hit is not None:
        return EngineResult(path=hit[0], manifest=hit[1], cached=True)
    component = denoiser_component(spec)
    if request.format == "openvino":  # a missing package is said before the memory it would need
        from .openvino_export import import_nncf, import_openvino

        import_openvino()
        if request.precision in ("int8", "w8a8"):
            import_nncf(request.precision)
    check_export_fits(f"the {component}", memory_backend(request.format, request.optimize_for), request.precision,
                      fp32_weight_bytes(unet), memory_limit, FORMAT_PRECISIONS[request.format],
                      fp32_copy_bytes(unet) if request.format == "openvino" else 0)
    target = folder / engine_file_name(spec, request.precision, key, SUFFIXES[request.format], component=component)
    manifest = EngineManifest(format=request.format, file="", spec=spec, precision=request.precision, key=key,
                              profile=request.profile, base_model=base.name, base_fingerprint=base.fingerprint,
                              loras=tuple(base.loras), optimized_for=request.optimize_for,
                              exporter={"exporter": EXPORTER, "opset": OPSET, "torch": _torch_version()},
                              component=component)
    if component == "transformer":
        path, manifest = _export_flux(unet, target, request, manifest)
    elif request.format == "onnx":
        path, manifest = _export_onnx(unet, target, request, manifest)
    elif request.format == "openvino":
        path, manifest = _export_openvino(unet, target, request, manifest, calibration)
    else:
        path, manifest = _export_tensorrt(unet, target, request, manifest, timing_cache_dir,
                                          trt_version, compute_capability)
    if base.loras:  # which layers the baked stack changed, so a refit to another stack can restore them
        manifest = manifest.replace(extra={**manifest.extra, "lora_layers": sorted(effective_lora_weights(unet))})
    write_manifest(manifest, path)
    return EngineResult(path=path, manifest=manifest, cached=False)


def _export_onnx(unet: Any, target: Path, request: EngineRequest, manifest: EngineManifest
                 ) -> tuple[Path, EngineManifest]:
    precision = "fp16" if request.precision == "fp16" else "fp32"
    if not request.optimize_for:
        exported = export_unet_onnx(unet, target, precision=precision)
        return exported.path, manifest.replace(file=exported.path.name, precision=exported.precision,
                                               refit_map=refit_map_to_dict(exported.refit_map),
                                               extra={"external_data": exported.external_data})
    from .optimize import optimize_unet_onnx

    latent = (request.profile.height[1], request.profile.width[1]) if request.profile else (64, 64)
    with staging_dir(target.parent) as stage:
        exported = export_unet_onnx(unet, stage / "portable.onnx", precision="fp32")
        optimized = optimize_unet_onnx(exported.path, target, target=request.optimize_for, fp16=precision == "fp16",
                                       latent_size=latent)
    return optimized.path, manifest.replace(file=optimized.path.name, precision=optimized.precision,
                                            extra={"fused_ops": optimized.fused_ops})


def _export_flux(transformer: Any, target: Path, request: EngineRequest, manifest: EngineManifest
                 ) -> tuple[Path, EngineManifest]:
    from .flux_export import export_flux_onnx, export_flux_openvino

    if request.format == "onnx":
        exported = export_flux_onnx(transformer, target)
        return exported.path, manifest.replace(file=exported.path.name, precision=exported.precision,
                                               refit_map=refit_map_to_dict(exported.refit_map),
                                               extra={"external_data": exported.external_data})
    from .openvino_export import CONVERTER, openvino_exporter

    exported = export_flux_openvino(transformer, target, precision=request.precision)
    return exported.path, manifest.replace(file=exported.path.name, exporter=openvino_exporter(CONVERTER),
                                           extra={"weight_compression": exported.weight_compression})


def _export_openvino(unet: Any, target: Path, request: EngineRequest, manifest: EngineManifest,
                     calibration: Calibration | None = None) -> tuple[Path, EngineManifest]:
    from .openvino_export import CONVERTER, export_unet_openvino, openvino_exporter

    shallow_key = component_key(manifest, "unet_shallow")
    shallow_target = target.with_name(engine_file_name(manifest.spec, request.precision, shallow_key, ".xml",
                                                       component="unet_shallow"))
    sets = calibration.input_sets() if calibration else None
    exported = export_unet_openvino(unet, target, precision=request.precision, shallow_path=shallow_target,
                                    calibration=sets)
    shallow = exported.shallow
    calibrated = {"calibration": calibration.label, "calibration_inputs": len(sets or ())} if calibration else {}
    write_manifest(manifest.replace(file=shallow.path.name, key=shallow_key, component="unet_shallow", profile=None,
                                    exporter=openvino_exporter(CONVERTER),
                                    extra={"weight_compression": shallow.weight_compression,
                                           "feature_cache_of": exported.path.name,
                                           "rewrites": exported.rewrites, **calibrated}), shallow.path)
    return exported.path, manifest.replace(file=exported.path.name, exporter=openvino_exporter(CONVERTER),
                                           extra={"weight_compression": exported.weight_compression,
                                                  "shallow": shallow.path.name, "rewrites": exported.rewrites,
                                                  **calibrated})


def _export_tensorrt(unet: Any, target: Path, request: EngineRequest, manifest: EngineManifest,
                     timing_cache_dir: str | os.PathLike | None, trt_version: str, compute_capability: str
                     ) -> tuple[Path, EngineManifest]:
    from .tensorrt_build import BuildSettings, build_engine

    settings = BuildSettings(precision=request.precision, optimization_level=request.optimization_level,
                             refittable=request.refittable,
                             timing_cache_dir=Path(timing_cache_dir) if timing_cache_dir else target.parent)
    settings.validate()
    with staging_dir(target.parent) as stage:
        exported = export_unet_onnx(unet, stage / "unet.onnx", precision="fp32")
        path = build_engine(exported.path, target, exported.spec, request.profile, settings)
    refit = refit_map_to_dict(exported.refit_map) if request.refittable else {}
    return path, manifest.replace(file=path.name, refit_map=refit,
                                  tensorrt={"version": trt_version, "compute_capability": compute_capability,
                                            "refittable": request.refittable,
                                            "optimization_level": request.optimization_level})


def _torch_version() -> str:
    import torch

    return torch.__version__


def export_pipeline_engine(handle: Any, request: EngineRequest, locator: Any = None,
                           components: bool = False, progress: ProgressFn | None = None,
                           memory_limit: float | None = None, plan: CapturePlan | None = None) -> EngineResult:
    """``export_engine`` for a ``LoadedPipeline``: its LoRA stack is applied (and fused into the export),
    and the engine goes to the first models/onnx, models/tensorrt or models/openvino folder. ``components``
    (OpenVINO only) also exports the text encoder(s) and VAE beside it (export/pipeline_export.py). For a
    FLUX pipeline the engine is its transformer's (no components). A ``w8a8`` engine is calibrated on short runs
    of ``handle`` (export/calibration.py; ``plan``: how many, ``CapturePlan()`` by default). ``progress(done,
    total)`` counts the calibration's steps (when it runs) and each part exported or found (its callback may raise
    to stop between parts; what was written stays, whole, in the cache). ``memory_limit``: as for
    ``export_engine``, for each part."""
    from ..runtime.inpainting.loras import activated
    from ..runtime.models import get_locator

    locator = locator or get_locator()
    request.validate()
    kind = FOLDER_KINDS[request.format]
    folders = locator.folders(kind)
    if not folders:
        raise InvalidInputError(f"no models/{kind} folder is configured")
    base = BaseIdentity(name=handle.name, fingerprint=handle.fingerprint,
                        loras=tuple((s.name, s.fingerprint, float(s.strength)) for s in handle.loras))
    if components and request.format != "openvino":
        raise InvalidInputError("whole-pipeline engines (text encoders, VAE) are exported for format openvino only")
    if components and handle.is_flux:
        raise InvalidInputError("whole-pipeline engines (text encoders, VAE) are exported for SD1.5/SDXL pipelines; "
                                "for FLUX only the transformer runs on an engine")
    from .pipeline_export import component_modules, export_components

    calibration, steps = None, 0
    parts = 1 + (len(component_modules(handle.pipe)) if components else 0)
    if request.precision == "w8a8" and not handle.is_transformer:
        plan = plan or CapturePlan()
        steps = plan.styles * plan.steps
        capture_progress = within(progress, 0, steps + parts)
        calibration = Calibration(plan.label, lambda: capture_unet_inputs(handle, plan, capture_progress))
    with activated(handle) as pipe:
        result = export_engine(handle.denoiser, base, request, folders[0], search=folders[1:],
                               timing_cache_dir=folders[0] if kind == "tensorrt" else None, calibration=calibration,
                               memory_limit=memory_limit)
        report(progress, steps + 1, steps + parts)
        if components:
            export_components(pipe, result.manifest.spec, result.manifest, folders[0], search=folders[1:],
                              memory_limit=memory_limit, progress=within(progress, steps + 1, steps + parts))
    return result
