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

from ..runtime.errors import BackdropError
from . import exit_codes
from .photo_steps import RunModels, process_photo
from .run_plan import RunPlan


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
