"""Benchmark: BackdropInpaint's wrapper overhead over a bare diffusers call on the same model, and peak memory.

    python benchmarks/bench_inpaint.py [--arch sd15|tiny] [--resolution 256] [--steps 4] [--rounds 3]

``sd15`` builds the real SD1.5-inpainting architecture (shipped configs, random weights); ``tiny``
the test model (the worst case for relative overhead). Both calls run at the same working size with
the same seed; rounds are interleaved (bare, wrapper, bare, ...) and the first of each is a warm-up.
The wrapper adds mask planning, crop/resize, seam colour match and the exact composite.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_pipeline(arch: str, tokenizer_dir: Path):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from comfyui_backdrop.runtime.inpainting.single_file import CONFIGS_DIR
    from tests.fixtures.inpaint_fixtures import build_tiny_pipeline

    if arch == "tiny":
        return build_tiny_pipeline("sd15", tokenizer_dir)
    cfg = CONFIGS_DIR / "sd15"
    tokenizer = CLIPTokenizer(str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"),
                              pad_token="<|endoftext|>", model_max_length=77)
    text = json.loads((cfg / "text_encoder" / "config.json").read_text())
    text["vocab_size"] = len(tokenizer)
    torch.manual_seed(0)
    return StableDiffusionInpaintPipeline(
        vae=AutoencoderKL.from_config(AutoencoderKL.load_config(cfg / "vae")),
        text_encoder=CLIPTextModel(CLIPTextConfig(**text)), tokenizer=tokenizer,
        unet=UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg / "unet")),
        scheduler=EulerDiscreteScheduler.from_config(EulerDiscreteScheduler.load_config(cfg / "scheduler")),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=("sd15", "tiny"), default="sd15")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from comfyui_backdrop.runtime.inpainting.generate import InpaintSettings, _inpaint_one, _set_scheduler
    from comfyui_backdrop.runtime.inpainting.geometry import plan_canvas
    from comfyui_backdrop.runtime.inpainting.loader import LoadedPipeline
    from tests.fixtures.images import studio_product_photo
    from tests.fixtures.inpaint_fixtures import write_tiny_tokenizer

    tokenizer_dir = write_tiny_tokenizer(Path(tempfile.mkdtemp()) / "tok")
    pipe = build_pipeline(args.arch, tokenizer_dir)
    pipe.set_progress_bar_config(disable=True)
    handle = LoadedPipeline(pipe=pipe, family="sd15", name=args.arch, fingerprint="bench",
                            device=torch.device("cpu"), dtype=torch.float32)
    photo, truth = studio_product_photo(389, 517, seed=3)
    image, mask = photo.astype(np.float32) / 255.0, truth.astype(np.float32)
    settings = InpaintSettings(prompt="a marble table, soft light", steps=args.steps, resolution=args.resolution,
                               seed=1)
    _set_scheduler(handle, pipe, settings.scheduler)
    plan = plan_canvas(mask < 0.5, (0, 0), mask.shape, args.resolution)
    import cv2

    work = cv2.resize(image, (plan.content_w, plan.content_h), interpolation=cv2.INTER_AREA)
    work = cv2.copyMakeBorder(work, 0, plan.work_h - plan.content_h, 0, plan.work_w - plan.content_w,
                              cv2.BORDER_REPLICATE)
    work_mask = cv2.resize((mask < 0.5).astype(np.float32), (plan.content_w, plan.content_h))
    work_mask = cv2.copyMakeBorder(work_mask, 0, plan.work_h - plan.content_h, 0, plan.work_w - plan.content_w,
                                   cv2.BORDER_CONSTANT, value=1.0) > 0.5
    bare_image = torch.from_numpy(np.ascontiguousarray(work.transpose(2, 0, 1)))[None]
    bare_mask = torch.from_numpy(work_mask.astype(np.float32))[None, None]

    def bare() -> None:
        with torch.inference_mode():
            pipe(prompt=settings.prompt, image=bare_image, mask_image=bare_mask, height=plan.work_h,
                 width=plan.work_w, num_inference_steps=settings.steps, guidance_scale=settings.cfg,
                 generator=[torch.Generator("cpu").manual_seed(1)], output_type="np")

    wrapper_numpy_peak = [0]
    own_work: list[float] = []  # wrapper time spent outside the diffusers call: noise-free overhead
    from comfyui_backdrop.runtime.inpainting import generate

    inner = generate._run_pipeline

    def timed_pipeline(*a, **k):
        start = time.perf_counter()
        out = inner(*a, **k)
        timed_pipeline.seconds = time.perf_counter() - start
        return out

    generate._run_pipeline = timed_pipeline

    def wrapper() -> None:
        tracemalloc.start()
        start = time.perf_counter()
        _inpaint_one(handle, pipe, image, mask, settings, lambda done: None)
        own_work.append(time.perf_counter() - start - timed_pipeline.seconds)
        wrapper_numpy_peak[0] = max(wrapper_numpy_peak[0], tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()

    times: dict[str, list[float]] = {"bare diffusers": [], "BackdropInpaint": []}
    for round_index in range(args.rounds + 1):
        for label, fn in (("bare diffusers", bare), ("BackdropInpaint", wrapper)):
            start = time.perf_counter()
            fn()
            if round_index:  # round 0 is the warm-up
                times[label].append(time.perf_counter() - start)
    bare_s, wrap_s = (statistics.median(times[k]) for k in times)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{args.arch} UNet, working size {plan.work_w}x{plan.work_h} for a 517x389 photo, {args.steps} steps, "
          f"torch threads {torch.get_num_threads()}, {args.rounds} interleaved rounds after a warm-up\n")
    print("| path | median s | rounds (s) |\n|---|---|---|")
    for label, values in times.items():
        print(f"| {label} | {statistics.median(values):.3f} | {', '.join(f'{v:.3f}' for v in values)} |")
    own = statistics.median(own_work[1:])
    delta = wrap_s - bare_s
    print(f"\nwrapper overhead, end to end: {100 * delta / bare_s:+.2f}% ({delta:+.3f} s per image)")
    print(f"wrapper's own work outside the diffusers call: {1000 * own:.1f} ms = {100 * own / bare_s:.2f}% of the "
          "bare call (timed directly, so machine noise does not enter)")
    print(f"peak process RSS: {peak_rss_mb:.0f} MiB; wrapper numpy peak (tracemalloc): "
          f"{wrapper_numpy_peak[0] / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
