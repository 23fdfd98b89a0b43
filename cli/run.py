"""``backdrop run``: mask each product photo, put it on a new background, write it.

One failure never stops the batch: every failure is reported at the end with the files that photo had already
written, and makes the exit code 1. Ctrl-C stops after the current file; the summary still lists what was written
and what was not, and the exit code is 130. With ``--workers N`` the photos go through Ray instead (``catalog/``):
resumable, exactly-once, and the same summary.
"""

from __future__ import annotations

import argparse
import sys

from ..runtime.errors import BackdropError
from . import exit_codes
from .photo_steps import RunModels, load_models, process_photo
from .run_plan import RunPlan
from .run_summary import PhotoOutcome, RunSummary, print_summary


def run_command(args: argparse.Namespace) -> int:
    """``backdrop run PHOTOS...``: the exit code (see ``exit_codes``)."""
    from ..runtime.models import models_dir_locator

    if not args.inputs:
        print("backdrop run: error: give product photos or folders (or --workflow FILE)", file=sys.stderr)
        return exit_codes.USAGE
    from .catalog.options import CatalogOptions

    catalog = CatalogOptions.from_args(args)
    with models_dir_locator(args.models_dir):  # every loader (SAM, captioner, pipeline, LoRAs) reads it
        plan = RunPlan.from_args(args)
        if catalog is not None:
            from .catalog.ray_run import run_catalog

            summary = run_catalog(plan, catalog)
        else:
            summary = run_plan(plan, load_models(plan))
    print_summary(summary)
    if summary.interrupted:
        return exit_codes.INTERRUPTED
    return exit_codes.SOME_FAILED if summary.failed else exit_codes.OK


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
                generated = process_photo(path, plan, models, outcome.written)
                if generated.ranking is not None:
                    outcome.ranking = [ranked.as_dict() for ranked in generated.ranking]
                    outcome.kept = len(generated.images)
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
