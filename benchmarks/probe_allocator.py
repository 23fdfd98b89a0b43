"""The allocator settings of the ``backdrop`` command (runtime/allocator.py) against glibc's stock ones.

Every measurement runs in a fresh process (malloc settings and torch's huge-page switch act at start), the
policies alternate within each round (stock, tuned, then tuned, stock, ...), and the ratio is taken per round:
    .venv/bin/python benchmarks/probe_allocator.py --repeat 3
    .venv/bin/python benchmarks/probe_allocator.py --workloads vae-decode --repeat 5 \
        --preload /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4

Workloads (random weights of the real SD1.5 architecture, 512 px, CPU): ``unet-fp32`` / ``unet-bf16`` (one
step, batch 2 = one image with CFG), ``vae-decode`` / ``vae-encode`` (fp32, one image), ``lora-train``
(forward + backward of the UNet with a peft LoRA on its attention, batch 1); ``watermark-embed`` /
``watermark-detect`` (one call: the watermark codec on six scikit-image photos at ``--watermark-side`` px, each
with its own ID; detect reads the marked and the unmarked ones; one thread, as the codec's own benchmark; torch
is not imported). Each child times a warm-up call and ``--calls`` more and reports the median, its system CPU
time, minor page faults and peak RSS (VmHWM). The photos are decoded in the parent and handed over as a .npy
file, so the child's heap holds only what the workload does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOADS = ("unet-fp32", "unet-bf16", "vae-decode", "vae-encode", "lora-train", "watermark-embed",
             "watermark-detect")
WATERMARK_KEY = b"probe-allocator-watermark-key-00"


def child(workload: str, calls: int, threads: int) -> dict:
    """Time ``workload`` in this (fresh) process after the policy in $BACKDROP_ALLOCATOR."""
    from comfyui_backdrop.runtime.allocator import tune_allocator

    state = tune_allocator()
    if workload.startswith("watermark"):
        call = _watermark_call(workload)
        return _timed(call, calls, state)
    import torch

    from comfyui_backdrop.cli.bench import build_unet
    from comfyui_backdrop.runtime.inpainting.single_file import CONFIGS_DIR

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if workload.startswith("unet"):
        dtype = torch.bfloat16 if workload == "unet-bf16" else torch.float32
        unet = build_unet("sd15", None, 0, dtype, torch.device("cpu"))
        x, e = torch.randn(2, 9, 64, 64, dtype=dtype), torch.randn(2, 77, 768, dtype=dtype)
        t = torch.tensor([500, 500])
        call, grad = (lambda: unet(x, t, encoder_hidden_states=e).sample), False
    elif workload.startswith("vae"):
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_config(json.loads((CONFIGS_DIR / "sd15" / "vae" / "config.json").read_text())).eval()
        if workload == "vae-decode":
            z = torch.randn(1, 4, 64, 64)
            call = lambda: vae.decode(z).sample  # noqa: E731
        else:
            image = torch.rand(1, 3, 512, 512) * 2 - 1
            call = lambda: vae.encode(image).latent_dist.mean  # noqa: E731
        grad = False
    else:
        from peft import LoraConfig

        unet = build_unet("sd15", None, 0, torch.float32, torch.device("cpu"))
        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=8, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        unet.train()
        x, e = torch.randn(1, 9, 64, 64), torch.randn(1, 77, 768)
        t = torch.tensor([500])

        def call():
            unet(x, t, encoder_hidden_states=e).sample.square().mean().backward()
            unet.zero_grad(set_to_none=True)
        grad = True
    with torch.inference_mode(not grad):
        return _timed(call, calls, state)


def _watermark_call(workload: str):
    """Embed (or detect) on the photos the parent left in $PROBE_PHOTOS, one thread."""
    import cv2
    import numpy as np

    from comfyui_backdrop.runtime.watermark import detect, embed

    cv2.setNumThreads(1)
    photos = list(np.load(os.environ["PROBE_PHOTOS"]))
    if workload == "watermark-embed":
        return lambda: [embed(photo, 1000 + i, WATERMARK_KEY) for i, photo in enumerate(photos)]
    marked = [embed(photo, 1000 + i, WATERMARK_KEY) for i, photo in enumerate(photos)]
    return lambda: [detect(image, WATERMARK_KEY) for image in marked + photos]


def _timed(call, calls: int, state) -> dict:
    """Median of ``calls`` timed calls after a warm-up, with system time, faults and peak RSS."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    times = []
    for _ in range(calls + 1):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    hwm = next((int(line.split()[1]) << 10 for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmHWM:")), 0)
    return {"median_s": statistics.median(times[1:]), "warmup_s": times[0], "sys_s": after.ru_stime - before.ru_stime,
            "minor_faults": after.ru_minflt - before.ru_minflt, "peak_rss_gib": hwm / 2**30,
            "allocator": state.describe()}


def _watermark_photos(folder: Path, side: int) -> Path:
    """The six photos at ``side`` px, decoded here once, as one .npy file for the children."""
    import cv2
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.fixtures.watermark_images import SPEED_PHOTOS, skimage_photo

    path = folder / "probe_allocator_photos.npy"
    np.save(path, np.stack([cv2.resize(skimage_photo(name), (side, side), interpolation=cv2.INTER_AREA)
                            for name in SPEED_PHOTOS]))
    return path


def run_case(workload: str, policy: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, BACKDROP_ALLOCATOR="stock" if policy == "preload" else policy)
    if workload.startswith("watermark"):
        env.update(PROBE_PHOTOS=str(args.photos), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if policy == "preload":
        env["LD_PRELOAD"] = args.preload
    env.pop("GLIBC_TUNABLES", None)  # the policy decides, not this shell
    done = subprocess.run([sys.executable, __file__, "--child", workload, "--calls", str(args.calls),
                           "--threads", str(args.threads)], env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"failed": f"rc {done.returncode}: {done.stderr.strip().splitlines()[-1:] or ''}"}
    return json.loads(lines[-1])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS[:4]))
    parser.add_argument("--repeat", type=int, default=3, help="rounds (each runs every policy once)")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per process, after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preload", help="also run with this malloc library in LD_PRELOAD (tcmalloc, jemalloc)")
    parser.add_argument("--watermark-side", type=int, default=512, help="side (px) of the watermark workloads' photos")
    parser.add_argument("--out", type=Path, help="write every measurement to this JSON file")
    parser.add_argument("--child", choices=WORKLOADS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.calls, args.threads)))
        return 0
    policies = ["stock", "tuned"] + (["preload"] if args.preload else [])
    if any(w.startswith("watermark") for w in args.workloads):
        scratch = tempfile.TemporaryDirectory(prefix="probe_allocator_")
        args.photos = _watermark_photos(Path(scratch.name), args.watermark_side)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"CPU: {cpu}; threads {args.threads}; {args.repeat} rounds x {args.calls} calls", flush=True)
    results: dict[str, dict[str, list[dict]]] = {w: {p: [] for p in policies} for w in args.workloads}
    for round_ in range(args.repeat):
        for workload in args.workloads:
            order = policies if round_ % 2 == 0 else policies[::-1]
            for policy in order:
                result = run_case(workload, policy, args)
                results[workload][policy].append(result)
                shown = (f"{result['median_s']:.3f} s, sys {result['sys_s']:.1f} s, "
                         f"{result['minor_faults']} faults, peak {result['peak_rss_gib']:.2f} GiB"
                         if "median_s" in result else result["failed"])
                print(f"round {round_ + 1} {workload} {policy}: {shown}", flush=True)
    print("\n| workload | policy | median s | per-round speed-up vs stock | sys s | minor faults | peak RSS GiB |")
    print("|---|---|---:|---|---:|---:|---:|")
    for workload, by_policy in results.items():
        stock = [r.get("median_s") for r in by_policy["stock"]]
        for policy, rows in by_policy.items():
            ok = [r for r in rows if "median_s" in r]
            if not ok:
                print(f"| {workload} | {policy} | failed: {rows[0]['failed'] if rows else ''} | | | | |")
                continue
            ratios = [f"{s / r['median_s']:.2f}x" for s, r in zip(stock, rows, strict=True)
                      if s and "median_s" in r]
            print(f"| {workload} | {policy} | {statistics.median(r['median_s'] for r in ok):.3f} | "
                  f"{' / '.join(ratios)} | {statistics.median(r['sys_s'] for r in ok):.1f} | "
                  f"{int(statistics.median(r['minor_faults'] for r in ok))} | "
                  f"{max(r['peak_rss_gib'] for r in ok):.2f} |")
    if args.out:
        args.out.write_text(json.dumps({"cpu": cpu, "threads": args.threads, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
