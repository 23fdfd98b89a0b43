"""An exported ONNX UNet run by onnxruntime on the CPU, CUDA or TensorRT execution provider.

CPU sessions use every core for intra-op work, full graph optimisation and memory-pattern planning.
On CUDA / TensorRT the torch tensors are bound in place (IO binding), so nothing leaves the GPU.
``initializer_overrides`` replaces weights by ONNX initializer name when the session is created:
that is how a LoRA is swapped into a names-preserving export without touching the file on disk.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError, InvalidModelError
from .base import ProfiledBackend
from .profile import ShapeProfile
from .spec import OUTPUT, SAMPLE, UNetSpec

if TYPE_CHECKING:
    import numpy as np
    import torch

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
_PROTOBUF_LIMIT = 2**31
_NUMPY_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}


def physical_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def cpu_session_options(threads: int | None = None, profiling: bool = False) -> Any:
    """Session options tuned for a UNet on the CPU: all cores, all graph optimisations, memory patterns."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_mem_pattern = True
    options.enable_cpu_mem_arena = True
    options.enable_profiling = profiling
    options.log_severity_level = 3
    return options


def provider_list(provider: str, device_id: int = 0, profile: ShapeProfile | None = None,
                  spec: UNetSpec | None = None, fp16: bool = False, cache_dir: str | os.PathLike | None = None
                  ) -> list[Any]:
    """onnxruntime providers for ``cpu`` / ``cuda`` / ``tensorrt`` (with a shape profile and engine cache)."""
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise InvalidInputError(f"unknown onnxruntime provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    available = ort.get_available_providers()
    if PROVIDERS[provider] not in available:
        raise InvalidInputError(
            f"onnxruntime here has no {PROVIDERS[provider]} (it has {', '.join(available)}). "
            "Install the GPU build (`pip install onnxruntime-gpu`, plus `tensorrt` for the TensorRT provider) "
            "or choose provider 'cpu'.")
    cuda = ("CUDAExecutionProvider", {"device_id": str(device_id)})
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    if provider == "cuda":
        return [cuda, "CPUExecutionProvider"]
    options: dict[str, str] = {"device_id": str(device_id), "trt_fp16_enable": "1" if fp16 else "0",
                               "trt_builder_optimization_level": "3", "trt_timing_cache_enable": "1"}
    if cache_dir is not None:
        options.update(trt_engine_cache_enable="1", trt_engine_cache_path=str(cache_dir),
                       trt_timing_cache_path=str(cache_dir))
    if profile is not None and spec is not None:
        shapes = profile.input_shapes(spec)
        for index, key in enumerate(("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")):
            options[key] = ",".join(f"{name}:{'x'.join(str(d) for d in dims[index])}"
                                    for name, dims in shapes.items())
    return [("TensorrtExecutionProvider", options), cuda, "CPUExecutionProvider"]


class OrtUNetBackend(ProfiledBackend):
    """A UNet ``.onnx`` file in an onnxruntime session."""

    def __init__(self, model_path: str | os.PathLike, spec: UNetSpec, profile: ShapeProfile | None = None,
                 provider: str = "cpu", threads: int | None = None, device_id: int = 0,
                 initializer_overrides: dict[str, np.ndarray] | None = None, fp16: bool = False,
                 cache_dir: str | os.PathLike | None = None, session_options: Any = None) -> None:
        import onnxruntime as ort

        if provider == "tensorrt" and profile is None:
            raise InvalidInputError("the TensorRT provider needs a shape profile (resolutions and batch sizes)")
        super().__init__(spec, profile if provider == "tensorrt" else None)
        self.model_path = Path(model_path)
        self.provider = provider
        self.device_id = device_id
        self.name = f"onnxruntime-{provider}"
        options = session_options or cpu_session_options(threads)
        providers = provider_list(provider, device_id, profile, spec, fp16, cache_dir)
        self._scratch: tempfile.TemporaryDirectory | None = None
        source: str | bytes = str(self.model_path)
        if initializer_overrides:
            source = self._with_weights(initializer_overrides)
        try:
            self.session = ort.InferenceSession(source, options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt or unsupported files
            raise InvalidModelError(f"{self.model_path.name} could not be opened by onnxruntime: {exc}") from exc
        self.input_types = {i.name: _NUMPY_TYPES.get(i.type, "float32") for i in self.session.get_inputs()}
        missing = set(spec.input_names) - set(self.input_types)
        if missing:
            raise InvalidModelError(f"{self.model_path.name} lacks the UNet inputs {sorted(missing)}; "
                                    f"it has {sorted(self.input_types)}")
        outputs = self.session.get_outputs()
        self.output_name = OUTPUT if any(o.name == OUTPUT for o in outputs) else outputs[0].name
        self.output_type = _NUMPY_TYPES.get(next(o.type for o in outputs if o.name == self.output_name), "float32")

    def _with_weights(self, weights: dict[str, np.ndarray]) -> str | bytes:
        """The model with some initializers replaced by name, as bytes or (above 2 GiB) a scratch file.

        ``SessionOptions.add_initializer`` is not used on purpose: onnxruntime applies such overrides
        after its graph optimisations, and optimisations that derive new constants from a weight (the
        CPU provider's NCHWc convolution re-layout) keep using the file's original value.
        """
        import onnx
        from onnx import numpy_helper
        from onnx.external_data_helper import load_external_data_for_model

        model = onnx.load(str(self.model_path), load_external_data=False)
        unknown = set(weights) - {init.name for init in model.graph.initializer}
        if unknown:
            raise InvalidModelError(f"{self.model_path.name} has no initializers named {sorted(unknown)[:6]}")
        for init in model.graph.initializer:
            if init.name in weights:
                init.CopyFrom(numpy_helper.from_array(weights[init.name], init.name))
        load_external_data_for_model(model, str(self.model_path.parent))
        if model.ByteSize() < _PROTOBUF_LIMIT:
            return model.SerializeToString()
        self._scratch = tempfile.TemporaryDirectory(prefix="backdrop-refit-")
        path = Path(self._scratch.name) / self.model_path.name
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data")
        return str(path)

    def _run_chunk(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        sample = feeds[SAMPLE]
        if self.provider != "cpu" and sample.is_cuda:
            return self._run_bound(feeds).to(sample.dtype)
        import torch

        arrays = {name: _to_numpy(feeds[name], self.input_types[name]) for name in self.spec.input_names}
        out = self.session.run([self.output_name], arrays)[0]
        return torch.from_numpy(out).to(device=sample.device, dtype=sample.dtype)

    def _run_bound(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        import numpy as np
        import torch

        binding = self.session.io_binding()
        keep = []
        device_id = feeds[SAMPLE].device.index or 0
        for name in self.spec.input_names:
            tensor = feeds[name].to(dtype=_torch_dtype(self.input_types[name])).contiguous()
            keep.append(tensor)
            binding.bind_input(name, "cuda", device_id, np.dtype(self.input_types[name]), tuple(tensor.shape),
                               tensor.data_ptr())
        b, _, h, w = feeds[SAMPLE].shape
        out = torch.empty((b, self.spec.out_channels, h, w), dtype=_torch_dtype(self.output_type),
                          device=feeds[SAMPLE].device)
        binding.bind_output(self.output_name, "cuda", device_id, np.dtype(self.output_type), tuple(out.shape),
                            out.data_ptr())
        torch.cuda.current_stream(out.device).synchronize()
        self.session.run_with_iobinding(binding)
        return out


def _to_numpy(tensor: torch.Tensor, dtype: str) -> np.ndarray:

    return tensor.detach().to(device="cpu", dtype=_torch_dtype(dtype)).contiguous().numpy()


def _torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "float16": torch.float16}[name]
