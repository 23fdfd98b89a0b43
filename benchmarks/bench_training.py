"""Benchmark: LoRA training steps per second and peak memory (not collected by pytest).

    python benchmarks/bench_training.py [--arch tiny|sd15] [--resolution 64] [--steps 20] [--batch-size 1]
                                   [--device auto] [--threads 0]

``tiny`` is the test model; ``sd15`` the real SD1.5-inpainting architecture (shipped configs, random
weights). The first ``--warmup`` steps are excluded from the rate. On CUDA, peak memory is
``torch.cuda.max_memory_allocated``; on the CPU it is the process's peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--mixed-precision", choices=("auto", "no", "fp16", "bf16"), default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from comfyui_backdrop.runtime.devices import resolve_device
    from comfyui_backdrop.runtime.inpainting.loader import LoadedPipeline
    from comfyui_backdrop.runtime.training.dataset import prepare_dataset
    from comfyui_backdrop.runtime.training.trainer import TrainConfig, train_lora
    from tests.bench_inpaint import build_pipeline
    from tests.fixtures.inpaint_fixtures import write_tiny_tokenizer
    from tests.fixtures.training_fixtures import write_product_folder

    tmp = Path(tempfile.mkdtemp())
    device = torch.device(resolve_device(args.device))
    pipe = build_pipeline(args.arch, write_tiny_tokenizer(tmp / "tok"))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    handle = LoadedPipeline(pipe=pipe, family="sd15", name=args.arch, fingerprint="bench", device=device, dtype=dtype)
    side = max(96, args.resolution)
    entries = prepare_dataset(write_product_folder(tmp / "photos", count=4, height=side, width=side)).entries

    stamps: list[float] = []
    config = TrainConfig(steps=args.warmup + args.steps, rank=args.rank, resolution=args.resolution,
                         batch_size=args.batch_size, learning_rate=1e-4, mixed_precision=args.mixed_precision)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def stamp(done: int, total: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    result = train_lora(handle, entries, config, progress=stamp)
    timed = stamps[args.warmup:]
    rate = (len(timed) - 1) / (timed[-1] - timed[0])
    if device.type == "cuda":
        peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB CUDA (max_memory_allocated)"
        where = torch.cuda.get_device_name()
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB process RSS"
        where = f"CPU, torch threads {torch.get_num_threads()}"
    lora_params = sum(v.numel() for v in result.lora.values())
    print(f"\n{args.arch} UNet, {args.resolution}px, batch {args.batch_size}, rank {args.rank} "
          f"({lora_params / 1e6:.2f} M LoRA parameters), {where}")
    print(f"steps/s: {rate:.2f} (over {len(timed) - 1} steps after {args.warmup} warm-up)")
    print(f"peak memory: {peak}")
    print(f"loss first/last: {result.losses[0]:.4f} / {result.losses[-1]:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
