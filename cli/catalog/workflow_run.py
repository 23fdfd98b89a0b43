"""``backdrop run --workflow W.json PHOTOS... --workers N``: each photo's workflow run on a Ray actor that keeps the
workflow's models loaded (the runtime's model cache lives as long as the actor).

Exactly once, like photo runs, but a workflow names its own files (SaveImage's ``prefix_00001_.png`` counters), so
each run gets a folder of its own: ``OUT/<photo>_<workflow>/``, claimed in the run manifest before it starts. The run
writes into ``OUT/.backdrop-staging/<key>/`` and the folder is published with one atomic rename when the run ends.
A retried run (worker killed) first clears its own staging folder; a folder already published counts as done. So a
photo's outputs appear once, whole, or not at all. The summary (``backdrop-summary.json``) is written as without
``--workers``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...runtime.errors import InvalidInputError
from ..workflow import Job, JobReport, WorkflowPlan, report_runs, run_job
from .interrupts import ctrl_c_flag, until_interrupted
from .manifest import DONE, RunManifest
from .options import CatalogOptions
from .stages import object_column

STAGING = ".backdrop-staging"


@dataclass(frozen=True)
class WorkflowJob:
    """One workflow run with its manifest key and the folder claimed for its files."""

    key: str
    job: Job
    folder: Path

    def to_json(self) -> str:
        return json.dumps({"key": self.key, "label": self.job.label, "graph": self.job.graph,
                           "input_dir": str(self.job.input_dir), "folder": str(self.folder)})

    @classmethod
    def from_json(cls, text: str) -> WorkflowJob:
        data = json.loads(text)
        return cls(data["key"], Job(data["label"], data["graph"], Path(data["input_dir"])), Path(data["folder"]))


def plan_workflow_work(plan: WorkflowPlan, manifest: RunManifest) -> tuple[list[WorkflowJob], list[WorkflowJob]]:
    """(runs to do, runs that finished earlier): each keyed by the graph with its inputs and the photo's content."""
    graph_digest = hashlib.sha256(json.dumps({"workflow": plan.workflow.name, "set": plan.assignments,
                                              "out": str(plan.output_dir)}, sort_keys=True).encode()).hexdigest()
    manifest.record_settings(graph_digest, f"workflow {plan.workflow} with {list(plan.assignments)}")
    todo, done = [], []
    for job in plan.jobs:
        source = Path(job.label)
        content = manifest.input_sha256(source) if source.is_file() else ""
        graph = json.dumps(job.graph, sort_keys=True)
        key = hashlib.sha256(f"{content}\n{job.label}\n{graph}\n{graph_digest}".encode()).hexdigest()
        names, status = manifest.claim(key, job.label, content, graph_digest,
                                       lambda claimed, job=job: _free_folder(job, plan, claimed))
        item = WorkflowJob(key, job, Path(names["folder"]))
        (done if status == DONE else todo).append(item)
    return todo, done


def _free_folder(job: Job, plan: WorkflowPlan, claimed: set[str]) -> dict:
    base = f"{Path(job.label).stem or 'workflow'}_{plan.workflow.stem}"
    for n in range(10_000):
        folder = plan.output_dir / (base if n == 0 else f"{base}-{n}")
        if str(folder) not in claimed and not os.path.lexists(folder):
            return {"folder": str(folder), "all": [str(folder)]}
    raise FileExistsError(f"no free folder name for {base} in {plan.output_dir}")


class WorkflowStage:
    """Ray Data callable class: runs each row's workflow job into its staging folder, then publishes it."""

    def __init__(self, models_dir: str | os.PathLike | None, output_dir: str) -> None:
        import contextlib

        from ...runtime.models import models_dir_locator

        self.output_dir = Path(output_dir)
        self._exit = contextlib.ExitStack()
        self._exit.enter_context(models_dir_locator(models_dir))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        reports = [json.dumps(vars(self._run(WorkflowJob.from_json(text)))) for text in batch["job"]]
        return {"key": batch["key"], "job": batch["job"], "report": object_column(reports)}

    def _run(self, item: WorkflowJob) -> JobReport:
        if item.folder.is_dir():  # published by an earlier attempt: done
            return JobReport(item.job.label, outputs=sorted(str(p) for p in item.folder.rglob("*") if p.is_file()),
                             notes=["finished by an earlier attempt"])
        staging = self.output_dir / STAGING / item.key
        if staging.exists():
            shutil.rmtree(staging)  # what a killed attempt of this very run left: never published, ours alone
        staging.mkdir(parents=True)
        report = run_job(item.job, staging)
        if report.status == "failed":
            shutil.rmtree(staging, ignore_errors=True)
            report.outputs = []
            return report
        os.rename(staging, item.folder)  # atomic publish; fails if anything took the claimed name meanwhile
        report.outputs = [str(item.folder / Path(p).relative_to(staging)) for p in report.outputs]
        return report


def run_workflow_catalog_command(args) -> int:
    """``backdrop run --workflow W.json PHOTOS... --workers N``: the exit code, as without ``--workers``."""
    from ...runtime.models import models_dir_locator

    options = CatalogOptions.from_args(args)
    if args.dry_run:
        raise InvalidInputError("--dry-run checks a workflow in this process: leave out --workers")
    with models_dir_locator(args.models_dir):
        plan = WorkflowPlan.from_args(args)
        reports, interrupted, skipped = run_workflow_catalog(plan, options, args.models_dir)
    return report_runs(plan, reports, interrupted, skipped)


def run_workflow_catalog(plan: WorkflowPlan, options: CatalogOptions, models_dir: str | os.PathLike | None,
                         ) -> tuple[list[JobReport], bool, int]:
    """Run the plan's jobs on Ray: (reports in the order they finished, interrupted, runs skipped as done)."""
    from ..progress_bars import CatalogProgress
    from .ray_run import MAX_ATTEMPTS, start_ray, stop_ray

    manifest = RunManifest(plan.output_dir)
    reports: list[JobReport] = []
    try:
        todo, done = plan_workflow_work(plan, manifest)
        if not todo:
            return reports, False, len(done)
        started = start_ray(options)
        pending = {item.key: item for item in todo}
        bar = CatalogProgress(len(todo), disable=plan.quiet)
        try:
            with ctrl_c_flag() as interrupted:
                rows = until_interrupted(_dataset(todo, options, models_dir, plan.output_dir).iter_rows(), interrupted)
                for row in rows:
                    report = JobReport(**json.loads(row["report"]))
                    manifest.finish(row["key"], [Path(p) for p in report.outputs],
                                    "; ".join(report.errors) if report.status == "failed" else None)
                    pending.pop(row["key"], None)
                    reports.append(report)
                    bar.update(failed=report.status == "failed")
        except KeyboardInterrupt:
            reports += [JobReport(item.job.label, status="not run") for item in pending.values()]
            return reports, True, len(done)
        finally:
            bar.close()
            if started:
                stop_ray()
        for item in pending.values():  # failed on every attempt (its worker died each time): skipped by Ray Data
            error = f"not run: the Ray worker running it died (or failed) on all {MAX_ATTEMPTS} attempts"
            manifest.finish(item.key, [], error)
            reports.append(JobReport(item.job.label, status="failed", errors=[error]))
        return reports, False, len(done)
    finally:
        manifest.close()


def _dataset(todo: Sequence[WorkflowJob], options: CatalogOptions, models_dir: str | os.PathLike | None,
             output_dir: Path):
    import ray

    from .ray_run import MAX_ATTEMPTS

    rows = [{"key": item.key, "job": item.to_json()} for item in todo]

    class BoundWorkflowStage(WorkflowStage):  # settings bound in the class: no constructor arguments to ship
        def __init__(self) -> None:
            super().__init__(models_dir, str(output_dir))

    pool = ray.data.ActorPoolStrategy(size=options.workers)
    return ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        BoundWorkflowStage, batch_size=1, batch_format="numpy", compute=pool, num_cpus=1,
        max_task_retries=MAX_ATTEMPTS - 1)
