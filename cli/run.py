"""``backdrop run``: mask each product photo, put it on a new background, write it.

One failure never stops the batch: every failure is reported at the end with the files that photo had already
written, and makes the exit code 1. Ctrl-C stops after the current file; the summary still lists what was written
and what was not, and the exit code is 130.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.errors import BackdropError, InvalidInputError
from . import exit_codes
from .run_plan import RunPlan


@dataclass(frozen=True)
class RunModels:
    """What the run loads once and keeps for every photo (None where the plan needs no model)."""

    sam: Any = None
    captioner: Any = None
    pipeline: Any = None
    model_hashes: tuple[dict[str, str], dict[str, str]] = ({}, {})


@dataclass
class PhotoOutcome:
    """What one photo produced: the files written (even when a later step failed) and the error, if any."""

    source: Path
    written: list[Path] = field(default_factory=list)
    error: str | None = None


@dataclass
class RunSummary:
    outcomes: list[PhotoOutcome] = field(default_factory=list)
    not_started: list[Path] = field(default_factory=list)
    interrupted: bool = False

    @property
    def written(self) -> list[Path]:
        return [path for outcome in self.outcomes for path in outcome.written]

    @property
    def failed(self) -> list[PhotoOutcome]:
        return [outcome for outcome in self.outcomes if outcome.error is not None]


def run_command(args: argparse.Namespace) -> int:
    """``backdrop run PHOTOS...``: the exit code (see ``exit_codes``)."""
    from ..runtime.models import models_dir_locator

    if not args.inputs:
        print("backdrop run: error: give product photos or folders (or --workflow FILE)", file=sys.stderr)
        return exit_codes.USAGE
    with models_dir_locator(args.models_dir):  # every loader (SAM, captioner, pipeline, LoRAs) reads it
        plan = RunPlan.from_args(args)
        summary = run_plan(plan, load_models(plan))
    print_summary(summary)
    if summary.interrupted:
        return exit_codes.INTERRUPTED
    return exit_codes.SOME_FAILED if summary.failed else exit_codes.OK


def load_models(plan: RunPlan) -> RunModels:
    """Load what the plan needs, once, before the first photo (so a missing model fails the run up front)."""
    from ..runtime.models import ModelLocator, get_locator

    locator = ModelLocator.from_models_dir(plan.models_dir) if plan.models_dir else get_locator()
    sam = captioner = pipeline = None
    if plan.sam:
        from ..runtime.masking.sam_loader import load_sam
        from ..runtime.masking.sam_masker import SamMasker

        sam = SamMasker(load_sam(plan.sam, device=plan.device, locator=locator))
    if plan.captioner:
        from ..runtime.captioning.loader import load_captioner

        captioner = load_captioner(plan.captioner, device=plan.device, locator=locator)
    hashes: tuple[dict[str, str], dict[str, str]] = ({}, {})
    if plan.inpaint is not None:
        pipeline = plan.inpaint.load_pipeline(plan.device)
        if plan.watermark is not None:
            from .watermark_options import model_hashes

            hashes = model_hashes(plan.inpaint.checkpoint, [name for name, _ in plan.inpaint.loras])
    return RunModels(sam=sam, captioner=captioner, pipeline=pipeline, model_hashes=hashes)


def run_plan(plan: RunPlan, models: RunModels) -> RunSummary:
    """Process every photo of the plan; failures are recorded, Ctrl-C ends the batch with a summary."""
    from .progress_bars import tqdm_progress

    summary = RunSummary()
    progress, close = tqdm_progress("backdrop run", len(plan.inputs), disable=plan.quiet or not sys.stderr.isatty())
    try:
        for index, path in enumerate(plan.inputs):
            outcome = PhotoOutcome(path)
            summary.outcomes.append(outcome)
            try:
                process_photo(path, plan, models, outcome.written)
            except KeyboardInterrupt:
                outcome.error = "interrupted (Ctrl-C)"
                summary.interrupted = True
                summary.not_started = list(plan.inputs[index + 1:])
                break
            except (BackdropError, OSError, ValueError) as exc:
                outcome.error = str(exc)
            progress(index + 1, len(plan.inputs))
    finally:
        close()
    return summary


def process_photo(path: Path, plan: RunPlan, models: RunModels, written: list[Path]) -> None:
    """Mask, caption and prompt (once), generate, then write; each file written is appended to ``written``."""
    from ..runtime.imaging import read_image, write_image

    loaded = read_image(path, plan.read_limits)
    if loaded.fully_transparent and plan.mask_prompt.is_empty:
        from ..runtime.backdrop.studio_job import EMPTY_CUTOUT

        raise InvalidInputError(EMPTY_CUTOUT)  # before any model runs, on every path
    image = loaded.rgb if loaded.alpha is None else np.dstack([loaded.rgb, loaded.alpha])
    alpha = _product_alpha(image, plan, models)
    captions, composed = _captions_and_prompt(loaded.rgb, alpha, plan, models) if plan.needs_prompt else ({}, None)
    if plan.inpaint is None:
        images, out_alpha, positive, negative = _studio(image, alpha, plan)
    else:
        images, out_alpha, positive, negative = _inpaint(image, alpha, composed, plan, models)
    names = output_names(path.stem, plan.style_slug, len(images), plan.format, plan.out)
    bit_depth = loaded.bit_depth if plan.format == "png" else 8
    for name, picture in zip(names, images, strict=True):
        if plan.watermark is not None:
            from .watermark_options import write_marked

            written.append(write_marked(name, picture, out_alpha >= 0.5, plan, positive, negative,
                                        models.model_hashes))
        else:
            written.append(write_image(name, picture, bit_depth=bit_depth))
    if plan.save_mask:
        mask_rgb = np.repeat(out_alpha[..., None], 3, axis=2)
        written.append(write_image(plan.out / f"{path.stem}_mask.png", mask_rgb, bit_depth=8))
    if plan.prompt_json:
        written.append(_write_prompt_json(path, written[0], captions, composed, plan))


def output_names(stem: str, slug: str, count: int, suffix: str, out: Path) -> list[Path]:
    """``<stem>_<style>.<ext>``, or ``<stem>_<style>_<k>.<ext>`` for several variations."""
    if count == 1:
        return [out / f"{stem}_{slug}.{suffix}"]
    return [out / f"{stem}_{slug}_{k}.{suffix}" for k in range(count)]


def _product_alpha(image: np.ndarray, plan: RunPlan, models: RunModels) -> np.ndarray:
    from ..runtime.masking.product_mask import product_mask

    return product_mask(image, sam=models.sam, prompt=plan.mask_prompt, refine=plan.refine)


def _captions_and_prompt(rgb: np.ndarray, alpha: np.ndarray, plan: RunPlan, models: RunModels):
    """Captions (VLM or image statistics) of the photo as given, and the prompt composed from them: computed once
    per photo and used by both the diffusion step and the prompt JSON."""
    from ..runtime.captioning.pipeline import caption_for_run
    from ..runtime.prompting import compose_prompt

    captions = caption_for_run(rgb, alpha, models.captioner)
    composed = compose_prompt(captions["product_caption"], plan.style, plan.composition, scene=plan.scene,
                              background_caption=captions["background_caption"])
    return captions, composed


def _studio(image: np.ndarray, alpha: np.ndarray, plan: RunPlan):
    from ..runtime.backdrop.studio_job import studio_background

    result = studio_background(image, plan.style, alpha=alpha, studio=plan.studio)
    return [result.image], result.product_alpha, plan.style.prompt_text, plan.style.negative_text


def _inpaint(image: np.ndarray, alpha: np.ndarray, composed, plan: RunPlan, models: RunModels):
    """Generate backgrounds around the exact product; the mask returned is on the output canvas (it moves when
    outpainting)."""
    from ..runtime.inpainting.generate import inpaint_backgrounds

    settings = plan.inpaint.settings_for(composed.positive, composed.negative)
    result = inpaint_backgrounds(models.pipeline, [image], [alpha], settings)
    return result.images, result.product_masks[0], settings.prompt, settings.negative_prompt


def _write_prompt_json(source: Path, output: Path, captions: dict[str, str], composed, plan: RunPlan) -> Path:
    """Captions and the composed prompts, beside the first output image."""
    import json

    from ..runtime.files import write_bytes_exclusive

    record = {
        "input": str(source),
        "output": str(output),
        "style": plan.style.name,
        "composition": plan.composition,
        "captioner": plan.captioner,
        "product_caption": captions["product_caption"],
        "background_caption": captions["background_caption"],
        "caption_source": captions["source"],
        "positive": composed.positive,
        "negative": composed.negative,
        "warnings": list(composed.warnings),
    }
    payload = json.dumps(record, indent=2, ensure_ascii=False).encode("utf-8")
    return write_bytes_exclusive(output.with_suffix(".json"), payload)


def print_summary(summary: RunSummary) -> None:
    """Every file written, every photo that failed (with what it had written), and what Ctrl-C left undone."""
    for path in summary.written:
        print(f"wrote {path}")
    for outcome in summary.failed:
        print(f"FAILED {outcome.source}: {outcome.error}", file=sys.stderr)
    for path in summary.not_started:
        print(f"NOT RUN {path}", file=sys.stderr)
    print(f"{len(summary.written)} file(s) written, {len(summary.failed)} input(s) failed"
          + (f", {len(summary.not_started)} not run (interrupted)" if summary.interrupted else ""), file=sys.stderr)
