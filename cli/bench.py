"""``backdrop bench``: the same UNet step (and, with --model, the whole pipeline) on every backend.

Backends: torch eager, torch.compile, onnxruntime on the plain export, onnxruntime on the optimised
graph, onnxruntime int8 (dynamic, MatMul weights), and TensorRT where it is installed with a GPU.
Without --model the UNet has random weights in the real architecture (the shipped SD1.5/SDXL configs),
so the step benchmark needs no model files. Timing is interleaved (export/bench.py); parity is against
fp32 eager. Results go to <out>/bench.json, bench.md and bench.png.
"""

from __future__ import annotations

import argparse
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

BACKENDS = ("eager", "compile", "ort-plain", "ort", "ort-int8", "trt")
DEFAULT_CPU = ("eager", "compile", "ort", "ort-int8")
DEFAULT_GPU = ("eager", "compile", "ort", "trt")
LABELS = {"eager": "torch eager", "compile": "torch.compile", "ort-plain": "onnxruntime (plain export)",
          "ort": "onnxruntime (optimized)", "ort-int8": "onnxruntime int8 (dynamic)", "trt": "TensorRT"}


@dataclass(frozen=True)
class BenchPlan:
    """``backdrop bench``'s options, parsed and checked once."""

    device: Any  # torch.device
    dtype: Any  # torch.dtype
    precision: str  # fp32 | fp16 | bf16
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

    @property
    def latent(self) -> tuple[int, int]:
        return self.height // 8, self.width // 8

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BenchPlan:
        import torch

        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InvalidInputError("--device cuda was given, but torch sees no CUDA GPU")
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
        return cls(device=device, dtype=dtype, precision=args.dtype, backends=tuple(_backends(args.backends, device)),
                   threads=_threads(args.threads), height=args.height or args.size, width=args.width or args.size,
                   batch=args.batch, tokens=args.tokens, seed=args.seed, rounds=args.rounds, warmup=args.warmup,
                   steps=args.steps)


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
    bench = subparsers.add_parser("bench", help="time the UNet step (and the pipeline) on every backend")
    bench.add_argument("--family", choices=("sd15", "sdxl"), default="sd15", help="UNet architecture (random weights)")
    bench.add_argument("--unet-config", type=Path, default=None,
                       help="diffusers UNet config.json to build instead of the shipped one for --family")
    bench.add_argument("--model", default=None,
                       help="pipeline in models/checkpoints or models/diffusers: use its UNet and also time the "
                            "whole pipeline")
    bench.add_argument("--models-dir", type=Path, default=None, help="ComfyUI-style models folder")
    bench.add_argument("--backends", default=None,
                       help=f"comma list from {','.join(BACKENDS)} (default: CPU {','.join(DEFAULT_CPU)}; "
                            f"GPU {','.join(DEFAULT_GPU)})")
    bench.add_argument("--batch", type=int, default=2, help="UNet batch (2 = one image with CFG)")
    bench.add_argument("--size", type=int, default=512, help="image side in pixels (latent = size / 8)")
    bench.add_argument("--width", type=int, default=None, help="image width (overrides --size)")
    bench.add_argument("--height", type=int, default=None, help="image height (overrides --size)")
    bench.add_argument("--tokens", type=int, default=77, help="text tokens")
    bench.add_argument("--device", default="cpu", help="cpu or cuda")
    bench.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32", help="torch precision")
    bench.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    bench.add_argument("--rounds", type=int, default=5, help="timed interleaved rounds")
    bench.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing")
    bench.add_argument("--steps", type=int, default=4, help="sampling steps for the pipeline benchmark")
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
    from ..export.bench import BenchReport, markdown_table, write_report

    plan = BenchPlan.from_args(args)
    handle = _load_handle(args) if args.model else None
    unet = handle.pipe.unet if handle else build_unet(args.family, args.unet_config, plan.seed, plan.dtype,
                                                      plan.device)
    settings = {"command": "backdrop " + " ".join(shlex.quote(a) for a in _argv(args)),
                "unet": handle.describe() if handle else f"{args.family} random weights ({_config_name(args)})",
                "batch": plan.batch, "image": f"{plan.width}x{plan.height}", "tokens": plan.tokens,
                "device": str(plan.device), "dtype": plan.precision, "threads": plan.threads, "rounds": plan.rounds,
                "warmup": plan.warmup, "baseline": LABELS["eager"], "machine": _machine(), "versions": _versions()}
    report = BenchReport(title=f"UNet backends: {settings['unet']}, batch {plan.batch}, {plan.width}x{plan.height}",
                         settings=settings)
    with tempfile.TemporaryDirectory(prefix="backdrop-bench-") as tmp:
        exports = Exports(Path(args.work_dir or tmp))
        report.sections["UNet step"] = _unet_step(unet, plan, exports)
        gc.collect()
        if handle is not None:
            report.sections["pipeline"] = _pipeline(handle, plan, exports)
    for name, rows in report.sections.items():
        print(f"\n{name}\n" + markdown_table(rows, LABELS["eager"]))
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


def _unet_step(unet: Any, plan: BenchPlan, exports: Exports) -> list:
    import torch

    from ..export.bench import Candidate, measure
    from ..export.onnx_export import example_inputs
    from ..runtime.engines.spec import UNetSpec

    spec = UNetSpec.from_unet(unet)
    feeds = example_inputs(spec, batch=plan.batch, latent=plan.latent, tokens=plan.tokens, dtype=plan.dtype,
                           device=plan.device, seed=plan.seed)
    call = [feeds.get(n) for n in ("sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids")]
    reference = _fp32_reference(unet, call, plan.dtype)
    candidates = {}
    for name in sorted(plan.backends, key=lambda b: b == "compile"):  # compile last: exports fail fast, not after it
        started = time.perf_counter()
        backend, notes = _make_backend(name, unet, spec, plan, exports)
        if backend is None:
            print(f"{LABELS[name]}: skipped ({notes})", file=sys.stderr)
            continue
        run = _runner(backend, call)
        if name == "compile":
            run()  # compile now, so compilation is reported as setup and not as a slow first round
        candidates[name] = Candidate(LABELS[name], run, setup_s=time.perf_counter() - started, notes=notes)
        gc.collect()
    sync = torch.cuda.synchronize if plan.device.type == "cuda" else None
    ordered = [candidates[b] for b in plan.backends if b in candidates]
    return measure(ordered, reference, rounds=plan.rounds, warmup=plan.warmup, baseline=LABELS["eager"],
                   sync=sync, on_round=_print_round)


def _runner(backend: Any, call: list) -> Callable[[], Any]:
    def run() -> Any:
        return backend.run(*call)

    return run


def _fp32_reference(unet: Any, call: list, dtype: Any) -> Any:
    """fp32 eager output: the parity reference for every backend."""
    import torch

    from ..runtime.engines.torch_backend import TorchUNetBackend

    if dtype == torch.float32:
        return TorchUNetBackend(unet).run(*call).float().cpu()
    full = copy.deepcopy(unet).float()
    out = TorchUNetBackend(full).run(*[c.float() if c is not None else None for c in call]).cpu()
    del full
    gc.collect()
    return out


def _make_backend(name: str, unet: Any, spec: Any, plan: BenchPlan, exports: Exports) -> tuple[Any, str]:
    from ..runtime.engines.ort_backend import OrtUNetBackend
    from ..runtime.engines.torch_backend import TorchUNetBackend

    if name == "eager":
        return TorchUNetBackend(unet), ""
    if name == "compile":
        return TorchUNetBackend(unet, compile=True), "compile time in setup"
    provider, threads = ("cuda" if plan.device.type == "cuda" else "cpu"), plan.threads
    if provider == "cuda" and name in ("ort", "ort-plain", "ort-int8") and not _has_ort_cuda():
        return None, "onnxruntime has no CUDA provider here (pip install onnxruntime-gpu)"
    plain = _plain_export(unet, exports)
    if name == "ort-plain":
        return OrtUNetBackend(plain.path, plain.spec, provider=provider, threads=threads), f"opset {plain.opset}"
    if name == "ort":
        optimized = _optimized(plain, exports, provider, plan.precision == "fp16", plan.latent)
        fused = ", ".join(f"{op} {n}" for op, n in optimized.fused_ops.items())
        return OrtUNetBackend(optimized.path, plain.spec, provider=provider, threads=threads), f"fused: {fused}"
    if name == "ort-int8":
        from ..export.optimize import quantize_unet_int8

        if provider != "cpu":
            return None, "int8 dynamic quantization is a CPU option"
        if "int8" not in exports.built:
            exports.built["int8"] = quantize_unet_int8(_optimized(plain, exports, provider, False, plan.latent).path,
                                                       exports.work / "unet_int8.onnx")
        return (OrtUNetBackend(exports.built["int8"].path, plain.spec, threads=threads),
                "optimized graph, MatMul weights int8 per channel, convs fp32")
    return _tensorrt_backend(plain, spec, plan, exports)


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


def _tensorrt_backend(plain: Any, spec: Any, plan: BenchPlan, exports: Exports) -> tuple[Any, str]:
    if plan.device.type != "cuda":
        return None, "TensorRT needs --device cuda"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return None, "the tensorrt package is not installed"
    from ..export.tensorrt_build import BuildSettings, build_engine
    from ..runtime.engines.profile import ShapeProfile
    from ..runtime.engines.tensorrt_backend import TensorRTUNetBackend

    profile = ShapeProfile.from_resolutions([(plan.width, plan.height)], batch=(plan.batch,) * 3,
                                            tokens=plan.tokens, latent_multiple=spec.latent_multiple)
    precision = "bf16" if plan.precision == "bf16" else "fp16"
    started = time.perf_counter()
    engine = build_engine(plain.path, exports.work / "unet.engine", spec, profile,
                          BuildSettings(precision=precision, timing_cache_dir=exports.work))
    built = time.perf_counter() - started
    return TensorRTUNetBackend(engine, spec, device=plan.device), f"{precision}, engine built in {built:.0f}s"


def _has_ort_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


# --------------------------------------------------------------------------------------- the full pipeline

def _pipeline(handle: Any, plan: BenchPlan, exports: Exports) -> list:
    import numpy as np
    import torch

    from ..export.bench import Candidate, measure
    from ..runtime.engines.adapter import BackendUNet
    from ..runtime.engines.spec import UNetSpec
    from ..runtime.inpainting.loras import activated

    height, width = plan.height, plan.width
    image = torch.linspace(0, 1, 3 * height * width).reshape(1, 3, height, width)
    mask = torch.zeros(1, 1, height, width)
    mask[..., height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 1.0

    def runner(pipe: Any) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                out = pipe(prompt="a product on a marble table", negative_prompt="blurry", image=image,
                           mask_image=mask, height=height, width=width, num_inference_steps=plan.steps,
                           guidance_scale=7.0, generator=torch.Generator("cpu").manual_seed(plan.seed),
                           output_type="np")
            return np.asarray(out.images)

        return run

    candidates = []
    spec = UNetSpec.from_unet(handle.pipe.unet)
    with activated(handle) as base_pipe:
        for name in plan.backends:
            started = time.perf_counter()
            if name == "eager":
                pipe, notes = base_pipe, ""
            else:
                backend, notes = _make_backend(name, handle.pipe.unet, spec, plan, exports)
                if backend is None:
                    continue
                pipe = handle.with_unet(BackendUNet(backend, dtype=handle.dtype, device=handle.device)).pipe
            run = runner(pipe)
            if name == "compile":
                run()
            candidates.append(Candidate(LABELS[name], run, setup_s=time.perf_counter() - started, notes=notes))
        reference = candidates[0].run() if candidates and candidates[0].name == LABELS["eager"] else None
        return measure(candidates, reference, rounds=max(1, plan.rounds // 2), warmup=1, baseline=LABELS["eager"],
                       on_round=_print_round)


# ------------------------------------------------------------------------------------------------ helpers

def _backends(requested: str | None, device: Any) -> list[str]:
    names = [b.strip() for b in requested.split(",") if b.strip()] if requested else list(
        DEFAULT_GPU if device.type == "cuda" else DEFAULT_CPU)
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        raise InvalidInputError(f"unknown backends {unknown}; choose from {', '.join(BACKENDS)}")
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
    from ..runtime.inpainting.loader import load_pipeline

    return load_pipeline(args.model, device=args.device, dtype=args.dtype)


def _config_name(args: argparse.Namespace) -> str:
    return str(args.unet_config) if args.unet_config else f"shipped {args.family} config"


def _argv(args: argparse.Namespace) -> list[str]:
    argv = sys.argv[1:] if len(sys.argv) > 1 and sys.argv[1] == "bench" else ["bench"]
    if argv == ["bench"]:
        for key, value in sorted(vars(args).items()):
            if key not in ("command", "func") and value is not None:
                argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def _machine() -> dict[str, Any]:
    import os

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["load_avg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        pass
    import torch

    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    versions = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    try:
        import tensorrt

        versions["tensorrt"] = tensorrt.__version__
    except ImportError:
        pass
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
