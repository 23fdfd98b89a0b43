"""Precision as a first-class axis: which precisions exist, which units of *this* CPU run them natively.

The same engine code runs on an AVX2 AMD EPYC and on an Intel Xeon with AVX-512, AMX-BF16 and AMX-INT8.
What is fast differs completely between them, so every choice starts from what the CPU has, read from
its feature flags (``/proc/cpuinfo``) and, when the engine is installed, OpenVINO's own list
(``OPTIMIZATION_CAPABILITIES``). Nothing here claims a unit that the flags do not show:

- ``bf16`` is native with AVX512_BF16 or AMX-BF16. On AVX2 torch emulates it (converting every operand
  to fp32 and back, several times *slower* than fp32), and OpenVINO refuses the hint and runs f32.
- ``fp16`` compute on a CPU needs AMX-FP16 (Granite Rapids); elsewhere it is refused. F16C only converts,
  and AVX512_FP16 alone (Sapphire Rapids) is not enough for the engines: OpenVINO's f16 ran an SD1.5 UNet
  step in 8.1 s there, against 5.7 s in fp32 and 1.6 s in bf16 on AMX-BF16.
- ``int8`` always runs (weights stored in int8, dequantized in the kernels); its dot products use
  AMX-INT8, AVX512_VNNI or AVX-VNNI where present and plain AVX2 multiply-adds otherwise.
- ``w8a8`` (static int8: weights *and* activations, scales calibrated at export) always runs too; its
  convolutions and linear layers are int8 x int8 dot products on those same units, and the layers left float
  (first and last convolution, time embedding, norms) run in bf16 where the CPU has a bf16 unit, else fp32.

Each precision has an error class: the relative error (max |out - fp32 eager| / max |fp32 eager|) its
engines are held to in tests and that ``backdrop bench --backends auto`` uses as the default budget. ``w8a8``'s
is the loosest (1e-1): one int8 scale per activation tensor leaves a broad error of about 4% RMS on random-weight
UNets (5e-2 max on SD1.5, up to 1e-1 on the tiny test UNets), so ``--backends auto`` picks it only when asked to
with ``--error-budget``.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInputError

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "w8a8")
# Relative error (max abs error / max |reference|) each class is allowed against fp32 eager torch.
ERROR_CLASS = {"fp32": 1e-4, "bf16": 2e-2, "fp16": 1e-2, "int8": 5e-2, "w8a8": 1e-1}

# /proc/cpuinfo flag -> the name people know the unit by
UNIT_FLAGS = (("avx2", "AVX2"), ("fma", "FMA"), ("f16c", "F16C"), ("avx_vnni", "AVX-VNNI"),
              ("avx512f", "AVX-512F"), ("avx512_vnni", "AVX512_VNNI"), ("avx512_bf16", "AVX512_BF16"),
              ("avx512_fp16", "AVX512_FP16"), ("amx_bf16", "AMX-BF16"), ("amx_int8", "AMX-INT8"),
              ("amx_fp16", "AMX-FP16"))


class UnsupportedPrecisionError(InvalidInputError):
    """A precision this CPU (or this engine) cannot run natively."""


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name and the feature flags that decide which precision is fast."""

    model: str
    flags: frozenset[str]
    arch: str = ""

    @property
    def units(self) -> tuple[str, ...]:
        """Vector and matrix units present, by their usual names (only what the flags show)."""
        return tuple(name for flag, name in UNIT_FLAGS if flag in self.flags)

    @property
    def isa(self) -> str:
        """The widest class of unit: ``AMX``, ``AVX-512``, ``AVX2`` or ``baseline``."""
        if {"amx_bf16", "amx_int8"} & self.flags:
            return "AMX"
        if "avx512f" in self.flags:
            return "AVX-512"
        if "avx2" in self.flags:
            return "AVX2"
        return "baseline"

    @property
    def native_bf16(self) -> bool:
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    @property
    def native_fp16(self) -> bool:
        return "amx_fp16" in self.flags

    @property
    def int8_dot(self) -> str:
        """The unit int8 dot products use: AMX-INT8, AVX512_VNNI, AVX-VNNI, or AVX2 (no VNNI)."""
        for flag, name in (("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX512_VNNI"), ("avx_vnni", "AVX-VNNI")):
            if flag in self.flags:
                return name
        return "AVX2 (no VNNI)" if "avx2" in self.flags else "scalar"

    def describe(self) -> str:
        return f"{self.model} ({self.isa}: {', '.join(self.units) or 'no AVX'})"

    def to_dict(self) -> dict[str, object]:
        return {"model": self.model, "isa": self.isa, "units": list(self.units), "native_bf16": self.native_bf16,
                "native_fp16": self.native_fp16, "int8_dot": self.int8_dot}


def parse_cpuinfo(text: str) -> CpuInfo:
    """``CpuInfo`` from the text of ``/proc/cpuinfo`` (the first processor's model and flags)."""
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    return CpuInfo(model=model or platform.processor() or "unknown CPU", flags=flags, arch=platform.machine())


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's ``CpuInfo`` (``/proc/cpuinfo``; on other systems the model name only, no flags)."""
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return CpuInfo(model=platform.processor() or "unknown CPU", flags=frozenset(), arch=platform.machine())


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InvalidInputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


def native_support(precision: str, cpu: CpuInfo | None = None) -> tuple[bool, str]:
    """(runs natively on this CPU, which unit or why not) for a precision's compute."""
    cpu = cpu or cpu_info()
    check_precision(precision)
    if precision == "fp32":
        return True, "AVX-512 FMA" if cpu.isa in ("AMX", "AVX-512") else ("AVX2 FMA" if cpu.isa == "AVX2" else "SSE")
    if precision == "bf16":
        if cpu.native_bf16:
            return True, "AMX-BF16" if "amx_bf16" in cpu.flags else "AVX512_BF16"
        return False, (f"{cpu.model} has no native bf16 unit (no AVX512_BF16, no AMX-BF16; it has "
                       f"{cpu.isa}): bf16 is emulated through fp32 conversions and is slower than fp32 here")
    if precision == "fp16":
        if cpu.native_fp16:
            return True, "AMX-FP16"
        if "avx512_fp16" in cpu.flags:
            return False, (f"{cpu.model} has AVX512_FP16 but no AMX-FP16: the engines' fp16 kernels there are slower "
                           "than fp32 (an SD1.5 step took 8.1 s in OpenVINO f16, 5.7 s in fp32); use bf16 on AMX-BF16")
        return False, (f"{cpu.model} has no fp16 compute unit (no AMX-FP16; F16C only converts): "
                       "fp16 runs on GPUs, not on this CPU")
    if precision == "w8a8":
        return True, f"int8 weights and activations, dot products on {cpu.int8_dot}"
    return True, f"int8 weights, dot products on {cpu.int8_dot}"


def float_part(precision: str, cpu: CpuInfo | None = None) -> str:
    """The precision of an engine's float layers: a ``w8a8`` engine's run in bf16 where this CPU has the unit,
    else fp32; every other precision is its own."""
    if check_precision(precision) != "w8a8":
        return precision
    return "bf16" if native_support("bf16", cpu)[0] else "fp32"


def torch_cpu_capability() -> str:
    """What torch's CPU kernels were dispatched for (``AVX2``, ``AVX512``...), or '' if unknown."""
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except (ImportError, AttributeError):
        return ""
