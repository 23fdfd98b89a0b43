"""``backdrop run``: mask each product photo, put it on a new background, write it. One failure never
stops the batch; every failure is reported at the end and makes the exit code non-zero."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime.errors import BackdropError


@dataclass
class RunSummary:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def run_command(args: argparse.Namespace) -> int:
    from ..runtime.models import models_dir_locator

    with models_dir_locator(args.models_dir):  # every loader (SAM, captioner, pipeline, LoRAs) reads it
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from ..runtime.backdrop.studio import StudioOptions
    from ..runtime.backdrop.styles import get_style
    from ..runtime.masking.types import Prompt, RefineOptions, parse_box, parse_points
    from .inputs import collect_inputs

    style = get_style(args.style)
    prompt = Prompt(box=parse_box(args.box), points=parse_points(args.points))
    refine = RefineOptions(fill_holes=not args.no_fill_holes, keep=args.keep, grow_px=args.grow,
                           edge_refine=not args.no_edge_refine, feather_px=args.feather)
    studio = StudioOptions(shadow=args.shadow, vignette=args.vignette, light=args.light, seed=args.seed)
    from ..runtime.devices import resolve_device

    args.device = resolve_device(args.device)
    sam = _load_sam(args.sam, args.models_dir, args.device) if args.sam else None
    pipeline = None
    if args.checkpoint:
        from .inpaint_options import load_for_run

        pipeline = load_for_run(args)
    captioner = _load_captioner(args.captioner, args.models_dir, args.device) if args.captioner else None
    args.prompt_json = args.prompt_json or captioner is not None
    if args.prompt_json:
        from ..runtime.prompting import get_composition

        get_composition(args.composition)  # fail before the batch on a bad name
    inputs = collect_inputs(args.inputs)
    if not inputs:
        raise BackdropError("no input images found")

    summary = RunSummary()
    progress, close = _progress(len(inputs), args.quiet)
    try:
        for index, path in enumerate(inputs):
            try:
                summary.written.extend(_process_one(path, args, style, prompt, refine, studio, sam, captioner,
                                                    pipeline))
            except (BackdropError, OSError, ValueError) as exc:
                summary.failed.append((path, str(exc)))
            progress(index + 1, len(inputs))
    finally:
        close()
    _print_summary(summary)
    return 1 if summary.failed else 0


def _process_one(path: Path, args, style, prompt, refine, studio, sam, captioner, pipeline=None) -> list[Path]:
    import numpy as np

    from ..runtime.imaging import read_image, write_image

    loaded = read_image(path)
    image = loaded.rgb if loaded.alpha is None else np.dstack([loaded.rgb, loaded.alpha])
    slug = style.name.lower().replace(" ", "-")
    bit_depth = loaded.bit_depth if args.format == "png" else 8
    positive, negative = style.prompt_text, style.negative_text
    if pipeline is None:
        from ..runtime.backdrop.studio_job import studio_background

        result = studio_background(image, style, sam=sam, prompt=prompt, refine=refine, studio=studio)
        images, alpha = [result.image], result.product_alpha
    else:
        images, alpha, positive, negative = _inpaint_file(pipeline, image, loaded.rgb, args, style, prompt, refine,
                                                          sam, captioner)
    from .inpaint_options import output_names

    names = output_names(path.stem, slug, len(images), args.format, args.out)
    if args.watermark:
        from .watermark_options import model_hashes, write_marked

        hashes = model_hashes(args)
        out = [write_marked(name, img, alpha >= 0.5, args, positive, negative, hashes, style.name)
               for name, img in zip(names, images, strict=True)]
    else:
        out = [write_image(name, img, bit_depth=bit_depth) for name, img in zip(names, images, strict=True)]
    if args.save_mask:
        mask_rgb = np.repeat(alpha[..., None], 3, axis=2)
        out.append(write_image(args.out / f"{path.stem}_mask.png", mask_rgb, bit_depth=8))
    if args.prompt_json:
        out.append(_write_prompt_json(path, out[0], loaded.rgb, alpha, args, style, captioner))
    return out


def _inpaint_file(pipeline, image, rgb, args, style, prompt, refine, sam, captioner):
    """Mask, caption + compose the prompt, then generate backgrounds around the exact product."""
    from ..runtime.captioning.pipeline import caption_for_run
    from ..runtime.masking.product_mask import product_mask
    from ..runtime.prompting import compose_prompt
    from .inpaint_options import inpaint_for_run

    alpha = product_mask(image, sam=sam, prompt=prompt, refine=refine)
    captions = caption_for_run(rgb, alpha, captioner)
    composed = compose_prompt(captions["product_caption"], style, args.composition, scene=args.scene,
                              background_caption=captions["background_caption"])
    result = inpaint_for_run(pipeline, image, alpha, composed.positive, composed.negative, args)
    positive, negative = args.prompt or composed.positive, args.negative or composed.negative
    # the mask on the output canvas (it moves when outpainting)
    return result.images, result.product_masks[0], positive, negative


def _write_prompt_json(source: Path, output: Path, rgb, alpha, args, style, captioner) -> Path:
    """Captions (VLM or image statistics) and the composed prompts, beside the output image."""
    import json

    from ..runtime.captioning.pipeline import caption_for_run
    from ..runtime.files import write_bytes_exclusive
    from ..runtime.prompting import compose_prompt

    captions = caption_for_run(rgb, alpha, captioner)
    composed = compose_prompt(captions["product_caption"], style, args.composition, scene=args.scene,
                              background_caption=captions["background_caption"])
    captions["caption_source"] = captions.pop("source")
    record = {
        "input": str(source),
        "output": str(output),
        "style": style.name,
        "composition": args.composition,
        "captioner": args.captioner,
        **captions,
        "positive": composed.positive,
        "negative": composed.negative,
        "warnings": list(composed.warnings),
    }
    payload = json.dumps(record, indent=2, ensure_ascii=False).encode("utf-8")
    return write_bytes_exclusive(output.with_suffix(".json"), payload)


def _locator(models_dir: Path | None):
    """``--models-dir`` when given, else the default locator."""
    from ..runtime.models import ModelLocator, get_locator

    return ModelLocator.from_models_dir(models_dir) if models_dir else get_locator()


def _load_sam(name: str, models_dir: Path | None, device: str):
    from ..runtime.masking.sam_loader import load_sam
    from ..runtime.masking.sam_masker import SamMasker

    return SamMasker(load_sam(name, device=device, locator=_locator(models_dir)))


def _load_captioner(name: str, models_dir: Path | None, device: str):
    from ..runtime.captioning.loader import load_captioner

    return load_captioner(name, device=device, locator=_locator(models_dir))


def _progress(total: int, quiet: bool):
    from ..runtime.progress import tqdm_progress

    return tqdm_progress("backdrop run", total, disable=quiet or not sys.stderr.isatty())


def _print_summary(summary: RunSummary) -> None:
    for path in summary.written:
        print(f"wrote {path}")
    for path, reason in summary.failed:
        print(f"FAILED {path}: {reason}", file=sys.stderr)
    print(f"{len(summary.written)} file(s) written, {len(summary.failed)} input(s) failed", file=sys.stderr)
