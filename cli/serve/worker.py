"""One job worker: claims queued jobs and runs ``backdrop run``'s pipeline on them, models kept loaded.

Each job becomes the ``RunPlan`` of its ``backdrop run`` command line (``JobParams.run_plan``; always
``--watermark --account <account id>``), run by the CLI's ``process_photo``: every delivered image is
watermarked, recorded in the signed ledger under the calling account and saved with its C2PA manifest by
``cli.watermark_options.write_marked``, exactly as ``backdrop run --watermark`` does. The models the plan
needs (SAM, captioner, pipeline and LoRAs) are loaded once and kept while the next job needs the same ones.

Cancellation is checked before each variation: a variation that started is finished and delivered (it already
has its ledger record), the rest are not run. Images are registered with the job as they are written; the
worker's ``claim`` token fences every write, so a worker whose job was taken away (a restart failed it) changes
nothing.

``work`` is the loop every runner runs: ``worker_main`` in local worker processes (``runner.LocalWorkers``),
``ray_runner.JobWorkerActor`` in Ray actors; each gives it its own way to stop and to wait for work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ...runtime.errors import BackdropError
from .config import ServeConfig
from .params import STUDIO, JobParams
from .store import CANCELED, FAILED, SUCCEEDED, Job, JobImage, Store

log = logging.getLogger("backdrop.serve")
IDLE_WAIT_S = 1.0
NICENESS = 10  # workers are batch work: the API process (submissions, polls, downloads) is scheduled first
DELIVERED_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".webp": "webp"}


class Canceled(Exception):
    """The job's owner asked to cancel it."""


class ClaimLost(Exception):
    """The job is no longer this worker's (the server failed it after a restart)."""


def worker_name(index: int, pid: int) -> str:
    return f"w{index}.{pid}"


def worker_main(config: ServeConfig, index: int, wake, stop, parent_pid: int, ready=None) -> None:
    """Entry point of a worker process (multiprocessing, spawn)."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the server stops us
    name = worker_name(index, os.getpid())
    executor = start_worker(config, name)
    if ready is not None:
        with ready.get_lock():
            ready.value += 1

    def idle(seconds: float) -> None:
        wake.wait(seconds)
        wake.clear()

    try:
        work(executor, lambda: stop.is_set() or os.getppid() != parent_pid, idle)
    finally:
        executor.store.close()


def lower_priority() -> str:
    """Make this thread (and the threads it starts, e.g. torch's pool) batch work; returns what was applied.

    Linux ``SCHED_IDLE``: the worker runs only when no normal-priority thread wants the core, so the API
    process answers a submission at once even while a pipeline holds every core (``nice 10`` only shrinks the
    worker's share, and a woken API thread could still wait a scheduler slice behind it). Elsewhere, nice 10.
    ``BACKDROP_WORKER_PRIORITY=nice`` keeps nice 10 on Linux too (for comparing the two).
    """
    if hasattr(os, "sched_setscheduler") and os.environ.get("BACKDROP_WORKER_PRIORITY", "idle") != "nice":
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "SCHED_IDLE"
        except OSError:  # a container that forbids it: fall back to nice
            pass
    if hasattr(os, "nice"):
        os.nice(NICENESS)
        return f"nice {NICENESS}"
    return "normal"


def start_worker(config: ServeConfig, name: str, provenance=None) -> JobExecutor:
    """Set up this process as a job worker (lower priority, logging, the pipeline imported) and open its store.
    ``provenance``: a ``ProvenanceService`` with its keys in memory (workers on other machines); None: the home's."""
    from .database import open_store

    lower_priority()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s backdrop.serve.worker: %(message)s")
    executor = JobExecutor(config, open_store(config.database, config.data.root), name, provenance)
    warm_up()
    log.info("worker %s ready", name)
    return executor


def work(executor: JobExecutor, stopped: Callable[[], bool], idle: Callable[[float], None],
         idle_s: float = IDLE_WAIT_S) -> None:
    """Claim queued jobs and run them until ``stopped()``; with none queued, ``idle(idle_s)`` (it returns early
    when the runner signals a new job)."""
    from ...runtime.models import models_dir_locator

    with models_dir_locator(executor.config.models_dir):
        while not stopped():
            job = executor.store.claim(executor.name, time.time())
            if job is None:
                idle(idle_s)
                continue
            execute_job(job, executor)


def warm_up() -> None:
    """Import the pipeline now (torch and friends take seconds), not while the first job's caller waits."""
    from ...runtime.backdrop import studio_job  # noqa: F401
    from ...runtime.provenance import c2pa_manifest  # noqa: F401
    from ...runtime.watermark import service  # noqa: F401
    from .. import run, watermark_options  # noqa: F401


def execute_job(job: Job, executor: JobExecutor) -> str:
    """Run one claimed job to its end and record the outcome; returns the final status."""
    store, started = executor.store, time.monotonic()
    status, error, retryable = SUCCEEDED, None, False
    try:
        executor.run(job)
    except Canceled:
        status, error = CANCELED, "canceled while running; the images finished before are delivered"
    except ClaimLost:
        log.warning("job %s was taken from worker %s (the server restarted or gave up on it)", job.id, executor.name)
        return "lost"
    except (BackdropError, ValueError) as exc:
        status, error = FAILED, executor.clean(str(exc))
    except OSError as exc:
        status, error, retryable = FAILED, executor.clean(f"{exc.strerror or exc}"), True
    except Exception as exc:  # a bug or the machine (out of memory...): the caller may try again
        log.exception("job %s failed in worker %s", job.id, executor.name)
        status, error, retryable = FAILED, f"internal error ({type(exc).__name__}); submit the job again", True
    if not store.finish(job.id, job.claim, status, time.time(), error=error, retryable=retryable):
        log.warning("job %s: the outcome %s was not recorded (its claim was taken away)", job.id, status)
        return "lost"
    log.info("job %s %s in %.2f s", job.id, status, time.monotonic() - started)
    return status


class JobExecutor:
    """Runs jobs in this process: the CLI's parser and pipeline, and the models of the last plan."""

    def __init__(self, config: ServeConfig, store: Store, name: str, provenance=None) -> None:
        self.config, self.store, self.name, self.provenance = config, store, name, provenance
        self._models_key = None
        self._models = None

    def run(self, job: Job) -> None:
        from ..photo_steps import process_photo

        params = JobParams.from_json(job.params)
        folder = self.config.data.job_dir(job.id)
        photo = prepare_photo(folder / job.input_name, params, folder)
        if params.model == STUDIO:  # the studio backdrop draws one image per run: variation k is seed + k
            runs = [(k, params.seed + k, 1) for k in range(params.variations)]
        else:  # the diffusion path makes all variations in one run (variation k seeded seed + k)
            runs = [(0, params.seed, params.variations)]
        delivered = len(job.images)
        for index, (k, seed, count) in enumerate(runs):
            self._check(job)
            plan = params.run_plan(photo, folder / "out" / str(k), seed=seed, variations=count,
                                   account=job.account_id, config=self.config)
            written: list[Path] = []
            try:
                process_photo(photo, plan, self.models(plan), written)
            finally:
                for path in written:
                    if path.suffix.lower() in DELIVERED_SUFFIXES:
                        self.deliver(job, path, delivered)
                        delivered += 1
            self.store.set_progress(job.id, job.claim, (index + 1) / len(runs))

    def _check(self, job: Job) -> None:
        if self.store.should_stop(job.id, job.claim):
            current = self.store.job(job.id)
            if current is not None and current.claim == job.claim and current.cancel_requested:
                raise Canceled()
            raise ClaimLost()

    def models(self, plan):
        """The plan's models, loaded once and kept while later plans need the same ones."""
        from ..photo_steps import load_models

        inpaint = plan.inpaint
        if inpaint is not None:  # what loads models; the per-photo prompts and sampling settings do not
            inpaint = dataclasses.replace(inpaint, prompt=None, negative=None, settings=None)
        key = (plan.sam, plan.captioner, plan.device, str(plan.models_dir), plan.watermark is not None, inpaint)
        if key != self._models_key:
            self._models = self._models_key = None  # free the old set before loading the next
            models = load_models(plan)
            self._models = models if self.provenance is None else dataclasses.replace(models,
                                                                                        provenance=self.provenance)
            self._models_key = key
        return self._models

    def deliver(self, job: Job, path: Path, n: int) -> None:
        if not self.store.add_image(job.id, job.claim, image_record(self.config.data.relative(path), path, n)):
            raise ClaimLost()

    def clean(self, message: str) -> str:
        """An error for the caller: no server paths in it."""
        root = str(self.config.data.root)
        return message.replace(root + os.sep, "").replace(root, "the data folder")


def image_record(relative: str, path: Path, n: int) -> JobImage:
    from PIL import Image

    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as picture:
        width, height = picture.size
    return JobImage(n=n, path=relative, format=DELIVERED_SUFFIXES[path.suffix.lower()], width=width, height=height,
                    bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), created_at=time.time())


def prepare_photo(photo: Path, params: JobParams, folder: Path) -> Path:
    """The photo the pipeline runs on: the upload, or a copy shrunk to the resolution preset (PNG, same bit depth,
    written once; ``runtime.saving.resize_to_preset``)."""
    from ...runtime.image_gate import DEFAULT_READ_LIMITS, read_header
    from ...runtime.imaging import read_image, write_image
    from ...runtime.saving import resize_to_preset

    with open(photo, "rb") as fh:  # the header is enough to know (the long side does not change with orientation)
        header = read_header(fh, photo, DEFAULT_READ_LIMITS)
    if params.output_size(header.width, header.height) == (header.width, header.height):
        return photo
    target = folder / f"photo-{params.resolution}.png"
    if target.exists():  # written atomically by an earlier attempt
        return target
    loaded = read_image(photo)
    rgb = resize_to_preset(loaded.rgb, params.saving_preset)
    alpha = None if loaded.alpha is None else resize_to_preset(loaded.alpha, params.saving_preset)
    return write_image(target, rgb, bit_depth=loaded.bit_depth, alpha=alpha)


def _die_with_parent(parent_pid: int) -> None:
    """A worker must not outlive its server (a SIGKILLed server would leave it running jobs nobody owns)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(0)
