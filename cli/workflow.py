"""``backdrop run --workflow W.json``: run a ComfyUI workflow headless, once, or once per photo.

Photos given on the command line are fed to the workflow's image input (the LoadImage node, or
``--image-input NODE.INPUT``); a folder given to a workflow that starts with BackdropLoadImageFolder
becomes that node's folder. Each photo is its own run: a failure is reported and the rest continue.
A summary (``backdrop-summary.json``: per run its status, files, notes, errors and seconds per node) is
written to the output folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runtime.errors import BackdropError, InvalidInputError
from ..runtime.host import HeadlessHost, Host
from ..runtime.progress import ProgressFn
from ..runtime.workflow.api_graph import (
    ApiGraph,
    apply_assignments,
    check_api_shape,
    find_node,
    is_ui_format,
    node_title,
    read_workflow_file,
)
from ..runtime.workflow.executor import execute_workflow
from ..runtime.workflow.specs import NodeSpec, specs_from_classes
from ..runtime.workflow.ui_format import ui_to_api
from . import exit_codes

FOLDER_NODE = "BackdropLoadImageFolder"


@dataclass(frozen=True)
class Job:
    """One run of the workflow: the photo (or folder) it is for and the graph to run."""

    label: str
    graph: ApiGraph
    input_dir: Path


@dataclass(frozen=True)
class WorkflowPlan:
    """``backdrop run --workflow``: the graph with every ``--set`` applied, checked once, and the runs to make."""

    workflow: Path
    assignments: tuple[str, ...]
    output_dir: Path
    jobs: tuple[Job, ...]
    quiet: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> WorkflowPlan:
        output_dir = Path(args.out).resolve()
        input_dir = Path(args.input_dir or Path.cwd()).resolve()
        specs = node_specs(node_classes(HeadlessHost(input_dir, output_dir)))  # combo listings follow these folders
        graph, _ = load_graph(args.workflow, specs)
        graph = apply_assignments(graph, args.assignments, specs)
        jobs = plan_jobs(graph, list(args.inputs or []), args.image_input, input_dir)
        return cls(workflow=Path(args.workflow), assignments=tuple(args.assignments), output_dir=output_dir,
                   jobs=tuple(jobs), quiet=args.quiet or not sys.stderr.isatty())


@dataclass
class JobReport:
    label: str
    status: str = "ok"
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    node_seconds: dict[str, float] = field(default_factory=dict)


def add_workflow_arguments(run: argparse.ArgumentParser) -> None:
    group = run.add_argument_group("workflows (run a ComfyUI workflow headless)")
    group.add_argument("--workflow", type=Path, default=None,
                       help="an API-format (or UI-format) workflow JSON, e.g. workflows/api/product_background.json")
    group.add_argument("--set", dest="assignments", action="append", default=[], metavar="NODE.INPUT=VALUE",
                       help="set a widget input before running; NODE is a node id, title or class type "
                            "(repeatable)")
    group.add_argument("--image-input", default=None, metavar="NODE.INPUT",
                       help="where each photo goes (default: the workflow's LoadImage node)")
    group.add_argument("--dry-run", action="store_true",
                       help="check the workflow against the installed nodes and models and list the runs, "
                            "without running anything")
    group.add_argument("--input-dir", type=Path, default=None,
                       help="ComfyUI's input folder for LoadImage/BackdropVerify names (default: current folder)")


def node_classes(host: Host) -> dict[str, type]:
    """This pack's node classes bound to ``host`` (imported the way the CLI imports the package; ComfyUI is not
    needed) plus headless LoadImage/SaveImage/PreviewImage on the host's folders."""
    from ..nodes import NODE_CLASS_MAPPINGS
    from ..nodes.comfy_host import bind_host
    from ..nodes.headless_core import core_node_classes

    return {**bind_host(NODE_CLASS_MAPPINGS, host),
            **core_node_classes(host.input_directory(), host.output_directory())}


def node_specs(classes: Mapping[str, type]) -> dict[str, NodeSpec]:
    """The specs of ``classes`` as they are now (combo listings read the folders: call it once per use)."""
    from ..nodes import NODE_DISPLAY_NAME_MAPPINGS

    return specs_from_classes(classes, NODE_DISPLAY_NAME_MAPPINGS)


def load_graph(path: Path, specs: Mapping[str, NodeSpec]) -> tuple[ApiGraph, dict | None]:
    """The API graph of a workflow file, and the UI workflow when the file is in UI format."""
    data = read_workflow_file(path)
    if is_ui_format(data):
        return ui_to_api(data, specs), data
    return check_api_shape(data, str(path)), None


def step_bars(disable: bool) -> Callable[[int], ProgressFn]:
    """A progress factory for a second, transient bar over the steps of long nodes (inpainting, training...)."""
    from .progress_bars import tqdm_progress

    def factory(total: int) -> ProgressFn:
        update, close = tqdm_progress("  steps", total, disable=disable)

        def step(done: int, total_: int) -> None:
            update(done, total_)
            if done >= total_:
                close()

        return step

    return factory


def plan_jobs(graph: ApiGraph, inputs: list[Path], image_input: str | None, input_dir: Path) -> list[Job]:
    """One job per photo (or per folder for a BackdropLoadImageFolder workflow); one job without inputs."""
    if not inputs:
        return [Job("workflow", graph, input_dir)]
    if image_input is None and any(n["class_type"] == FOLDER_NODE for n in graph.values()) and \
            all(p.is_dir() for p in inputs):
        node_id = find_node(graph, FOLDER_NODE)
        return [_with_value(graph, node_id, "folder", p.resolve().name, str(p), p.resolve().parent) for p in inputs]
    node_id, input_name = _image_input(graph, image_input)
    from .inputs import collect_inputs

    return [_with_value(graph, node_id, input_name, p.name, str(p), p.resolve().parent)
            for p in collect_inputs(inputs)]


def _image_input(graph: ApiGraph, image_input: str | None) -> tuple[str, str]:
    if image_input:
        ref, _, name = image_input.rpartition(".")
        if not ref:
            raise InvalidInputError(f"--image-input {image_input!r}: expected NODE.INPUT")
        return find_node(graph, ref), name
    loaders = [n for n, node in graph.items() if node["class_type"] == "LoadImage"]
    if len(loaders) != 1:
        raise InvalidInputError(f"the workflow has {len(loaders)} LoadImage nodes; say which input takes the "
                                "photos with --image-input NODE.INPUT")
    return loaders[0], "image"


def _with_value(graph: ApiGraph, node_id: str, name: str, value: str, label: str, input_dir: Path) -> Job:
    copy = {k: {**v, "inputs": dict(v["inputs"])} for k, v in graph.items()}
    copy[node_id]["inputs"][name] = value
    return Job(label, copy, input_dir)


def run_job(job: Job, output_dir: Path, steps: Callable[[int], ProgressFn] | None = None,
            progress_node=None) -> JobReport:
    """Run one job; failures (of the whole run or of single list items) are recorded, never raised. ``steps``
    makes the progress callback of long nodes."""
    report = JobReport(job.label)
    started = time.perf_counter()
    classes = node_classes(HeadlessHost(job.input_dir, output_dir, progress_factory=steps))
    try:
        result = execute_workflow(job.graph, classes, continue_on_error=True, progress=progress_node)
        report.outputs = saved_files(result.ui, output_dir)
        report.node_seconds = {f"{n} ({node_title(job.graph, n)})": round(t, 3) for n, t in result.seconds.items()}
        report.notes = [str(t) for entries in result.ui.values() for entry in entries if isinstance(entry, Mapping)
                        for t in entry.get("text", [])]
        report.errors = [f.describe() for f in result.failures]
        if result.failures:
            report.status = "partial" if report.outputs else "failed"
    except (BackdropError, OSError, ValueError, RuntimeError) as exc:
        report.status, report.errors = "failed", [f"{type(exc).__name__}: {exc}"]
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _dry_run(jobs: Sequence[Job], output_dir: Path) -> int:
    """Validate every planned run (model and input names included) and print the plan."""
    from ..runtime.workflow.validate import custom_validation_problems, workflow_problems

    failed = 0
    for job in jobs:
        classes = node_classes(HeadlessHost(job.input_dir, output_dir))
        specs = node_specs(classes)
        missing = sorted({n["class_type"] for n in job.graph.values()} - set(specs))
        problems = [f"only runs inside ComfyUI: {', '.join(missing)}"] if missing else []
        problems += workflow_problems(job.graph, specs, strict=True)
        problems += custom_validation_problems(job.graph, classes)
        failed += bool(problems)
        print(f"{'ok' if not problems else 'INVALID'}  {job.label}")
        for problem in problems:
            print(f"    - {problem}")
    print(f"{len(jobs) - failed} of {len(jobs)} run(s) would start; nothing was run", file=sys.stderr)
    return 1 if failed else 0


def saved_files(ui: Mapping[str, list[Any]], output_dir: Path) -> list[str]:
    files = []
    for entries in ui.values():
        for entry in entries:
            for image in entry.get("images", []) if isinstance(entry, Mapping) else []:
                files.append(str(output_dir / image.get("subfolder", "") / image["filename"]))
    return files


def run_workflow_command(args: argparse.Namespace) -> int:
    from ..runtime.models import models_dir_locator

    with models_dir_locator(args.models_dir):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from .progress_bars import tqdm_progress

    plan = WorkflowPlan.from_args(args)
    if args.dry_run:
        return _dry_run(plan.jobs, plan.output_dir)
    update, close = tqdm_progress("backdrop workflow", len(plan.jobs), disable=plan.quiet)
    reports: list[JobReport] = []
    interrupted = False
    try:
        for index, job in enumerate(plan.jobs):
            try:
                reports.append(run_job(job, plan.output_dir, steps=step_bars(plan.quiet)))
            except KeyboardInterrupt:
                interrupted = True
                reports.append(JobReport(job.label, status="interrupted", errors=["interrupted (Ctrl-C)"]))
                reports += [JobReport(j.label, status="not run") for j in plan.jobs[index + 1:]]
                break
            update(index + 1, len(plan.jobs))
    finally:
        close()
    return report_runs(plan, reports, interrupted)


def report_runs(plan: WorkflowPlan, reports: Sequence[JobReport], interrupted: bool, skipped: int = 0) -> int:
    """Write ``backdrop-summary.json``, print every file, note and failure, and return the exit code."""
    from ..runtime.files import write_bytes_exclusive

    summary = {"workflow": str(plan.workflow), "set": list(plan.assignments), "output_dir": str(plan.output_dir),
               "runs": len(reports), "ok": sum(r.status == "ok" for r in reports),
               "failed": sum(r.status != "ok" for r in reports), "interrupted": interrupted,
               "skipped_as_done": skipped, "jobs": [vars(r) for r in reports]}
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    summary_path = write_bytes_exclusive(plan.output_dir / "backdrop-summary.json",
                                         json.dumps(summary, indent=2, ensure_ascii=False).encode("utf-8"))
    for report in reports:
        for path in report.outputs:
            print(f"wrote {path}")
        for note in report.notes:
            print(f"{report.label}: {note}")
        for error in report.errors:
            print(f"FAILED {report.label}: {error}", file=sys.stderr)
        if report.status == "not run":
            print(f"NOT RUN {report.label}", file=sys.stderr)
    if skipped:
        print(f"{skipped} run(s) skipped: finished in an earlier run with these settings", file=sys.stderr)
    print(f"{summary['ok']} of {len(reports)} run(s) ok; summary: {summary_path}", file=sys.stderr)
    if interrupted:
        return exit_codes.INTERRUPTED
    return exit_codes.SOME_FAILED if summary["failed"] else exit_codes.OK
