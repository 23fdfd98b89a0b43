"""Build TensorRT engines from an exported UNet, and refit them with new (LoRA) weights.

Follows the TensorRT 10 Python API as NVIDIA's diffusion demo uses it: ONNX parser with native
InstanceNormalization (GroupNorm stays accurate in fp16), one optimization profile whose min/opt/max
come from the resolutions and batch sizes the user chose, fp16 or bf16 builder flags, a builder
optimization level, and a timing cache per GPU model / compute capability / TensorRT version, so a
second build on the same GPU reuses the kernel timings. ``refittable=True`` sets the REFIT flag:
the engine's weights keep their ONNX initializer names, and ``refit_engine`` swaps a new LoRA in by
those names (via the export's refit map) without rebuilding. ``tensorrt`` is imported lazily.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runtime.engines.profile import ShapeProfile
from ..runtime.engines.spec import UNetSpec
from ..runtime.engines.tensorrt_backend import import_tensorrt, trt_logger
from ..runtime.errors import InvalidInputError, InvalidModelError
from ..runtime.files import replace_bytes_atomic, write_bytes_exclusive

if TYPE_CHECKING:
    import numpy as np

TRT_PRECISIONS = ("fp16", "bf16", "fp32")
OPTIMIZATION_LEVELS = range(0, 6)
MAX_LISTED_ERRORS = 8


@dataclass(frozen=True)
class BuildSettings:
    """How to build: precision, builder optimization level (0-5, default 3), refit, workspace, timing cache."""

    precision: str = "fp16"
    optimization_level: int = 3
    refittable: bool = False
    workspace_gib: float | None = None  # None: TensorRT's default (the GPU's memory)
    timing_cache_dir: Path | None = None

    def validate(self) -> None:
        if self.precision not in TRT_PRECISIONS:
            raise InvalidInputError(f"unknown TensorRT precision {self.precision!r}; choose {TRT_PRECISIONS}")
        if self.optimization_level not in OPTIMIZATION_LEVELS:
            raise InvalidInputError(f"builder optimization level must be 0..5, got {self.optimization_level}")


def gpu_identity(device: Any = None) -> tuple[str, str]:
    """(compute capability "9.0", device name) of the CUDA device."""
    import torch

    if not torch.cuda.is_available():
        raise InvalidInputError("building a TensorRT engine needs a CUDA GPU, and torch sees none")
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}.{minor}", torch.cuda.get_device_name(device)


def timing_cache_path(folder: Path, trt_version: str, compute_capability: str, device_name: str) -> Path:
    """One timing cache per GPU model, compute capability and TensorRT version."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name).strip("-").lower() or "gpu"
    return folder / f"timing_sm{compute_capability.replace('.', '')}_{slug}_trt{trt_version}.cache"


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, spec: UNetSpec,
                 profile: ShapeProfile, settings: BuildSettings) -> Path:
    """Build and write a serialized engine; returns the path written (``-N`` added if taken)."""
    settings.validate()
    trt = import_tensorrt()
    compute_capability, device_name = gpu_identity()
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    parser.set_flag(trt.OnnxParserFlag.NATIVE_INSTANCENORM)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(min(parser.num_errors, MAX_LISTED_ERRORS))]
        raise InvalidModelError(f"TensorRT could not parse {Path(onnx_path).name}:\n  " + "\n  ".join(errors))
    config = builder.create_builder_config()
    config.builder_optimization_level = settings.optimization_level
    if settings.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif settings.precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    if settings.refittable:
        config.set_flag(trt.BuilderFlag.REFIT)
    if settings.workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.workspace_gib * (1 << 30)))
    optimization_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.input_shapes(spec).items():
        optimization_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(optimization_profile)
    cache_file = None
    if settings.timing_cache_dir is not None:
        cache_file = timing_cache_path(Path(settings.timing_cache_dir), trt.__version__, compute_capability,
                                       device_name)
        previous = cache_file.read_bytes() if cache_file.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(previous), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise InvalidModelError(f"TensorRT failed to build an engine from {Path(onnx_path).name} for "
                                f"{profile.describe()} (see the TensorRT log above)")
    if cache_file is not None:
        _save_timing_cache(cache_file, bytes(config.get_timing_cache().serialize()))
    return write_bytes_exclusive(engine_path, bytes(serialized))


def _save_timing_cache(path: Path, payload: bytes) -> None:
    """Replace the timing cache atomically: it only ever grows (old entries are loaded into the build)."""
    replace_bytes_atomic(path, payload)


def refit_engine(engine: Any, weights: dict[str, np.ndarray]) -> int:
    """Swap ``weights`` (ONNX initializer name -> array) into a refittable engine; returns how many.

    The engine must have been built with ``refittable=True`` from the export whose refit map produced
    the names. Weights TensorRT folded away cannot be refit; they are listed in the error.
    """
    import numpy as np
    import torch

    trt = import_tensorrt()
    if not engine.refittable:
        raise InvalidModelError("this engine was built without refit support; rebuild it with refittable on, "
                                "or export one with the LoRA fused")
    refitter = trt.Refitter(engine, trt_logger(trt))
    refittable = set(refitter.get_all_weights())
    unknown = sorted(set(weights) - refittable)
    if unknown:
        raise InvalidModelError(f"{len(unknown)} weights are not refittable in this engine (TensorRT folded them): "
                                f"{', '.join(unknown[:MAX_LISTED_ERRORS])}")
    keep = []
    torch_types = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                   trt.DataType.BF16: torch.bfloat16}
    for name, array in weights.items():
        prototype = refitter.get_weights_prototype(name)
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(torch_types[prototype.dtype]).contiguous()
        if tensor.numel() != prototype.size:
            raise InvalidModelError(f"weight {name} has {tensor.numel()} values; the engine expects {prototype.size}")
        keep.append(tensor)
        refitter.set_named_weights(name, trt.Weights(prototype.dtype, tensor.data_ptr(), tensor.numel()))
    missing = list(refitter.get_missing_weights())
    if missing:
        raise InvalidModelError(f"the refit also needs {', '.join(missing[:MAX_LISTED_ERRORS])}; "
                                "pass the full weight set for those layers")
    if not refitter.refit_cuda_engine():
        raise InvalidModelError("TensorRT rejected the refit (see the TensorRT log)")
    del keep
    return len(weights)
