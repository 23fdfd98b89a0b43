"""Peak memory of an engine export alone, then of loading it and one call, as multiples of the UNet's fp32 weights.

``export_engine``'s memory check (export/memory_need.py) compares these multiples with what the machine has left.
Each case runs in a process of its own, so that one export's freed pages or caches do not flatter the next: it
builds the random-weight UNet of the family's real architecture, exports it into a temporary folder, then opens the
engine and makes one UNet call (512 px, batch 2), and reports the peak of its anonymous memory over its value before
each of the two (``export.bench.AnonymousPeak``).

    .venv/bin/python benchmarks/probe_export_memory.py --family sd15 --cases openvino:fp32 openvino:int8
    .venv/bin/python benchmarks/probe_export_memory.py --cases openvino:fp32 --export-only --trace-check both --repeat 2
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = ("openvino:fp32", "openvino:bf16", "openvino:int8", "openvino:w8a8", "onnx:fp32", "onnx-cpu:fp32")


def _label(case: str, trace_check: bool) -> str:
    return case + (" (trace check)" if trace_check else "")


def _child(family: str, case: str, load: bool = True, trace_check: bool = False) -> dict:
    import gc

    import torch

    from comfyui_backdrop.cli.bench import build_unet
    from comfyui_backdrop.export import openvino_export
    from comfyui_backdrop.export.bench import AnonymousPeak
    from comfyui_backdrop.export.engine_export import BaseIdentity, EngineRequest, export_engine
    from comfyui_backdrop.export.memory_need import fp32_weight_bytes
    from comfyui_backdrop.export.onnx_export import example_inputs
    from comfyui_backdrop.runtime.engines.load import open_backend
    from comfyui_backdrop.runtime.engines.spec import UNetSpec

    openvino_export.TRACE_CHECK = trace_check
    fmt, _, precision = case.partition(":")
    request = EngineRequest(format="onnx" if fmt.startswith("onnx") else fmt, precision=precision,
                            optimize_for="cpu" if fmt == "onnx-cpu" else "")
    unet = build_unet(family, None, 0, torch.float32, torch.device("cpu"))
    weight_bytes = fp32_weight_bytes(unet)
    feeds = example_inputs(UNetSpec.from_unet(unet), batch=2, latent=(64, 64), dtype=torch.float32)
    gc.collect()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        with AnonymousPeak() as export:
            built = export_engine(unet, BaseIdentity("probe", "probe"), request, folder, memory_limit=math.inf)
        seconds = time.perf_counter() - start
        row = {"case": _label(case, trace_check), "weight_bytes": weight_bytes,
               "export_bytes": export.extra, "export_factor": export.extra / weight_bytes,
               "export_s": round(seconds, 1)}
        if load:
            gc.collect()
            with AnonymousPeak() as opened:
                open_backend(built.path, threads=2).run(**feeds)
            row.update(load_bytes=opened.extra, load_factor=opened.extra / weight_bytes)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="sd15")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--export-only", action="store_true",
                        help="do not open the engine (where the torch model and the engine would not fit together)")
    parser.add_argument("--trace-check", choices=("off", "on", "both"), default="off",
                        help="OpenVINO conversions with torch.jit.trace's check (OpenVINO's default; off: the "
                             "exports' way); both: each case with and without, alternately")
    parser.add_argument("--repeat", type=int, default=1, help="run the list of cases this many times")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.family, args.child, load=not args.export_only,
                                trace_check=args.trace_check == "on")))
        return 0
    rows = []
    checks = {"off": ["off"], "on": ["on"], "both": ["on", "off"]}[args.trace_check]
    for case, check in ((c, k) for _ in range(args.repeat) for c in args.cases for k in checks):
        done = subprocess.run([sys.executable, __file__, "--family", args.family, "--child", case,
                               "--trace-check", check, *(["--export-only"] if args.export_only else [])],
                              capture_output=True, text=True)
        if done.returncode:
            rows.append({"case": _label(case, check == "on"), "error": done.stderr.strip().splitlines()[-1:]})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
