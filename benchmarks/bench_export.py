"""Benchmark for issue 8: the exported UNet path against torch, on an SD1.5-architecture UNet step.

Run (CPU target: random weights, 64x64 latent = 512 px, batch 2):
    .venv/bin/python benchmarks/bench_export.py
GPU target (TensorRT fp16 vs torch fp16 eager, 512 px, batch 2):
    .venv/bin/python benchmarks/bench_export.py --device cuda --dtype fp16
Extra arguments go to `backdrop bench` (for example --rounds 7 or --backends eager,ort-int8).
Reports land in bench-out/export/ as JSON, markdown and PNG; the verdicts on the targets are printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from comfyui_backdrop.cli.bench import add_bench_parser, run_bench

OUT = Path("bench-out") / "export"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_export")
    sub = parser.add_subparsers(dest="command", required=True)
    add_bench_parser(sub)
    args = parser.parse_args(["bench", "--family", "sd15", "--batch", "2", "--size", "512", "--out", str(OUT), *argv])
    before = set(args.out.glob("bench*.json")) if args.out.is_dir() else set()
    code = run_bench(args)
    new = sorted(set(args.out.glob("bench*.json")) - before, key=lambda p: p.stat().st_mtime)
    if code or not new:
        return code or 1
    rows = {r["name"]: r for r in json.loads(new[-1].read_text())["sections"]["UNet step"]}
    print("\ntargets:")
    if args.device == "cpu":
        ort, compiled = rows.get("onnxruntime (optimized)"), rows.get("torch.compile")
        if ort:
            print(f"  ORT optimized vs eager: {ort['speedup']:.2f}x (target >= 1.5x) "
                  f"{'PASS' if ort['speedup'] >= 1.5 else 'MISS'}")
            print(f"  fp32 relative error: {ort['max_rel_error']:.2e} (target <= 1e-4) "
                  f"{'PASS' if ort['max_rel_error'] <= 1e-4 else 'MISS'}")
        if ort and compiled:
            beats = ort["speedup"] > compiled["speedup"]
            print(f"  ORT optimized vs torch.compile: {ort['speedup'] / compiled['speedup']:.2f}x "
                  f"{'PASS' if beats else 'MISS'}")
        if "onnxruntime int8 (dynamic)" in rows:
            q = rows["onnxruntime int8 (dynamic)"]
            print(f"  int8 (option): {q['speedup']:.2f}x, relative error {q['max_rel_error']:.2e}")
    elif "TensorRT" in rows:
        trt = rows["TensorRT"]
        verdict = "PASS" if trt["p50_s"] <= 0.008 else "MISS"
        print(f"  TensorRT p50: {trt['p50_s'] * 1e3:.2f} ms (target <= 8 ms) {verdict}")
        print(f"  TensorRT vs torch eager: {trt['speedup']:.2f}x (target >= 2x) "
              f"{'PASS' if trt['speedup'] >= 2 else 'MISS'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
