"""The driver of a catalog run: Ray Data streams the photos through actor pools that keep their models loaded.

Layout (``--stages``):

* **fused** (CPU clusters, and the weight-free path): one pool of N actors, each running prepare -> generate ->
  deliver on its photo. Nothing is copied between processes; N actors use N cores.
* **split** (GPUs and a checkpoint): masking and captioning on N CPU actors, the diffusion pipeline on one actor
  a GPU (kept loaded), watermark + ledger + save on N CPU actors. Ray Data's streaming executor bounds what is in
  flight between the pools (backpressure), so memory stays flat whatever the catalog's size.

Every outcome the driver receives is committed to the run manifest at once; Ctrl-C stops the stream, and a
rerun of the same command processes only what did not finish.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ...runtime.errors import InvalidInputError
from ..photo_steps import STEPS
from ..run_plan import RunPlan
from ..run_summary import PhotoOutcome, RunSummary
from .interrupts import ctrl_c_flag, until_interrupted
from .manifest import PhotoJob, RunManifest
from .options import CatalogOptions

MAX_PHOTOS_PER_BLOCK = 8
WINDOW = 10_000  # photos planned and streamed at a time
MAX_ATTEMPTS = 4  # a task's attempts when its worker dies
RAY_MISSING = "catalog runs need Ray: pip install 'comfyui-backdrop[cluster]' (ray[data])"


def run_catalog(plan: RunPlan, options: CatalogOptions) -> RunSummary:
    """Process the catalog on Ray; photos that finished in an earlier run of the same command are skipped.

    The photos are planned (hashed, claimed) and streamed a window of :data:`WINDOW` at a time, so the driver's
    memory stays bounded whatever the catalog's size; Ray stays up across windows.
    """
    from ..progress_bars import CatalogProgress

    try:
        import ray  # noqa: F401  (checked before any work: the message says how to install it)
    except ImportError as exc:
        raise InvalidInputError(RAY_MISSING) from exc
    secrets = _key_secrets(plan, options)  # before anything starts: a cluster run needs a shared ledger
    if options.address:
        from ..ray_start import check_reachable

        check_reachable(options.address)
    manifest = RunManifest(plan.out)
    summary = RunSummary()
    bar = CatalogProgress(len(plan.inputs), disable=_quiet(plan))
    ray_started: bool | None = None  # None: not needed yet
    try:
        for first in range(0, len(plan.inputs), WINDOW):
            window = replace(plan, inputs=plan.inputs[first:first + WINDOW])
            work = manifest.plan_work(window)
            summary.already_done += [job.source for job in work.already_done]
            bar.skip(len(work.already_done))
            if not work.jobs:
                continue
            if ray_started is None:
                ray_started = start_ray(options)
            if not _stream(window, options, work.jobs, manifest, summary, secrets, bar):
                summary.not_started += list(plan.inputs[first + WINDOW:])
                break
    finally:
        bar.close()
        if ray_started:
            stop_ray()
        manifest.close()
    return summary


def _stream(plan: RunPlan, options: CatalogOptions, jobs: Sequence[PhotoJob], manifest: RunManifest,
            summary: RunSummary, secrets: dict[str, bytes] | None, bar) -> bool:
    """Run the pipeline over ``jobs`` and record each outcome as it arrives; False when Ctrl-C stopped it."""
    pending = {job.key: job for job in jobs}
    try:
        with ctrl_c_flag() as interrupted:
            rows = until_interrupted(_pipeline(plan, options, jobs, secrets).iter_rows(), interrupted)
            for row in rows:
                written = [Path(p) for p in json.loads(row["written"])]
                outcome = PhotoOutcome(PhotoJob.from_json(row["job"]).source, written=written,
                                       error=row["error"] or None)
                manifest.finish(row["key"], outcome.written, outcome.error)
                pending.pop(row["key"], None)
                summary.outcomes.append(outcome)
                bar.update(failed=outcome.error is not None)
    except KeyboardInterrupt:
        summary.interrupted = True
        summary.not_started += [job.source for job in pending.values()]
        return False
    for job in pending.values():  # their task failed on every attempt: Ray Data skipped it and went on
        error = (f"not delivered: the Ray worker processing it died (or failed) on all {MAX_ATTEMPTS} attempts, e.g. "
                 "out of memory; Ray's logs say why (/tmp/ray/session_latest/logs); a rerun tries it again")
        manifest.finish(job.key, [], error)
        summary.outcomes.append(PhotoOutcome(job.source, error=error))
        bar.update(failed=True)
    return True


def _pipeline(plan: RunPlan, options: CatalogOptions, jobs: Sequence[PhotoJob], secrets: dict[str, bytes] | None):
    """The Ray Data dataset: one row a photo, through the actor pools of the chosen layout."""
    import ray

    from .stages import bound_stage

    rows = [{"key": job.key, "job": job.to_json(), "state": None, "error": "", "written": "[]"} for job in jobs]
    # a block is one actor task: a few photos each keeps Ray's per-task cost small against a photo's, while enough
    # blocks remain to keep every worker busy and to report progress (and resume) in small steps
    per_block = max(1, min(MAX_PHOTOS_PER_BLOCK, len(rows) // (4 * options.workers)))
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // per_block)))
    plan = replace(plan, inputs=())  # the workers get their photos from the rows, not a copy of the whole list
    gpus = int(ray.cluster_resources().get("GPU", 0))
    stages = options.stages if options.stages != "auto" else ("split" if gpus and plan.inpaint else "fused")
    # the cores each worker's libraries (OpenCV, torch) may use: this machine's (embedded) or the cluster's, shared
    cpus = (os.cpu_count() or 1) if not options.address else int(ray.cluster_resources().get("CPU", 1))
    threads = max(1, cpus // options.workers)
    # a worker that dies is restarted and its task retried, MAX_ATTEMPTS times in all: a photo that kills its worker
    # every time (out of memory...) ends as failed instead of looping forever
    common = {"batch_size": per_block, "batch_format": "numpy", "zero_copy_batch": True,
              "max_task_retries": MAX_ATTEMPTS - 1}
    pool = ray.data.ActorPoolStrategy(size=options.workers)
    if stages == "fused":
        return dataset.map_batches(bound_stage(plan, STEPS, threads, secrets), compute=pool, num_cpus=1, **common)
    cpu_share = 0.5  # the CPU stages share a core per worker: prepare and deliver rarely peak together
    generators = ray.data.ActorPoolStrategy(size=gpus or options.workers)  # one pipeline a GPU, kept loaded
    dataset = dataset.map_batches(bound_stage(plan, ("prepare",), threads), compute=pool, num_cpus=cpu_share,
                                  **common)
    dataset = dataset.map_batches(bound_stage(replace(plan, device="cuda") if gpus else plan, ("generate",), threads),
                                  compute=generators, num_gpus=1 if gpus else 0, num_cpus=cpu_share if gpus else 1,
                                  **common)
    return dataset.map_batches(bound_stage(plan, ("deliver",), threads, secrets), compute=pool, num_cpus=cpu_share,
                               **common)


def start_ray(options: CatalogOptions) -> bool:
    """Join ``--ray-address`` or start Ray embedded with ``--workers`` CPUs; True when this process started it."""
    import ray

    from ..ray_start import init_ray

    if ray.is_initialized():
        return False
    cpus = options.workers if options.stages != "split" else max(options.workers, os.cpu_count() or 1)
    context = init_ray(options.address, num_cpus=cpus, dashboard=options.dashboard)
    if options.dashboard:
        print(f"Ray dashboard (while the run lasts): http://{context.dashboard_url}", file=sys.stderr)
    _configure_ray_data()
    return True


def stop_ray() -> None:
    import ray

    ray.shutdown()


def _configure_ray_data() -> None:
    """One progress bar (ours): Ray Data's own bars and per-operator log lines off. A task that fails on every
    attempt (its worker killed each time, say out of memory) costs only its photos, not the run."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.max_errored_blocks = -1
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _key_secrets(plan: RunPlan, options: CatalogOptions) -> dict[str, bytes] | None:
    """The provenance keys for workers on other machines, passed in memory; None on this machine (workers read the
    key folder themselves) or without --watermark."""
    if plan.watermark is None or not options.address:
        return None
    from ...runtime.provenance.ledger_backends import is_database_url

    if not plan.watermark.ledger or not is_database_url(str(plan.watermark.ledger)):
        raise InvalidInputError("--watermark on a Ray cluster needs a ledger every machine can reach: "
                                "--ledger postgresql://... (an SQLite ledger lives on one machine's disk)")
    from ...runtime.provenance.keys import load_keys

    return load_keys(None, create=True).secrets()


def _quiet(plan: RunPlan) -> bool:
    return plan.quiet or not sys.stderr.isatty()
