"""OpenVINO IR models (``.xml`` + ``.bin``) compiled for the CPU, and the UNet backend built on them.

OpenVINO is Intel's inference engine for exactly the CPUs this pack runs on; its CPU plugin picks
oneDNN kernels per ISA (AVX2, AVX-512, AMX) at compile time. Precision is decided when the model is
compiled, from the precision the engine was exported for (its manifest):

- ``fp32``: ``INFERENCE_PRECISION_HINT=f32``, always set explicitly, because on a CPU with AMX or
  AVX512_BF16 OpenVINO's *default* is bf16 and an "fp32" engine would silently run in bf16.
- ``bf16`` / ``fp16``: only where the CPU has the unit (runtime/engines/precision.py). OpenVINO falls back
  to f32 without a word when it is missing, so the request is refused instead, naming the CPU.
- ``int8``: weights compressed to int8 by NNCF (export time); activations f32.
- ``w8a8``: weights and activations int8 (NNCF static quantization at export); the float layers take the bf16
  hint where the CPU has the unit, else f32 (``precision.float_part``).

After compiling, ``kernels()`` reads the runtime graph: which oneDNN primitive ran each layer
(``brgconv_avx512_amx_bf16``, ``jit_avx2_FP32``...) and in which precision, so a report can say which
units actually ran rather than what was asked for. ``openvino`` is imported only when a model is
opened; without it the error names the ``cpu-engines`` extra.
"""

from __future__ import annotations

import os
from collections import Counter, OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError, InvalidModelError
from .base import ProfiledBackend
from .precision import CpuInfo, UnsupportedPrecisionError, check_precision, float_part, native_support
from .profile import ShapeProfile
from .spec import OUTPUT, SAMPLE, UNetSpec
from .time_embedding import TIMESTEP_EMBEDDING, HostTimeEmbeddings, engine_input_names

if TYPE_CHECKING:
    import numpy as np
    import torch

EXTRA = "cpu-engines"
DEEP_FEATURES = "deep_features"  # the hidden state entering the UNet's last up block (feature cache)
HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}  # w8a8: its float part's
# The UNet runs a static-shape copy when its deepest level is at least this many latent cells a side (256 px for
# SD1.5 and SDXL); smaller, the dynamic IR. At a 2x2 deepest level (a 64 px SDXL image) the static bf16 copy
# fused more element-wise chains into bf16 and its error rose from 1.3e-2 to 6.0e-2; from 4x4 up both matched.
STATIC_MIN_LEVELS = 4


def import_openvino() -> Any:
    """``openvino``, or an error naming the extra that installs it."""
    try:
        import openvino
    except ImportError as exc:
        raise InvalidInputError(f"OpenVINO engines need the `openvino` package: pip install "
                                f"'comfyui-backdrop[{EXTRA}]' (or `pip install openvino nncf`)") from exc
    return openvino


@lru_cache(maxsize=1)
def shared_core() -> Any:
    """The process's one ``openvino.Core``, kept for the life of the process.

    Each ``Core`` loads its own CPU plugin, and the plugin points the thread's alternate signal stack at memory
    of its own; when two plugins exist and the older is destroyed first, the alternate stack is left pointing at
    freed memory, and the next signal whose handler runs on it (Python's SIGINT and SIGTERM handlers do)
    crashes the process with a segmentation fault instead of a Ctrl-C stop (OpenVINO 2026.4; two Cores, the
    first deleted first, then SIGINT, reproduces it). One Core for every model avoids it, and is how OpenVINO
    is meant to be used.
    """
    return import_openvino().Core()


def openvino_capabilities() -> tuple[str, ...]:
    """OpenVINO's own list for the CPU (``FP32``, ``BF16``, ``INT8``...), or () without openvino."""
    try:
        core = shared_core()
    except InvalidInputError:
        return ()
    return tuple(str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def check_native(precision: str, cpu: CpuInfo | None = None) -> None:
    """Raise ``UnsupportedPrecisionError`` unless this CPU computes ``precision`` natively.

    Both the CPU flags and OpenVINO's capability list must agree for bf16/fp16: a unit the kernel
    library cannot use is no better than a missing one.
    """
    check_precision(precision)
    native, why = native_support(precision, cpu)
    if not native:
        raise UnsupportedPrecisionError(f"OpenVINO {precision}: {why}. Export an fp32 or int8 engine for this CPU.")
    if precision in ("bf16", "fp16") and cpu is None:
        capabilities = openvino_capabilities()
        if capabilities and precision.upper() not in capabilities:
            raise UnsupportedPrecisionError(f"OpenVINO reports CPU capabilities {', '.join(capabilities)}, "
                                            f"without {precision.upper()}; export an fp32 or int8 engine")


def compile_config(precision: str, threads: int | None = None) -> dict[str, Any]:
    """The CPU plugin settings for a latency-bound engine in ``precision`` (checked against this CPU)."""
    check_native(precision)
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": HINTS[float_part(precision)], "PERFORMANCE_HINT": "LATENCY",
                              "NUM_STREAMS": 1}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def kernels(compiled: Any) -> dict[str, Any]:
    """What the compiled model runs: primitive counts by (layer type, primitive), runtime precisions,
    and the precision hint OpenVINO applied."""
    primitives: Counter[str] = Counter()
    precisions: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else "?"
        if layer in ("Input", "Parameter", "Const", "Output", "Result", "Reshape", "Reorder"):
            continue
        primitive = info["primitiveType"].astype(str) if "primitiveType" in info else "?"
        primitives[f"{layer}:{primitive}"] += 1
        if "runtimePrecision" in info:
            precisions[info["runtimePrecision"].astype(str)] += 1
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    return {"applied_precision": hint.to_string() if hasattr(hint, "to_string") else str(hint),
            "primitives": dict(primitives.most_common()), "runtime_precisions": dict(precisions.most_common())}


def summarize_kernels(report: dict[str, Any], top: int = 3) -> str:
    """``conv: brgconv_avx2 x120, ...; precisions f32 900`` for a table note."""
    heavy = {k: v for k, v in report["primitives"].items()
             if k.split(":")[0] in ("Convolution", "FullyConnected", "MatMul", "ScaledDotProductAttention")}
    known = {k: v for k, v in heavy.items() if not k.split(":", 1)[1].startswith("undef")}
    parts = [f"{k.split(':', 1)[1]} x{v}" for k, v in list(known.items())[:top]]
    deferred = sum(v for k, v in heavy.items() if k not in known)
    if deferred:  # dynamic shapes: the primitive is picked when the shapes are known, at run time
        parts.append(f"{deferred} picked at run time (dynamic shapes)")
    precisions = ", ".join(f"{k} {v}" for k, v in report["runtime_precisions"].items())
    return f"kernels: {', '.join(parts) or 'n/a'}; runtime precisions: {precisions}"


def kernel_note(backend: Any, top: int = 3) -> str:
    """``applied bf16; kernels: ...`` for a backend with ``kernels()`` (OpenVINO), '' for others; ask after a run,
    so the report is of the copy compiled for the shapes that ran."""
    if not hasattr(backend, "kernels"):
        return ""
    report = backend.kernels()
    return f"applied {report['applied_precision']}; " + summarize_kernels(report, top=top)


class OpenVinoModel:
    """One IR, compiled for the CPU per set of input shapes; numpy in, numpy out, by input name.

    The IR keeps dynamic shapes (any batch, size, token count). ``run`` compiles a copy for the call's exact
    shapes (``static=True``, the default): with static shapes the CPU plugin picks its kernels (AMX brgemm
    tiling, MatMul blocking) when compiling instead of per call. On the SD1.5 UNet at 512 px, batch 2, 2
    threads on an AMX Xeon: 1.55 s against 1.72 s a step in bf16, 5.66 s against 5.90 s in fp32, for 6-9 s of
    compiling once per shape. ``static=False`` runs the dynamic IR. The ``max_compiled`` most recently used
    copies stay compiled (each holds its own repacked weights); nothing is compiled before the first call.
    """

    def __init__(self, model_path: str | os.PathLike, precision: str = "fp32", threads: int | None = None,
                 max_compiled: int = 2) -> None:
        self.model_path = Path(model_path)
        self.precision = check_precision(precision)
        self.config = compile_config(precision, threads)
        self.max_compiled = max(1, int(max_compiled))
        self.core = shared_core()  # raises naming the extra without openvino
        try:
            self.ir = self.core.read_model(str(self.model_path))
        except RuntimeError as exc:  # OpenVINO raises RuntimeError for unreadable or unsupported IR
            raise InvalidModelError(f"{self.model_path.name} could not be opened by OpenVINO: {exc}") from exc
        self.input_names = [i.get_any_name() for i in self.ir.inputs]
        self.output_names = [o.get_any_name() for o in self.ir.outputs]
        self.input_types = {i.get_any_name(): i.get_element_type().to_dtype() for i in self.ir.inputs}
        # (shapes (() = dynamic), outputs computed) -> (compiled model, infer request), least recently used first
        self._compiled: OrderedDict[tuple, tuple[Any, Any]] = OrderedDict()
        self._latest: Any = None
        self._kernels: dict[str, Any] | None = None

    def compiled_for(self, shapes: dict[str, tuple[int, ...]] | None = None, outputs: Sequence[str] | None = None
                     ) -> tuple[Any, Any]:
        """(compiled model, infer request) for these input shapes (None: the dynamic IR), computing only
        ``outputs`` (None: all of them)."""
        ov = import_openvino()
        kept = tuple(outputs) if outputs is not None else tuple(self.output_names)
        key = (tuple(sorted(shapes.items())) if shapes is not None else (), kept)
        if key in self._compiled:
            self._compiled.move_to_end(key)
            return self._compiled[key]
        model = self.ir if shapes is None and kept == tuple(self.output_names) else self.ir.clone()
        if kept != tuple(self.output_names):  # a model over the copied graph with only these results
            results = {r.input_value(0).get_any_name(): r for r in model.get_results()}
            model = ov.Model([results[name] for name in kept], model.get_parameters(), model.get_friendly_name())
        if shapes is not None:
            try:
                model.reshape({name: ov.PartialShape(list(shape)) for name, shape in shapes.items()})
            except RuntimeError as exc:
                raise InvalidInputError(f"{self.model_path.name} does not take inputs of shapes {shapes}: {exc}") \
                    from exc
        try:
            compiled = self.core.compile_model(model, "CPU", self.config)
        except RuntimeError as exc:
            raise InvalidModelError(f"{self.model_path.name} could not be compiled by OpenVINO: {exc}") from exc
        while len(self._compiled) >= self.max_compiled:
            self._compiled.popitem(last=False)
        self._compiled[key] = (compiled, compiled.create_infer_request())
        return self._compiled[key]

    def run(self, inputs: dict[str, np.ndarray], static: bool = True, outputs: Sequence[str] | None = None
            ) -> list[np.ndarray]:
        """The model's outputs in its order, or only ``outputs`` in that order: a copy compiled without the
        others skips their work (copies: the request's buffers are reused by the next call)."""
        import numpy as np

        missing = set(self.input_names) - set(inputs)
        if missing:
            raise InvalidInputError(f"{self.model_path.name} needs inputs {sorted(missing)}")
        unknown = set(outputs or ()) - set(self.output_names)
        if unknown:
            raise InvalidInputError(f"{self.model_path.name} has no outputs {sorted(unknown)}; it has "
                                    f"{self.output_names}")
        feeds = {name: np.ascontiguousarray(inputs[name], dtype=self.input_types[name]) for name in self.input_names}
        shapes = {name: tuple(array.shape) for name, array in feeds.items()} if static else None
        compiled, request = self.compiled_for(shapes, outputs)
        if compiled is not self._latest:
            self._latest, self._kernels = compiled, None
        request.infer(feeds)
        return [request.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))]

    def kernels(self) -> dict[str, Any]:
        """The kernel report of the copy the last call ran (the dynamic IR compiled for it, before any call)."""
        if self._kernels is None:
            if self._latest is None:
                self._latest = self.compiled_for(None)[0]
            self._kernels = kernels(self._latest)
        return self._kernels


class OpenVinoUNetBackend(ProfiledBackend):
    """A UNet IR compiled by OpenVINO for the CPU. Shapes are dynamic; the profile, if any, is recorded.

    With a ``shallow_path`` (the shallow UNet exported beside it) the backend can run the DeepCache-style
    feature cache: ``set_feature_cache(n)`` makes every n-th call a full one (which keeps its
    ``deep_features``) and the calls between run the shallow graph on them.
    """

    def __init__(self, model_path: str | os.PathLike, spec: UNetSpec, precision: str = "fp32",
                 profile: ShapeProfile | None = None, threads: int | None = None,
                 shallow_path: str | os.PathLike | None = None) -> None:
        super().__init__(spec, None)
        self.recorded_profile = profile
        self.model = OpenVinoModel(model_path, precision, threads)
        self.shallow_path = Path(shallow_path) if shallow_path else None
        self._shallow: OpenVinoModel | None = None
        self._threads = threads
        self.cache_interval = 0
        self._calls = 0
        self._deep: tuple[tuple[int, ...], np.ndarray] | None = None
        self.model_path = self.model.model_path
        self.precision = precision
        self.name = f"openvino-{precision}"
        # engines exported since the bf16 time-embedding fix take the embeddings, older ones the timestep
        self._embed = HostTimeEmbeddings(spec) if TIMESTEP_EMBEDDING in self.model.input_names else None
        self._inputs = engine_input_names(spec) if self._embed else spec.input_names
        missing = set(self._inputs) - set(self.model.input_names)
        if missing:
            raise InvalidModelError(f"{self.model_path.name} lacks the UNet inputs {sorted(missing)}; it has "
                                    f"{self.model.input_names}")
        names = self.model.output_names
        self._output = OUTPUT if OUTPUT in names else names[0]
        self._deep_output = DEEP_FEATURES if DEEP_FEATURES in names else None

    @property
    def supports_feature_cache(self) -> bool:
        return self.shallow_path is not None and self._deep_output is not None

    def set_feature_cache(self, interval: int) -> None:
        """0 or 1: every call runs the full UNet; n >= 2: full every n calls, shallow in between."""
        if interval > 1 and not self.supports_feature_cache:
            raise InvalidInputError(f"{self.model_path.name} has no shallow UNet beside it, so it cannot run the "
                                    "feature cache; export the OpenVINO engine again")
        if interval > 1 and self._shallow is None:
            self._shallow = OpenVinoModel(self.shallow_path, self.precision, self._threads)
        self.cache_interval, self._calls, self._deep = interval, 0, None

    def _run_chunk(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        import torch

        sample = feeds[SAMPLE]
        if self._embed is not None:
            feeds = self._embed(feeds)
        arrays = {name: feeds[name].detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
                  for name in self._inputs}
        shape = tuple(sample.shape)
        full = (self.cache_interval < 2 or self._calls % self.cache_interval == 0 or self._deep is None
                or self._deep[0] != shape)
        self._calls += 1
        static = min(shape[2:]) >= STATIC_MIN_LEVELS * self.spec.latent_multiple
        if full:
            caching = self.cache_interval > 1
            wanted = [self._output, self._deep_output] if caching else [self._output]
            outputs = self.model.run(arrays, static=static, outputs=wanted)  # no deep features unless cached
            if caching:
                self._deep = (shape, outputs[1])
            out = outputs[0]
        else:
            out = self._shallow.run({**arrays, DEEP_FEATURES: self._deep[1]}, static=static)[0]
        return torch.from_numpy(out).to(device=sample.device, dtype=sample.dtype)

    def kernels(self) -> dict[str, Any]:
        return self.model.kernels()
