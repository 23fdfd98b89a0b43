"""A serialized TensorRT engine (``.engine`` / ``.plan``) run on torch's current CUDA stream.

``tensorrt`` is imported only when an engine is opened, so everything else works without it. The
profile is read from the engine itself (its first optimization profile), so checks and batch splitting
always match what was built, whatever a manifest says.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError, InvalidModelError
from .base import ProfiledBackend
from .profile import ShapeProfile
from .spec import CONTEXT, OUTPUT, SAMPLE, UNetSpec

if TYPE_CHECKING:
    import torch


def import_tensorrt() -> Any:
    """``tensorrt``, or an error saying how to get it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise InvalidInputError("TensorRT engines need the `tensorrt` package and an NVIDIA GPU "
                                "(`pip install tensorrt`, or the gpu extra of this pack)") from exc
    return trt


def trt_logger(trt: Any) -> Any:
    return trt.Logger(trt.Logger.WARNING)


def torch_dtype_of(trt: Any, dtype: Any) -> torch.dtype:
    import torch

    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
             trt.DataType.BF16: torch.bfloat16, trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64}
    if dtype not in table:
        raise InvalidModelError(f"the engine uses tensor type {dtype}, which this runtime does not feed")
    return table[dtype]


def profile_from_engine(engine: Any, index: int = 0, vae_scale: int = 8) -> ShapeProfile:
    """The ``ShapeProfile`` of an engine's optimization profile ``index``."""
    lo, opt, hi = (tuple(d) for d in engine.get_tensor_profile_shape(SAMPLE, index))
    t_lo, t_opt, t_hi = (tuple(d) for d in engine.get_tensor_profile_shape(CONTEXT, index))
    return ShapeProfile(batch=(lo[0], opt[0], hi[0]), height=(lo[2], opt[2], hi[2]), width=(lo[3], opt[3], hi[3]),
                        tokens=(t_lo[1], t_opt[1], t_hi[1]), vae_scale=vae_scale)


class TensorRTUNetBackend(ProfiledBackend):
    """Deserializes an engine and runs it with torch CUDA tensors bound in place."""

    name = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike, spec: UNetSpec, device: Any = "cuda") -> None:
        import torch

        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise InvalidInputError("a TensorRT engine needs a CUDA GPU, and torch sees none")
        self.engine_path = Path(engine_path)
        self.device = torch.device(device)
        self._trt = trt
        self.runtime = trt.Runtime(trt_logger(trt))
        with torch.cuda.device(self.device):
            self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise InvalidModelError(
                f"{self.engine_path.name} could not be deserialized: it was built by another TensorRT version "
                f"or for another GPU (this is TensorRT {trt.__version__}); rebuild it with BackdropExportEngine")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in self.inputs]
        missing = set(spec.input_names) - set(self.inputs)
        if missing or not outputs:
            raise InvalidModelError(f"{self.engine_path.name} is not a UNet engine for a {spec.describe()}: "
                                    f"it has inputs {self.inputs} and outputs {outputs}")
        self.output = OUTPUT if OUTPUT in outputs else outputs[0]
        self.dtypes = {n: torch_dtype_of(trt, self.engine.get_tensor_dtype(n)) for n in names}
        super().__init__(spec, profile_from_engine(self.engine))
        with torch.cuda.device(self.device):
            self.context = self.engine.create_execution_context()

    def _run_chunk(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        import torch

        sample = feeds[SAMPLE]
        bound = {}
        for name in self.spec.input_names:
            tensor = feeds[name].to(device=self.device, dtype=self.dtypes[name]).contiguous()
            bound[name] = tensor
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise InvalidInputError(f"{name} of shape {tuple(tensor.shape)} does not fit the engine's profile: "
                                        f"{self.profile.describe() if self.profile else 'unknown'}")
            self.context.set_tensor_address(name, tensor.data_ptr())
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=self.dtypes[self.output],
                          device=self.device)
        self.context.set_tensor_address(self.output, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to run {self.engine_path.name}")
        del bound  # the caching allocator reuses these only after the stream's queued work
        return out.to(device=sample.device, dtype=sample.dtype)
