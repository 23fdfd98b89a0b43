"""Benchmark of the SAM prompt/decoder step with a cached image embedding (run on demand, not by pytest).

    .venv/bin/python benchmarks/bench_sam.py [--repeats 7] [--warmup 2] [--threads N] [--json out.json]

SAM vit_b is built with random weights (no weights offline). The prompt encoder and mask decoder are
the same for vit_b/l/h, so the decoder timings are those of real checkpoints; the encoder pass is
timed once at 1024 px for context (vit_l/vit_h encoders are slower).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from comfyui_backdrop.runtime.masking.sam_loader import OFFICIAL_ARCHITECTURES, LoadedSam, build_sam
from comfyui_backdrop.runtime.masking.sam_masker import SamMasker
from comfyui_backdrop.runtime.masking.types import Prompt

SIZES = [(576, 432), (1152, 864), (2304, 1728)]  # (w, h): about 0.25, 1 and 4 megapixels


def _time_ms(fn, warmup: int, repeats: int) -> tuple[float, float]:
    """(median, min) wall time of ``fn`` in ms after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times), min(times)


def run(repeats: int = 7, warmup: int = 2, seed: int = 0, threads: int | None = None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    arch = OFFICIAL_ARCHITECTURES["vit_b"]
    model = build_sam(arch).eval().requires_grad_(False)
    sam = LoadedSam(model=model, architecture=arch, name="vit_b (random weights)", device="cpu")
    masker = SamMasker(sam, cache_size=len(SIZES))
    predictor = masker._predictor  # after each segment() it holds that image's embedding
    rng = np.random.default_rng(seed)
    rows = []
    for w, h in SIZES:
        image = rng.random((h, w, 3), dtype=np.float32)
        hint = np.zeros((h, w), dtype=bool)
        hint[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = True
        box = Prompt(box=(w * 0.3, h * 0.2, w * 0.7, h * 0.8))
        masker.segment(image, box)  # encoder pass; later calls hit the embedding cache
        box_np = np.array(box.box)
        runs_before = masker.encoder_runs
        timed = {
            "predict": lambda box_np=box_np: predictor.predict(box=box_np, multimask_output=False),
            "segment": lambda image=image, box=box: masker.segment(image, box),
            "auto": lambda image=image, hint=hint: masker.segment(image, hint=hint),
            "grid": lambda image=image: masker.segment(image),
        }
        (predict_ms, predict_min), (segment_ms, segment_min), (auto_ms, _), (grid_ms, _) = (
            _time_ms(fn, warmup, repeats) for fn in timed.values())
        assert masker.encoder_runs == runs_before, "the embedding cache was missed"
        mp = w * h / 1e6
        rows.append({
            "width": w, "height": h, "megapixels": round(mp, 3),
            "predictor_predict_box_ms": round(predict_ms, 2),
            "predictor_predict_box_min_ms": round(predict_min, 2),
            "segment_box_ms": round(segment_ms, 2),
            "segment_box_min_ms": round(segment_min, 2),
            "segment_box_ms_per_mp": round(segment_ms / mp, 2),
            "segment_auto_hint_ms": round(auto_ms, 2),
            "segment_auto_no_hint_ms": round(grid_ms, 2),
        })
    with torch.no_grad():  # one encoder pass at SAM's 1024 px input, after the warm-up passes above
        x = model.preprocess(torch.rand(1, 3, arch.image_size, arch.image_size) * 255)
        start = time.perf_counter()
        model.image_encoder(x)
        encoder_ms = (time.perf_counter() - start) * 1000.0
    return {
        "model": "sam vit_b, random weights (decoder identical to vit_l/vit_h)",
        "encoder_pass_1024_ms": round(encoder_ms, 1),
        "repeats": repeats, "warmup": warmup,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "python": sys.version.split()[0],
        "rows": rows,
    }


def markdown(result: dict) -> str:
    lines = [
        f"SAM {result['model']}; torch {result['torch']} on CPU, {result['threads']} threads; "
        f"median (and min) of {result['repeats']} after {result['warmup']} warm-up runs.",
        "",
        "| input | MP | SamPredictor.predict(box) ms (min) | SamMasker.segment(box) ms (min) "
        "| segment(box) ms/MP | segment(auto, hint) ms | segment(auto, no hint) ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        cells = [f"{r['width']}x{r['height']}", r["megapixels"],
                 f"{r['predictor_predict_box_ms']} ({r['predictor_predict_box_min_ms']})",
                 f"{r['segment_box_ms']} ({r['segment_box_min_ms']})", r["segment_box_ms_per_mp"],
                 r["segment_auto_hint_ms"], r["segment_auto_no_hint_ms"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "auto, hint: centre + hint clicks and the hint box (3 prompts x 4 outputs); auto, no hint: "
              "centre + 3x3 grid clicks (10 prompts x 4 outputs).",
              f"vit_b image encoder, one pass at 1024x1024 (for context): "
              f"{result['encoder_pass_1024_ms']} ms"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    result = run(repeats=args.repeats, warmup=args.warmup, threads=args.threads)
    print(markdown(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
