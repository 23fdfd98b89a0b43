"""The Ray actor of a catalog run: runs one or more photo steps on each row, with its models loaded once.

A row is one photo: ``key``, ``job`` (the manifest's :class:`PhotoJob` as JSON), ``state`` (what the last step made:
None, then a PreparedPhoto, then a GeneratedPhoto, then the list of files written), ``error`` and ``written``.
A photo's own failure (bad file, refused input, missing model...) is caught and travels in ``error`` to the
driver; later steps pass such rows on untouched. A worker that dies (killed, out of memory) is restarted by Ray
and its batch retried: :func:`earlier_delivery` makes the retry write only what is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ...runtime.errors import BackdropError, InvalidInputError
from ..photo_steps import STEPS, RunModels, deliver_photo, generate_backgrounds, load_models, prepare_photo
from ..run_plan import RunPlan
from .manifest import PhotoJob

PHOTO_ERRORS = (BackdropError, OSError, ValueError)  # what fails one photo, as in the single-process run


class PhotoStage:
    """Ray Data ``map_batches`` callable class: ``steps`` of photo_steps.STEPS, in order, on every row."""

    def __init__(self, plan: RunPlan, steps: Sequence[str], threads: int = 0,
                 key_secrets: Mapping[str, bytes] | None = None) -> None:
        unknown = set(steps) - set(STEPS)
        if unknown or not steps:
            raise InvalidInputError(f"unknown photo steps {sorted(unknown)}; use some of {STEPS}")
        _limit_threads(threads)
        self.plan, self.steps = plan, tuple(steps)
        self._exit = contextlib.ExitStack()
        from ...runtime.models import models_dir_locator

        self._exit.enter_context(models_dir_locator(plan.models_dir))
        self.models = load_models(plan, self.steps)
        if key_secrets is not None and "deliver" in self.steps:
            self.models = replace(self.models, provenance=_service_with_keys_in_memory(plan, key_secrets))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        states, errors, written = list(batch["state"]), list(batch["error"]), list(batch["written"])
        for i, job_json in enumerate(batch["job"]):
            if errors[i]:
                continue
            job = PhotoJob.from_json(job_json)
            files: list[Path] = []
            try:
                states[i] = self._run(job, states[i], files)
            except PHOTO_ERRORS as exc:
                states[i], errors[i] = None, str(exc) or type(exc).__name__
            if files:
                written[i] = json.dumps([str(p) for p in files])
        return {**batch, "state": object_column(states), "error": np.asarray(errors, dtype=object),
                "written": np.asarray(written, dtype=object)}

    def _run(self, job: PhotoJob, state: Any, files: list[Path]) -> Any:
        earlier: frozenset[Path] | None = None  # what an earlier attempt delivered: looked up once per attempt
        for step in self.steps:
            if step == "prepare":
                earlier = earlier_delivery(job, self.plan, self.models)
                if earlier == set(job.names.all):
                    state = "delivered"  # an earlier attempt wrote everything: nothing to compute
                else:
                    state = prepare_photo(job.source, self.plan, self.models)
            elif state == "delivered":
                if step == "deliver":
                    files.extend(job.names.all)
            elif step == "generate":
                state = generate_backgrounds(state, self.plan, self.models)
            else:
                if earlier is None:  # a deliver-only actor (split layout)
                    earlier = earlier_delivery(job, self.plan, self.models)
                deliver_photo(state, self.plan, self.models, job.names, files, rename=False,
                              idempotency_keys=job.idempotency_keys, delivered=earlier)
                state = None
        return state


def bound_stage(plan: RunPlan, steps: Sequence[str], threads: int = 0,
                key_secrets: Mapping[str, bytes] | None = None) -> type[PhotoStage]:
    """A PhotoStage class with its settings bound: Ray ships the class with the code (no constructor arguments in the
    object store, which Ray warns would break an actor's restart if they were lost)."""

    class BoundPhotoStage(PhotoStage):
        def __init__(self) -> None:
            super().__init__(plan, steps, threads, key_secrets)

    BoundPhotoStage.__name__ = BoundPhotoStage.__qualname__ = f"PhotoStage[{'+'.join(steps)}]"
    return BoundPhotoStage


def earlier_delivery(job: PhotoJob, plan: RunPlan, models: RunModels) -> frozenset[Path]:
    """The files of ``job`` already delivered (files appear atomically, so one that exists is whole).

    With ``--watermark`` a picture counts only when the ledger holds its record (under the picture's idempotency
    key): a picture file without one was saved by an attempt killed before its record committed, and is removed
    here so that the retry delivers it again, with its record.
    """
    present = {p for p in job.names.all if os.path.lexists(p)}
    if plan.watermark is not None and present:
        ledger = _ledger(plan, models)
        for name, key in zip(job.names.images, job.idempotency_keys, strict=True):
            if name in present and ledger.find_idempotent(key) is None:
                name.unlink()  # ours: the name was claimed for this photo before any attempt ran
                present.discard(name)
    return frozenset(present)


def _ledger(plan: RunPlan, models: RunModels):
    if models.provenance is not None:
        return models.provenance.ledger
    from ...runtime.watermark.service import get_service

    return get_service(None, ledger=plan.watermark.ledger).ledger


def _service_with_keys_in_memory(plan: RunPlan, secrets: Mapping[str, bytes]):
    """Workers on other machines get the keys in memory (never written to their disks)."""
    from ...runtime.provenance.keys import KeyStore
    from ...runtime.watermark.service import ProvenanceService

    return ProvenanceService(keys=KeyStore.from_secrets(dict(secrets)), ledger=plan.watermark.ledger)


def _limit_threads(threads: int) -> None:
    """Each worker uses ``threads`` cores (0: leave the libraries' defaults), so N workers do not oversubscribe.
    torch is not imported for this (the weight-free path never needs it): it reads OMP_NUM_THREADS when a model
    loader imports it, and one already imported is set directly."""
    if threads <= 0:
        return
    import cv2

    os.environ["OMP_NUM_THREADS"] = str(threads)
    cv2.setNumThreads(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def object_column(values: list) -> np.ndarray:
    """A Ray Data column of Python objects (numpy would try to stack arrays or strings into one array)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
