"""The engine ``backdrop bench --backends auto`` chose, written where ``backdrop run --engine auto`` reads it.

The bench times every backend x precision on random weights of the real architecture, so what it
chooses is a *kind* of engine (say OpenVINO int8, or onnxruntime fp32 with CPU fusions), never a file:
the weights of the user's checkpoint differ. ``backdrop run --engine auto`` turns the choice into an
``EngineRequest`` and exports that engine for its checkpoint and LoRA stack, or finds it in the engine
cache when it was built before.

One small JSON file, ``engine_choice.json`` in the models folder (``--models-dir`` / ``BACKDROP_MODELS_DIR``
/ ``./models``), written atomically. It records the CPU it was measured on: a choice made on another
CPU (an AVX2 EPYC choice on an AMX Xeon, or an AVX-512 choice on a CPU of the same model name without
AVX512_BF16) is refused with a message to bench again, because the fastest engine differs between them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..runtime.engines.precision import CpuInfo, cpu_info
from ..runtime.engines.profile import ShapeProfile
from ..runtime.errors import InvalidInputError, MissingModelError
from ..runtime.files import replace_bytes_atomic
from .engine_export import EngineRequest

CHOICE_FILE = "engine_choice.json"
# bench backend name -> how `backdrop run` builds it (format, optimize_for); torch needs no engine
RUNNABLE = {"openvino": ("openvino", ""), "ort": ("onnx", "cpu"), "ort-plain": ("onnx", "")}
# torch rows `backdrop run` reproduces in process: eager, and Inductor with frozen weights (compiled on the
# first step, so it pays off over a catalog rather than one image)
TORCH_RUNNABLE = ("eager", "compile-frozen")


@dataclass(frozen=True)
class EngineChoice:
    """The fastest backend x precision within the error budget, and the evidence for it."""

    backend: str  # bench backend name: eager, compile, openvino, ort, ort-plain...
    precision: str
    label: str
    p50_s: float
    speedup: float
    max_rel_error: float
    error_budget: float
    cpu: dict[str, Any] = field(default_factory=dict)
    threads: int = 0
    measured: str = ""  # the bench command
    rejected: list[str] = field(default_factory=list)  # faster rows over the budget, said why

    @property
    def is_engine(self) -> bool:
        return self.backend in RUNNABLE

    @property
    def frozen_compile(self) -> bool:
        """Whether the choice is the torch UNet compiled by Inductor with frozen weights (no engine file)."""
        return self.backend == "compile-frozen"

    def request(self, profile: ShapeProfile | None) -> EngineRequest | None:
        """The export request for this choice (None: torch in ``precision`` was the fastest, eager or with its
        frozen compile: ``frozen_compile``)."""
        if self.backend in (*TORCH_RUNNABLE, "compile"):  # plain compile: run as eager
            return None
        if self.backend not in RUNNABLE:
            raise InvalidInputError(f"the bench chose {self.label}, which `backdrop run` cannot build; run the bench "
                                    f"with --backends auto over {', '.join((*TORCH_RUNNABLE, *RUNNABLE))}")
        fmt, target = RUNNABLE[self.backend]
        return EngineRequest(format=fmt, precision=self.precision, profile=None if fmt == "openvino" else profile,
                             optimize_for=target)

    def check_cpu(self, cpu: CpuInfo | None = None) -> None:
        """Refuse a choice measured on another CPU model, ISA or set of units (one model name can cover CPUs
        with and without AVX512_BF16 or AMX: "AMD EPYC", or a cloud's "Intel(R) Xeon(R) Processor")."""
        cpu = cpu or cpu_info()
        model, isa, units = self.cpu.get("model"), self.cpu.get("isa"), self.cpu.get("units", cpu.units)
        if (model, isa, sorted(units)) != (cpu.model, cpu.isa, sorted(cpu.units)):  # no units recorded: not compared
            raise InvalidInputError(f"the engine choice was measured on {model} ({isa}: {', '.join(units)}), and "
                                    f"this is {cpu.model} ({cpu.isa}: {', '.join(cpu.units)}); the fastest engine "
                                    "differs between them, so run `backdrop bench --backends auto` on this machine "
                                    "first")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineChoice:
        try:
            return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except TypeError as exc:
            raise InvalidInputError(f"the engine choice file is incomplete: {exc}") from exc


def default_choice_path(models_dir: str | os.PathLike | None = None) -> Path:
    from ..runtime.models import default_models_dir

    return (Path(models_dir).expanduser() if models_dir else default_models_dir()) / CHOICE_FILE


def write_choice(choice: EngineChoice, path: str | os.PathLike) -> Path:
    """Write (or replace: it is the latest decision, not a user file) the choice atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_bytes_atomic(path, json.dumps(choice.to_dict(), indent=1).encode("utf-8"))
    return path


def read_choice(path: str | os.PathLike) -> EngineChoice:
    path = Path(path)
    if not path.is_file():
        raise MissingModelError(f"--engine auto reads {path}, which does not exist: run `backdrop bench --backends "
                                "auto` (with the same --models-dir) to measure and choose the engine first")
    try:
        return EngineChoice.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"{path} is not a readable engine choice: {exc}") from exc


def choose(rows: list[dict[str, Any]], error_budget: float) -> tuple[dict[str, Any] | None, list[str]]:
    """The fastest row (by p50) whose max relative error is within the budget; and why faster rows were not.

    Each row has ``backend``, ``precision``, ``label``, ``p50_s`` and ``max_rel_error``.
    """
    ranked = sorted((r for r in rows if r.get("p50_s") is not None), key=lambda r: r["p50_s"])
    rejected = []
    for row in ranked:
        err = row.get("max_rel_error")
        if err is not None and err <= error_budget:
            return row, rejected
        rejected.append(f"{row['label']}: error {err:.2e} over the budget {error_budget:.0e}" if err is not None
                        else f"{row['label']}: no error measured")
    return None, rejected
