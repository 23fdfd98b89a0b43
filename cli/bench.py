"""``backdrop bench``: the same UNet step (and, with --pipeline or --model, the whole job) on every backend x precision.

Backends: torch eager, torch.compile, onnxruntime on the plain export, onnxruntime on the optimised graph
(int8: dynamic MatMul quantization), OpenVINO (fp32, bf16/fp16 where the CPU has the unit, int8 weights
by NNCF), and TensorRT where it is installed with a GPU. ``--precisions`` crosses them with fp32, bf16,
fp16 and int8; a combination a backend or this CPU cannot run is a *skipped* row that says why (bf16 on
an AVX2 CPU is emulated by torch and refused by OpenVINO: the torch row is still run, and its note says
it is emulated). Every row has its max relative error against fp32 eager and its peak memory.

The report starts with the CPU model and ISA (AVX2 / AVX-512 / AMX) and the units present; OpenVINO rows
name the kernels that ran (from the compiled graph). Without --model the UNet has random weights in the
real architecture (the shipped SD1.5/SDXL configs), so the step benchmark needs no model files. With a
FLUX.1 Fill / Kontext ``--model`` the section is the FLUX transformer step (cli/bench_flux.py).

``--backends auto`` runs the CPU backends that ``backdrop run`` can use and picks the fastest row within
``--error-budget`` (default: the bf16 class, 2e-2); the choice goes to ``engine_choice.json`` in the models
folder, where ``backdrop run --engine auto`` reads it (export/engine_choice.py).

Timing is interleaved (export/bench.py). Results go to <out>/bench.json, bench.md and bench.png.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runtime.errors import InvalidInputError

BACKENDS = ("eager", "compile", "compile-frozen", "ort-plain", "ort", "ort-int8", "openvino", "trt")
DEFAULT_CPU = ("eager", "compile", "compile-frozen", "ort", "openvino")
TORCH_BACKENDS = ("eager", "compile", "compile-frozen")
DEFAULT_GPU = ("eager", "compile", "ort", "trt")
AUTO_CPU = ("eager", "compile-frozen", "ort", "openvino")  # what `backdrop run --engine auto` can build
LABELS = {"eager": "torch eager", "compile": "torch.compile", "compile-frozen": "torch.compile (frozen)",
          "ort-plain": "onnxruntime (plain export)",
          "ort": "onnxruntime (optimized)", "ort-int8": "onnxruntime int8 (dynamic)", "openvino": "OpenVINO",
          "trt": "TensorRT"}
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "w8a8")
DEFAULT_PRECISIONS = ("fp32", "bf16", "int8")
DEFAULT_ERROR_BUDGET = 2e-2  # the bf16 class
BASELINE = "torch eager fp32"


@dataclass(frozen=True)
class BenchPlan:
    """``backdrop bench``'s options, parsed and checked once."""

    device: Any  # torch.device
    dtype: Any  # torch.dtype the torch UNet is built in (fp32 on the CPU: it is the reference)
    precision: str  # fp32 | fp16 | bf16 (--dtype)
    backends: tuple[str, ...]
    threads: int
    height: int
    width: int
    batch: int
    tokens: int
    seed: int
    rounds: int
    warmup: int
    steps: int
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS
    auto: bool = False
    error_budget: float = DEFAULT_ERROR_BUDGET
    choice_file: Path | None = None
    pipeline: bool = False
    feature_cache: int = 0  # --feature-cache N: DeepCache-style reuse every N steps in the pipeline rows
    fast_scheduler: str = ""  # --fast-scheduler lcm|tcd: an extra few-step pipeline row
    fast_steps: int = 4
    run_emulated: bool = True  # --emulated skip: list emulated precisions (torch bf16 on AVX2) as skipped rows
    pipeline_only: bool = False
    memory_budget: int | None = None  # --memory GIB, in bytes: at most this much more than at the start

    @property
    def latent(self) -> tuple[int, int]:
        return self.height // 8, self.width // 8

    @property
    def rows(self) -> list[tuple[str, str]]:
        """(backend, precision) pairs in report order; eager fp32 (baseline and reference) first."""
        pairs = [("eager", "fp32")]
        for backend in self.backends:
            if backend == "ort-int8":
                pairs.append(("ort", "int8"))
                continue
            pairs += [(backend, p) for p in self.precisions]
        return list(dict.fromkeys(pairs))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BenchPlan:
        import torch

        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InvalidInputError("--device cuda was given, but torch sees no CUDA GPU")
        build = "fp16" if args.dtype == "fp16" and device.type == "cuda" else "fp32"
        dtype = {"fp32": torch.float32, "fp16": torch.float16}[build]
        precisions = _precisions(args.precisions, args.dtype)
        auto = (args.backends or "").strip() == "auto"
        backends = tuple(_backends(None if auto else args.backends, device, auto))
        if args.error_budget is not None and not 0 < args.error_budget < 1:
            raise InvalidInputError(f"--error-budget must be in (0, 1), got {args.error_budget}")
        return cls(device=device, dtype=dtype, precision=args.dtype or "fp32", backends=backends,
                   threads=_threads(args.threads), height=args.height or args.size, width=args.width or args.size,
                   batch=args.batch, tokens=args.tokens, seed=args.seed, rounds=args.rounds, warmup=args.warmup,
                   steps=args.steps, precisions=precisions, auto=auto,
                   error_budget=args.error_budget or DEFAULT_ERROR_BUDGET, choice_file=args.choice_file,
                   pipeline=bool(args.pipeline or args.model or args.pipeline_only), feature_cache=args.feature_cache,
                   fast_scheduler=args.fast_scheduler or "", fast_steps=args.fast_steps,
                   run_emulated=args.emulated == "run", pipeline_only=args.pipeline_only,
                   memory_budget=_memory_budget(args.memory))


def _memory_budget(gib: float | None) -> int | None:
    if gib is None:
        return None
    if not gib > 0:
        raise InvalidInputError(f"--memory must be a positive number of GiB, got {gib}")
    return int(gib * 2**30)


@dataclass
class Exports:
    """Exported models shared by the backends of one run (each built once), in ``work``."""

    work: Path
    built: dict[str, Any] = field(default_factory=dict)


def shipped_unet_config(family: str) -> Path:
    """The UNet config.json shipped for ``family`` (sd15, sdxl) with the inpainting runtime."""
    from ..runtime.inpainting import configs

    return Path(configs.__file__).resolve().parent / family / "unet" / "config.json"


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bench`` on the ``backdrop`` sub-command parser."""
    bench = subparsers.add_parser("bench", help="time the UNet step (and the pipeline) on every backend x precision")
    bench.add_argument("--family", choices=("sd15", "sdxl"), default="sd15", help="UNet architecture (random weights)")
    bench.add_argument("--unet-config", type=Path, default=None,
                       help="diffusers UNet config.json to build instead of the shipped one for --family")
    bench.add_argument("--model", default=None,
                       help="pipeline in models/checkpoints or models/diffusers: use its UNet and also time the "
                            "whole pipeline")
    bench.add_argument("--models-dir", type=Path, default=None, help="ComfyUI-style models folder")
    bench.add_argument("--backends", default=None,
                       help=f"comma list from {','.join(BACKENDS)}, or 'auto' ({','.join(AUTO_CPU)}, then choose "
                            f"the fastest within --error-budget for `backdrop run --engine auto`) (default: CPU "
                            f"{','.join(DEFAULT_CPU)}; GPU {','.join(DEFAULT_GPU)})")
    bench.add_argument("--precisions", default=None,
                       help=f"comma list from {','.join(PRECISIONS)} crossed with every backend (default "
                            f"{','.join(DEFAULT_PRECISIONS)}); unsupported pairs are reported as skipped, with why")
    bench.add_argument("--error-budget", type=float, default=None,
                       help=f"--backends auto: largest max relative error vs fp32 eager (default "
                            f"{DEFAULT_ERROR_BUDGET:g}, the bf16 class)")
    bench.add_argument("--choice-file", type=Path, default=None,
                       help="--backends auto: where the choice goes (default <models dir>/engine_choice.json)")
    bench.add_argument("--batch", type=int, default=2, help="UNet batch (2 = one image with CFG)")
    bench.add_argument("--size", type=int, default=512, help="image side in pixels (latent = size / 8)")
    bench.add_argument("--width", type=int, default=None, help="image width (overrides --size)")
    bench.add_argument("--height", type=int, default=None, help="image height (overrides --size)")
    bench.add_argument("--tokens", type=int, default=77, help="text tokens")
    bench.add_argument("--device", default="cpu", help="cpu or cuda")
    bench.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=None,
                       help="older spelling of --precisions with one value (fp16 builds the torch UNet in fp16 "
                            "on CUDA)")
    bench.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    bench.add_argument("--rounds", type=int, default=5, help="timed interleaved rounds")
    bench.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing (the setup run counts)")
    bench.add_argument("--pipeline", action="store_true",
                       help="also time the whole job (random weights of --family without --model), split by stage")
    bench.add_argument("--pipeline-only", action="store_true",
                       help="time the whole job only (implies --pipeline; no UNet step section)")
    bench.add_argument("--steps", type=int, default=4, help="sampling steps for the pipeline benchmark")
    bench.add_argument("--feature-cache", type=int, default=0, metavar="N",
                       help="pipeline: add rows with the DeepCache-style feature cache, full UNet every N steps")
    bench.add_argument("--fast-scheduler", choices=("lcm", "tcd"), default=None,
                       help="pipeline: add a row with this few-step scheduler (--fast-steps steps)")
    bench.add_argument("--fast-steps", type=int, default=4, help="steps for --fast-scheduler")
    bench.add_argument("--emulated", choices=("run", "skip"), default="run",
                       help="precisions this CPU only emulates (torch bf16 without AVX512_BF16/AMX): run them, or "
                            "list them as skipped rows (one emulated SD1.5 step can take many minutes)")
    bench.add_argument("--memory", type=float, default=None, metavar="GIB",
                       help="use at most this many GiB more than at the start (default: what the machine has "
                            "available); a row whose setup would not fit is skipped and says so")
    bench.add_argument("--seed", type=int, default=0, help="seed for weights and inputs")
    bench.add_argument("--work-dir", type=Path, default=None, help="where exported models go (default: temp)")
    bench.add_argument("--out", type=Path, default=Path("bench-out"), help="report folder (never overwritten)")
    return bench


def run_bench(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args``; prints the table and the report paths."""
    from ..runtime.models import models_dir_locator

    with models_dir_locator(args.models_dir):
        return _run_bench(args)


def _run_bench(args: argparse.Namespace) -> int:
    from ..export.bench import BenchReport, markdown_table, stage_table, write_report

    plan = BenchPlan.from_args(args)
    handle = _load_handle(args) if args.model else None
    flux = handle is not None and handle.is_flux
    if flux:
        unet = None  # the FLUX transformer step is its own section (cli/bench_flux.py)
    elif handle is not None:
        unet = handle.pipe.unet
    elif plan.pipeline_only:
        unet = None  # the pipeline section builds its own
    else:
        unet = build_unet(args.family, args.unet_config, plan.seed, plan.dtype, plan.device)
    machine = _machine()
    settings = {"command": "backdrop " + " ".join(shlex.quote(a) for a in _argv(args)),
                "unet": handle.describe() if handle else f"{args.family} random weights ({_config_name(args)})",
                "batch": plan.batch, "image": f"{plan.width}x{plan.height}", "tokens": plan.tokens,
                "device": str(plan.device), "precisions": list(plan.precisions), "threads": plan.threads,
                "rounds": plan.rounds, "warmup": plan.warmup, "baseline": BASELINE, "machine": machine,
                "versions": _versions(),
                "memory": "in-process VmHWM: peak during setup+first run (and the part over the RSS before "
                          "setup), peak during one timed call"}
    print(f"CPU: {machine['cpu']['model']} — ISA {machine['cpu']['isa']} ({', '.join(machine['cpu']['units'])}); "
          f"threads {plan.threads}\nallocator: {machine['allocator_line']}", file=sys.stderr)
    report = BenchReport(title=f"UNet backends: {settings['unet']}, batch {plan.batch}, {plan.width}x{plan.height}, "
                               f"{machine['cpu']['model']} ({machine['cpu']['isa']})", settings=settings)
    with tempfile.TemporaryDirectory(prefix="backdrop-bench-") as tmp:
        exports = Exports(Path(args.work_dir or tmp))
        if flux:
            from .bench_flux import flux_step

            report.title = report.title.replace("UNet backends", "FLUX transformer backends")
            rows, skipped = flux_step(handle, plan, exports, sys.modules[__name__])
            report.sections["transformer step"], report.skipped["transformer step"] = rows, skipped
            if plan.auto:
                report.notes.append(_choose(rows, plan, settings, args.models_dir))
            report.notes.append("FLUX: the transformer step only (the whole-pipeline rows are for SD pipelines)")
        elif not plan.pipeline_only:
            rows, skipped = _unet_step(unet, plan, exports)
            report.sections["UNet step"], report.skipped["UNet step"] = rows, skipped
            gc.collect()
            if plan.auto:
                report.notes.append(_choose(rows, plan, settings, args.models_dir))
        if plan.pipeline and not flux:
            del exports.built
            exports.built = {}
            gc.collect()
            from ..export.bench_pipeline import pipeline_rows

            report.sections["pipeline"] = pipeline_rows(handle, args.family, plan, exports)
    for name, section in report.sections.items():
        print(f"\n{name}\n" + markdown_table(section, BASELINE, report.skipped.get(name, ())))
        stages = stage_table(section)
        if stages:
            print(stages)
    for note in report.notes:
        print(note)
    paths = write_report(report, args.out)
    print("report: " + ", ".join(str(p) for p in paths.values()))
    return 0


# ------------------------------------------------------------------------------------------- the UNet step

def build_unet(family: str, config_path: Path | None, seed: int, dtype: Any, device: Any) -> Any:
    """A random-weight UNet of the real architecture (shipped config for ``family``, or ``config_path``)."""
    import torch
    from diffusers import UNet2DConditionModel

    path = config_path or shipped_unet_config(family)
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"cannot read the UNet config {path}: {exc}") from exc
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(config).to(device)
    return (unet if dtype == torch.float32 else unet.to(dtype)).eval()


def row_name(backend: str, precision: str) -> str:
    return f"{LABELS[backend]} {precision}"


def support(backend: str, precision: str, plan: BenchPlan) -> tuple[bool, str]:
    """(run it, note or reason): whether this backend x precision runs here, and what to say about it."""
    from ..runtime.engines.precision import native_support

    cuda = plan.device.type == "cuda"
    native, why = native_support(precision) if not cuda else (True, "")
    if precision == "w8a8" and backend != "openvino":
        return False, "w8a8 (static int8, calibrated) is an OpenVINO engine; onnxruntime's int8 row is dynamic"
    if backend in TORCH_BACKENDS:
        if precision == "int8":
            return False, "torch has no int8 UNet path here (OpenVINO or onnxruntime int8 rows cover int8)"
        if precision == "fp16" and not cuda:
            return False, "torch runs fp16 convolutions on the GPU, not on this CPU"
        if precision == "bf16" and not native:
            return (True, f"emulated: {why}") if plan.run_emulated else (False, f"not run (--emulated skip): {why}")
        return True, ""
    if backend in ("ort", "ort-plain"):
        if precision == "int8":
            return (True, "") if backend == "ort" and not cuda else (
                False, "int8 dynamic quantization is a CPU option of the optimized graph")
        if precision == "bf16":
            return False, "onnxruntime's CPU provider has no bf16 convolution kernels"
        if precision == "fp16" and not cuda:
            return False, "onnxruntime's CPU provider runs fp16 graphs by casting to fp32 (no fp16 units)"
        return True, ""
    if backend == "openvino":
        if cuda:
            return False, "OpenVINO rows are CPU rows (--device cpu)"
        try:
            from ..runtime.engines.openvino_backend import import_openvino

            import_openvino()
        except InvalidInputError as exc:
            return False, str(exc)
        return (True, "") if native else (False, why)
    if backend == "trt":
        if not cuda:
            return False, "TensorRT needs --device cuda"
        if precision == "int8":
            return False, "TensorRT int8 needs calibration, which this bench does not do"
        return True, ""
    return False, "unknown backend"


def set_up_row(name: str, note: str, make: Callable[[], tuple[Any, str]], first_call: Callable[[Any], Any],
               probe: Any, skipped: list) -> tuple[Any, Any, dict[str, Any]] | None:
    """Set one bench row up under the memory probe: ``make()`` the backend and run it once (that run gives the
    parity output, warms it up and fixes its kernel report). None, with a skipped row saying why, when it cannot
    run here; else (backend, first output, the setup keyword arguments of its ``Candidate``)."""
    from ..export.bench import Skipped
    from ..runtime.engines.openvino_backend import kernel_note

    print(f"{name}: setting up", file=sys.stderr, flush=True)
    started = time.perf_counter()

    def setup() -> tuple[Any, str, Any]:
        made, notes = make()
        if made is None:
            return None, notes, None
        first = first_call(made)  # the kernel report is of the copy compiled for these shapes
        return made, "; ".join(n for n in (notes, kernel_note(made)) if n), first

    try:
        probed = probe.measure(setup)
    except InvalidInputError as exc:
        skipped.append(Skipped(name, str(exc)))
        print(f"{name}: skipped ({exc})", file=sys.stderr)
        return None
    made, notes, first = probed.result
    if made is None:
        skipped.append(Skipped(name, notes))
        return None
    return made, first, {"setup_s": time.perf_counter() - started, "notes": "; ".join(n for n in (note, notes) if n),
                         "setup_peak_bytes": probed.peak, "setup_extra_bytes": probed.extra,
                         "setup_anon_bytes": probed.anonymous}


def _unet_step(unet: Any, plan: BenchPlan, exports: Exports) -> tuple[list, list]:
    import torch

    from ..export.bench import Candidate, MemoryProbe, Skipped, measure, parity
    from ..export.bench_memory import MemoryGuard
    from ..export.memory_need import fp32_weight_bytes
    from ..export.onnx_export import example_inputs
    from ..runtime.engines.spec import UNetSpec

    spec = UNetSpec.from_unet(unet)
    feeds = example_inputs(spec, batch=plan.batch, latent=plan.latent, tokens=plan.tokens, dtype=torch.float32,
                           device=plan.device, seed=plan.seed)
    call = [feeds.get(n) for n in ("sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids")]
    probe = MemoryProbe()
    guard, weight_bytes = MemoryGuard(plan.memory_budget, probe.rss()), fp32_weight_bytes(unet)
    candidates, skipped, outputs = {}, [], {}
    rows = sorted(plan.rows, key=lambda r: r[0].startswith("compile"))  # compiles last: exports fail fast
    reference = None
    for backend, precision in rows:
        name = row_name(backend, precision)
        ok, note = support(backend, precision, plan)
        if ok and (backend, precision) != ("eager", "fp32"):  # the reference is loaded already
            gc.collect()
            too_big = guard.skip_reason(backend, precision, weight_bytes, probe.rss())
            ok, note = too_big is None, too_big or note
        if not ok:
            print(f"{name}: skipped ({note})", file=sys.stderr)
            skipped.append(Skipped(name, note))
            continue

        def make(backend: str = backend, precision: str = precision) -> tuple[Any, str]:
            return _make_backend(backend, precision, unet, spec, plan, exports)

        row = set_up_row(name, note, make, lambda made: made.run(*call), probe, skipped)
        if row is None:
            continue
        made, first, setup = row
        if (backend, precision) == ("eager", "fp32"):
            reference = first.float().cpu()
        outputs[name] = first
        candidates[(backend, precision)] = Candidate(name, _runner(made, call), backend=backend, precision=precision,
                                                     **setup)
        gc.collect()
    errors = {name: parity(reference, out) for name, out in outputs.items()}
    outputs.clear()
    sync = torch.cuda.synchronize if plan.device.type == "cuda" else None
    ordered = [candidates[r] for r in plan.rows if r in candidates]
    # each backend ran once in its setup (parity and memory came from that run, and it warmed the backend up)
    results = measure(ordered, None, rounds=plan.rounds, warmup=plan.warmup, baseline=BASELINE, sync=sync,
                      on_round=_print_round, probe_calls=False)
    for result in results:
        result.max_abs_error, result.max_rel_error = errors[result.name]
    return results, skipped


def _runner(backend: Any, call: list) -> Callable[[], Any]:
    def run() -> Any:
        return backend.run(*call)

    return run


def _torch_unet(unet: Any, precision: str, exports: Exports) -> Any:
    """The torch UNet in ``precision`` (the fp32 one itself, or a cast copy made once)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if next(unet.parameters()).dtype == dtype:
        return unet
    key = f"torch-{precision}"
    if key not in exports.built:
        exports.built[key] = copy.deepcopy(unet).to(dtype).eval()
    return exports.built[key]


def _make_backend(name: str, precision: str, unet: Any, spec: Any, plan: BenchPlan, exports: Exports
                  ) -> tuple[Any, str]:
    from ..runtime.engines.ort_backend import OrtUNetBackend
    from ..runtime.engines.torch_backend import TorchUNetBackend

    if name == "eager":
        return TorchUNetBackend(_torch_unet(unet, precision, exports)), ""
    if name == "compile":
        return TorchUNetBackend(_torch_unet(unet, precision, exports), compile=True), "compile time in setup"
    if name == "compile-frozen":
        return (TorchUNetBackend(_torch_unet(unet, precision, exports), freeze=True),
                "Inductor freezing: weights constant-folded and prepacked; compile time in setup")
    if name == "openvino":
        return _openvino_backend(unet, spec, precision, plan, exports)
    provider, threads = ("cuda" if plan.device.type == "cuda" else "cpu"), plan.threads
    if provider == "cuda" and name in ("ort", "ort-plain") and not _has_ort_cuda():
        return None, "onnxruntime has no CUDA provider here (pip install onnxruntime-gpu)"
    plain = _plain_export(unet, exports)
    if name == "ort-plain":
        return OrtUNetBackend(plain.path, plain.spec, provider=provider, threads=threads), f"opset {plain.opset}"
    if name == "ort" and precision == "int8":
        from ..export.optimize import quantize_unet_int8

        if "ort-int8" not in exports.built:
            exports.built["ort-int8"] = quantize_unet_int8(
                _optimized(plain, exports, provider, False, plan.latent).path, exports.work / "unet_int8.onnx")
        return (OrtUNetBackend(exports.built["ort-int8"].path, plain.spec, threads=threads),
                "optimized graph, MatMul weights int8 per channel, convs fp32")
    if name == "ort":
        optimized = _optimized(plain, exports, provider, precision == "fp16", plan.latent)
        fused = ", ".join(f"{op} {n}" for op, n in optimized.fused_ops.items())
        return OrtUNetBackend(optimized.path, plain.spec, provider=provider, threads=threads), f"fused: {fused}"
    return _tensorrt_backend(plain, spec, plan, exports, precision)


def _openvino_backend(unet: Any, spec: Any, precision: str, plan: BenchPlan, exports: Exports) -> tuple[Any, str]:
    from ..export.openvino_export import export_unet_openvino
    from ..runtime.engines.openvino_backend import OpenVinoUNetBackend

    key = f"openvino-{precision}"
    if key not in exports.built:
        calibration = None
        if precision == "w8a8":  # inputs of the measured kind, other seeds (the measured input is plan.seed's)
            from ..export.calibration import random_unet_inputs

            calibration = random_unet_inputs(spec, batch=plan.batch, latent=plan.latent, tokens=plan.tokens,
                                             first_seed=plan.seed + 11)
        exports.built[key] = export_unet_openvino(unet, exports.work / f"unet_{precision}.xml", precision=precision,
                                                  calibration=calibration)
        gc.collect()
    exported = exports.built[key]
    backend = OpenVinoUNetBackend(exported.path, spec, precision=precision, threads=plan.threads)
    if precision == "w8a8":
        return backend, exported.weight_compression  # "int8 weights and activations (N calibration inputs)"
    return backend, f"weights {exported.weight_compression}" if exported.weight_compression else ""


def _optimized(plain: Any, exports: Exports, provider: str, fp16: bool, latent: tuple[int, int]) -> Any:
    if "ort" not in exports.built:
        from ..export.optimize import optimize_unet_onnx

        exports.built["ort"] = optimize_unet_onnx(plain.path, exports.work / "unet_optimized.onnx", target=provider,
                                                  fp16=fp16, latent_size=latent)
        gc.collect()
    return exports.built["ort"]


def _plain_export(unet: Any, exports: Exports) -> Any:
    if "plain" not in exports.built:
        from ..export.onnx_export import export_unet_onnx

        exports.built["plain"] = export_unet_onnx(unet, exports.work / "unet.onnx")
        gc.collect()
    return exports.built["plain"]


def _tensorrt_backend(plain: Any, spec: Any, plan: BenchPlan, exports: Exports, precision: str) -> tuple[Any, str]:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return None, "the tensorrt package is not installed"
    from ..export.tensorrt_build import BuildSettings, build_engine
    from ..runtime.engines.profile import ShapeProfile
    from ..runtime.engines.tensorrt_backend import TensorRTUNetBackend

    profile = ShapeProfile.from_resolutions([(plan.width, plan.height)], batch=(plan.batch,) * 3,
                                            tokens=plan.tokens, latent_multiple=spec.latent_multiple)
    started = time.perf_counter()
    engine = build_engine(plain.path, exports.work / f"unet_{precision}.engine", spec, profile,
                          BuildSettings(precision=precision, timing_cache_dir=exports.work))
    built = time.perf_counter() - started
    return TensorRTUNetBackend(engine, spec, device=plan.device), f"{precision}, engine built in {built:.0f}s"


def _has_ort_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


# ------------------------------------------------------------------------------------------ --backends auto

def _choose(rows: list, plan: BenchPlan, settings: dict[str, Any], models_dir: Path | None) -> str:
    """Pick the fastest runnable row within the budget, write the choice file, return a sentence about it."""
    from ..export.engine_choice import (
        RUNNABLE,
        TORCH_RUNNABLE,
        EngineChoice,
        choose,
        default_choice_path,
        write_choice,
    )

    runnable = [{"backend": m.backend, "precision": m.precision, "label": m.name, "p50_s": m.p50_s,
                 "max_rel_error": m.max_rel_error, "speedup": m.speedup} for m in rows
                if m.backend in RUNNABLE or m.backend in TORCH_RUNNABLE]
    best, rejected = choose(runnable, plan.error_budget)
    if best is None:
        return f"auto: no row within the error budget {plan.error_budget:g}; nothing written"
    cpu = settings["machine"]["cpu"]
    choice = EngineChoice(backend=best["backend"], precision=best["precision"], label=best["label"],
                          p50_s=best["p50_s"], speedup=best["speedup"], max_rel_error=best["max_rel_error"],
                          error_budget=plan.error_budget, cpu=cpu, threads=plan.threads,
                          measured=settings["command"], rejected=rejected)
    path = write_choice(choice, plan.choice_file or default_choice_path(models_dir))
    settings["engine_choice"] = choice.to_dict()
    why = f" (faster but rejected: {'; '.join(rejected)})" if rejected else ""
    return (f"auto: {best['label']} is the fastest within a max relative error of {plan.error_budget:g} on "
            f"{cpu['model']} ({best['speedup']:.2f}x eager fp32, error {best['max_rel_error']:.1e}){why}; "
            f"written to {path} for `backdrop run --engine auto`")


# ------------------------------------------------------------------------------------------------ helpers

def _precisions(requested: str | None, dtype: str | None) -> tuple[str, ...]:
    if requested is None:
        return (dtype,) if dtype else DEFAULT_PRECISIONS
    names = [p.strip() for p in requested.split(",") if p.strip()]
    unknown = [p for p in names if p not in PRECISIONS]
    if unknown or not names:
        raise InvalidInputError(f"unknown precisions {unknown}; choose from {', '.join(PRECISIONS)}")
    return tuple(dict.fromkeys(names))


def _backends(requested: str | None, device: Any, auto: bool = False) -> list[str]:
    if auto:
        if device.type == "cuda":
            raise InvalidInputError("--backends auto chooses among CPU engines; use --device cpu")
        return list(AUTO_CPU)
    names = [b.strip() for b in requested.split(",") if b.strip()] if requested else list(
        DEFAULT_GPU if device.type == "cuda" else DEFAULT_CPU)
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        raise InvalidInputError(f"unknown backends {unknown}; choose from {', '.join(BACKENDS)} or auto")
    if names[0] != "eager":
        names = ["eager", *[b for b in names if b != "eager"]]  # eager is the baseline and the reference
    return names


def _threads(requested: int | None) -> int:
    import torch

    from ..runtime.engines.ort_backend import physical_cores

    threads = requested or physical_cores()
    torch.set_num_threads(threads)
    return threads


def _load_handle(args: argparse.Namespace) -> Any:
    from ..runtime.inpainting.loader import load_pipeline, require_unet

    handle = load_pipeline(args.model, device=args.device, dtype="fp32")
    if not handle.is_flux:  # FLUX: the transformer step (cli/bench_flux.py)
        require_unet(handle, "backdrop bench")
    return handle


def _config_name(args: argparse.Namespace) -> str:
    return str(args.unet_config) if args.unet_config else f"shipped {args.family} config"


def _argv(args: argparse.Namespace) -> list[str]:
    argv = sys.argv[1:] if len(sys.argv) > 1 and sys.argv[1] == "bench" else ["bench"]
    if argv == ["bench"]:
        for key, value in sorted(vars(args).items()):
            if key not in ("command", "func") and value is not None and value is not False:
                argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def _machine() -> dict[str, Any]:
    import os

    from ..runtime.allocator import allocator_state
    from ..runtime.engines.openvino_backend import openvino_capabilities
    from ..runtime.engines.precision import cpu_info, torch_cpu_capability

    cpu, allocator = cpu_info(), allocator_state()
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count(), "cpu": cpu.to_dict(),
                            "allocator": allocator.to_dict(), "allocator_line": allocator.describe(),
                            "torch_cpu_capability": torch_cpu_capability(),
                            "openvino_capabilities": list(openvino_capabilities())}
    with contextlib.suppress(OSError):
        info["load_avg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    import torch

    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    versions = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    from importlib.metadata import PackageNotFoundError, version

    for name in ("openvino", "nncf", "tensorrt"):
        with contextlib.suppress(PackageNotFoundError):
            versions[name] = version(name)
    return versions


def _print_round(index: int, times: dict[str, float]) -> None:
    print(f"round {index + 1}: " + ", ".join(f"{k} {v:.3f}s" for k, v in times.items()), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run ``bench`` alone, without the rest of the ``backdrop`` parser (used by benchmarks/ and tests)."""
    parser = argparse.ArgumentParser(prog="backdrop")
    sub = parser.add_subparsers(dest="command", required=True)
    add_bench_parser(sub)
    return run_bench(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
