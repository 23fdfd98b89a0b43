"""Will an engine export fit in memory? Estimates from measured peaks, and what the machine has left.

An export holds the torch model, a traced graph and the engine's own copy of the weights at once, and opening an
engine compiles a second copy: on top of the loaded pipeline, the SD1.5 UNet (3.4 GB of fp32 weights) needs 2.0 GiB
more to export to OpenVINO fp32 and 4.6 GiB more to open that engine and run its first step. Where that is not
there, the kernel's out-of-memory killer ends the process, and inside ComfyUI that is the whole server with its
queue and unsaved workflow. ``export_engine`` and ``attach_engine`` therefore check first and refuse with the
numbers and the way out (a lighter precision, or a limit given by the user).

Needs are multiples of the model's fp32 weight bytes, measured on the SD1.5 and SDXL UNets (random weights, 3.4 and
10.3 GB) at stop 32 for the export alone (``EXPORT_PER_WEIGHT``) and for opening the engine plus one call at 512 px
(``LOAD_PER_WEIGHT``; ``benchmarks/probe_export_memory.py``), and at stops 29 and 31 for ``backdrop bench``'s rows,
which do both and keep every row loaded (``SETUP_PER_WEIGHT``, docs/performance.md). What is left is the kernel's
``MemAvailable`` (which counts page cache it can drop), or less where the process's cgroup (a container) has a lower
limit.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..runtime.errors import InsufficientMemoryError

GIB = 2**30
MARGIN = GIB // 4  # activations and allocator slack beyond the weight-proportional part
# backdrop bench's rows: own setup peak (export, conversion, compile, one run) / fp32 weight bytes, rounded up;
# "*": every other precision of the backend
SETUP_PER_WEIGHT = {
    ("eager", "fp32"): 0.15, ("eager", "*"): 1.0,
    ("compile", "*"): 0.3,
    ("compile-frozen", "fp32"): 1.8, ("compile-frozen", "*"): 0.8,
    ("ort-plain", "*"): 1.7,
    ("ort", "fp32"): 2.1, ("ort", "*"): 1.1,
    ("openvino", "fp32"): 2.9, ("openvino", "int8"): 0.7, ("openvino", "w8a8"): 2.4, ("openvino", "*"): 1.3,
    ("trt", "*"): 1.0,
}
# anonymous memory (file-backed pages, such as an engine file the runtime maps, can be dropped by the kernel) over
# what was in use before / fp32 weight bytes, measured on the SD1.5 and SDXL UNets and rounded up over both; fp16
# was not measured (fp32's figures), nor TensorRT's build (bench's setup figure; its weights go to the GPU)
# - the export alone (export_engine), SD1.5 / SDXL: OpenVINO fp32 0.63 / 0.42, bf16 0.26 / 0.41, int8 0.60 / 0.67,
#   w8a8 1.62 / -, ONNX 0.15 / 0.17, optimized ONNX 1.88 / -; OpenVINO's with torch.jit.trace's check, which its
#   conversions skip since stop 33 (SD1.5 fp32 0.63 -> 0.56), so its figures are on the safe side
EXPORT_PER_WEIGHT = {
    ("openvino", "fp32"): 0.7, ("openvino", "bf16"): 0.45, ("openvino", "int8"): 0.75, ("openvino", "w8a8"): 1.75,
    ("openvino", "*"): 0.7, ("ort-plain", "*"): 0.2, ("ort", "*"): 2.0, ("trt", "*"): 1.0,
}
# - opening the engine and one UNet call at 512 px, batch 2 (attach_engine and the first step), SD1.5 / SDXL:
#   OpenVINO fp32 1.43 / -, bf16 0.54 / 0.52, int8 1.52 / -, w8a8 0.33 / -, ONNX 1.69 / -, optimized ONNX 0.32 / -
LOAD_PER_WEIGHT = {
    ("openvino", "fp32"): 1.5, ("openvino", "bf16"): 0.6, ("openvino", "int8"): 1.6, ("openvino", "w8a8"): 0.4,
    ("openvino", "*"): 1.5, ("ort-plain", "*"): 1.8, ("ort", "*"): 0.4,
}
BACKEND_LABELS = {"openvino": "OpenVINO", "ort-plain": "ONNX", "ort": "optimized ONNX", "trt": "TensorRT"}
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _need(table: dict, backend: str, precision: str, weight_bytes: int) -> int:
    factor = table.get((backend, precision), table.get((backend, "*"), 3.0))
    return int(factor * weight_bytes) + MARGIN


def setup_need(backend: str, precision: str, weight_bytes: int) -> int:
    """Bytes a bench row is expected to add while it is set up, for a UNet of ``weight_bytes`` fp32 weights."""
    return _need(SETUP_PER_WEIGHT, backend, precision, weight_bytes)


def export_need(backend: str, precision: str, weight_bytes: int) -> int:
    """Bytes an export to ``backend`` (openvino, ort-plain, ort, trt) in ``precision`` is expected to add, for a
    model of ``weight_bytes`` fp32 weights."""
    return _need(EXPORT_PER_WEIGHT, backend, precision, weight_bytes)


def memory_backend(format: str, optimized_for: str = "") -> str:
    """The backend whose measured needs apply to an engine of ``format`` (onnx optimised for ``optimized_for``)."""
    if format == "onnx":
        return "ort" if optimized_for else "ort-plain"
    return "trt" if format == "tensorrt" else format


def fp32_weight_bytes(module: Any) -> int:
    """What a torch module's weights take in fp32 (the unit of the measured needs, whatever dtype it is loaded in)."""
    return 4 * sum(p.numel() for p in module.parameters())


def load_need(backend: str, precision: str, weight_bytes: int) -> int:
    """Bytes opening a ``backend`` engine of ``precision`` and its first call are expected to add (``weight_bytes``:
    the fp32 weights of the model it was exported from)."""
    return _need(LOAD_PER_WEIGHT, backend, precision, weight_bytes)


def fp32_copy_bytes(module: Any) -> int:
    """What the fp32 copy an OpenVINO export traces adds for a module loaded in another dtype (0 for fp32)."""
    first = next(iter(module.parameters()), None)
    return 0 if first is None or first.element_size() == 4 else fp32_weight_bytes(module)


def proc_bytes(path: str, name: str) -> int | None:
    """A ``name: N kB`` field of a /proc file (``/proc/meminfo``, ``/proc/self/status``) in bytes, or None (off
    Linux, or no such field)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def _stat_field(path: Path, name: str) -> int:
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == name and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def cgroup_headroom(root: Path = CGROUP_ROOT) -> int | None:
    """Bytes the memory cgroup mounted at ``root`` lets this process still use (its limit minus its usage, page
    cache the kernel can drop not counted), or None where it sets no limit. cgroup v2 (``memory.max``) and v1
    (``memory/memory.limit_in_bytes``)."""
    layouts = ((root, "memory.max", "memory.current", "inactive_file"),
               (root / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"))
    for folder, limit_file, usage_file, reclaimable in layouts:
        limit, usage = _read_int(folder / limit_file), _read_int(folder / usage_file)
        if limit is None or usage is None:
            continue
        if limit >= 1 << 60:  # v1's "no limit" is a page-rounded 2^63
            return None
        return max(0, limit - max(0, usage - _stat_field(folder / "memory.stat", reclaimable)))
    return None


def available_bytes() -> int | None:
    """Memory this process can still take without swapping: the kernel's ``MemAvailable``, capped by the cgroup's
    headroom (a container's limit); None off Linux."""
    known = [b for b in (proc_bytes("/proc/meminfo", "MemAvailable"), cgroup_headroom()) if b is not None]
    return min(known) if known else None


def _size(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / 2**20:.1f} MiB"


def check_export_fits(what: str, backend: str, precision: str, weight_bytes: int, limit: float | None = None,
                      others: tuple[str, ...] = (), copy_bytes: int = 0) -> None:
    """Raise ``InsufficientMemoryError`` when exporting ``what`` (``weight_bytes`` of fp32 weights) to ``backend``
    in ``precision`` would need more than is available: ``limit`` bytes where given (``math.inf``: no check),
    else ``available_bytes()`` (no check where that is unknown). ``others``: the backend's other precisions,
    named in the error where they would fit. ``copy_bytes``: an fp32 copy the export makes first
    (``fp32_copy_bytes``), on top of the measured need."""
    _check("exporting", export_need, what, backend, precision, weight_bytes, limit, others, copy_bytes)


def check_load_fits(what: str, backend: str, precision: str, weight_bytes: int, limit: float | None = None) -> None:
    """``check_export_fits`` for opening an engine and its first call (``weight_bytes``: the fp32 weights of the
    model it replaces)."""
    _check("loading", load_need, what, backend, precision, weight_bytes, limit, ())


def _check(verb: str, need_of, what: str, backend: str, precision: str, weight_bytes: int, limit: float | None,
           others: tuple[str, ...], copy_bytes: int = 0) -> None:
    left = available_bytes() if limit is None else limit
    need = need_of(backend, precision, weight_bytes) + copy_bytes
    if left is None or math.isinf(left) or need <= left:
        return
    lighter = [f"{p} (about {_size(need_of(backend, p, weight_bytes) + copy_bytes)})" for p in others
               if p != precision and need_of(backend, p, weight_bytes) + copy_bytes <= left]
    source = "the limit given" if limit is not None else "available"
    raise InsufficientMemoryError(
        f"{verb} {what} ({_size(weight_bytes)} of fp32 weights) as {BACKEND_LABELS.get(backend, backend)} "
        f"{precision} needs about {_size(need)} on top of what is in use ("
        f"{'an fp32 copy of its weights included; ' if copy_bytes else ''}peaks measured on SD1.5 and SDXL, "
        f"docs/performance.md), and {_size(max(left, 0))} is {source}. Free memory (close other programs, "
        f"unload models){', export ' + ' or '.join(lighter) if lighter else ''}, or give a memory limit if more "
        f"can be used (the engine nodes' memory_gib, backdrop run --engine-memory)",
        need=need, available=int(max(left, 0)))
