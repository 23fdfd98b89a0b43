"""Benchmark for issues 8 and 15: exported engines against torch on an SD1.5-architecture UNet step (and the job).

Run (CPU target: random weights, 64x64 latent = 512 px, batch 2, every backend x precision):
    .venv/bin/python benchmarks/bench_export.py --threads 2 --rounds 3
Whole job as well (20 steps, one 512 px image with CFG, split by stage; adds minutes):
    .venv/bin/python benchmarks/bench_export.py --threads 2 --rounds 3 --pipeline --steps 20 --feature-cache 3
GPU target (TensorRT fp16 vs torch fp16 eager, 512 px, batch 2):
    .venv/bin/python benchmarks/bench_export.py --device cuda --dtype fp16
Extra arguments go to `backdrop bench` (for example --backends eager,openvino --precisions fp32,int8).
Reports land in bench-out/export/ as JSON, markdown and PNG; the verdicts on issue 15's targets are printed
with the CPU they were measured on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from comfyui_backdrop.cli.bench import TORCH_BACKENDS, add_bench_parser, row_name, run_bench
from comfyui_backdrop.runtime.allocator import tune_allocator

OUT = Path("bench-out") / "export"
ERROR = {"fp32": 1e-4, "bf16": 2e-2}


def best_within(rows: dict[str, dict], budget: float, exported_only: bool = True) -> dict | None:
    """The fastest row within ``budget`` (exported engines only, unless asked otherwise)."""
    ok = [r for r in rows.values() if r["max_rel_error"] is not None and r["max_rel_error"] <= budget
          and (not exported_only or r["backend"] not in TORCH_BACKENDS)]
    return min(ok, key=lambda r: r["p50_s"]) if ok else None


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv: list[str]) -> int:
    tune_allocator()  # as the `backdrop` command does (BACKDROP_ALLOCATOR=stock: plain torch's allocator)
    parser = argparse.ArgumentParser(prog="bench_export")
    sub = parser.add_subparsers(dest="command", required=True)
    add_bench_parser(sub)
    args = parser.parse_args(["bench", "--family", "sd15", "--batch", "2", "--size", "512", "--out", str(OUT), *argv])
    before = set(args.out.glob("bench*.json")) if args.out.is_dir() else set()
    code = run_bench(args)
    new = sorted(set(args.out.glob("bench*.json")) - before, key=lambda p: p.stat().st_mtime)
    if code or not new:
        return code or 1
    report = json.loads(new[-1].read_text())
    cpu = report["settings"]["machine"]["cpu"]
    rows = {r["name"]: r for r in report["sections"].get("UNet step", [])}
    print(f"\ntargets, measured on {cpu['model']} ({cpu['isa']}: {', '.join(cpu['units'])}), "
          f"{report['settings']['threads']} threads:")
    if args.device == "cpu" and rows:
        eager = rows["torch eager fp32"]
        fp32 = best_within(rows, ERROR["fp32"])
        if fp32:
            print(f"  fp32 class: {fp32['name']} {fp32['speedup']:.2f}x eager fp32 (target >= 1.3x) "
                  f"{verdict(fp32['speedup'] >= 1.3)}, error {fp32['max_rel_error']:.1e} (<= 1e-4)")
        bf16 = best_within(rows, ERROR["bf16"])
        eager_bf16 = rows.get("torch eager bf16")
        compiled = [rows[n] for n in (row_name(b, "bf16") for b in ("compile", "compile-frozen")) if n in rows]
        compile_bf16 = min(compiled, key=lambda r: r["p50_s"]) if compiled else None  # the faster compile
        if bf16 and eager_bf16:
            ratio = eager_bf16["p50_s"] / bf16["p50_s"]
            emulated = " (torch bf16 is emulated here: no bf16 unit)" if "emulated" in eager_bf16["notes"] else ""
            print(f"  bf16 class: {bf16['name']} {ratio:.2f}x torch eager bf16 (target >= 1.5x) "
                  f"{verdict(ratio >= 1.5)}, error {bf16['max_rel_error']:.1e} (<= 2e-2){emulated}")
            if compile_bf16:
                print(f"  bf16 class vs {compile_bf16['name']}: {compile_bf16['p50_s'] / bf16['p50_s']:.2f}x "
                      f"{verdict(compile_bf16['p50_s'] > bf16['p50_s'])}")
        gib = 1 << 30
        model = eager.get("setup_peak_bytes") or 0
        own = {r["name"]: (r.get("setup_extra_bytes") or 0) + model for r in rows.values()}
        worst = max(own, key=own.get)
        anonymous = rows[worst].get("setup_anon_bytes")
        without = f"; {(anonymous + model) / gib:.1f} GiB without file-backed pages" if anonymous is not None else ""
        print(f"  memory: the largest need is {worst}, {own[worst] / gib:.1f} GiB (its own peak over what was loaded, "
              f"plus the fp32 torch model it is built from; target <= 16 GB{without}) "
              f"{verdict(own[worst] <= 16 * 1e9)}")
    elif "TensorRT fp16" in rows:
        trt = rows["TensorRT fp16"]
        print(f"  TensorRT p50: {trt['p50_s'] * 1e3:.2f} ms (target <= 8 ms) {verdict(trt['p50_s'] <= 0.008)}")
        print(f"  TensorRT vs torch eager: {trt['speedup']:.2f}x (target >= 2x) {verdict(trt['speedup'] >= 2)}")
    if "pipeline" in report["sections"]:
        pipe = {r["name"]: r for r in report["sections"]["pipeline"]}
        base = next(iter(pipe.values()))
        # the target compares backends on the same full schedule; the feature cache and few-step rows change it
        schedule = base["name"].rsplit(", ", 1)[-1]  # "20 steps"
        full = [r for r in pipe.values()
                if "feature cache" not in r["name"] and r["name"].rsplit(", ", 1)[-1] == schedule]
        best = max(full, key=lambda r: r["speedup"] or 0)
        print(f"  whole job: {best['name']} {best['speedup']:.2f}x the fp32 eager pipeline (target >= 4x) "
              f"{verdict(best['speedup'] >= 4)}; image difference {best['max_abs_error']:.3f}; baseline "
              f"{base['p50_s']:.1f} s")
        for row in pipe.values():
            if row not in full:
                print(f"  not the same schedule: {row['name']} {row['speedup']:.2f}x, difference against the full "
                      f"schedule {row['max_abs_error']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
