"""Runs an API-format workflow with node classes, following ComfyUI's execution rules.

- Only output nodes (``OUTPUT_NODE = True``) and what they depend on run, each node once, dependencies first.
- Every output slot holds a list. A node whose inputs are lists runs once per item (shorter lists repeat
  their last item) unless it sets ``INPUT_IS_LIST``; ``OUTPUT_IS_LIST`` outputs are concatenated.
- Hidden inputs: PROMPT (the workflow), EXTRA_PNGINFO (``{"workflow": ui_workflow}`` when known), UNIQUE_ID.

With ``continue_on_error`` a failing call for one list item (one photo of a folder) is recorded as an
``ItemFailure``, which flows downstream in that item's place, and the other items carry on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import Interrupted
from .api_graph import ApiGraph, dependency_order, is_link, node_id_key, node_title
from .specs import NodeSpec, spec_from_class
from .validate import WorkflowError, custom_validation_problems, workflow_problems

NodeProgress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class ItemFailure:
    """One list item that failed in ``node_id``; it replaces that item's values downstream."""

    node_id: str
    title: str
    item: int
    error: BaseException

    def describe(self) -> str:
        return f"node {self.node_id} ({self.title}), item {self.item}: {type(self.error).__name__}: {self.error}"


@dataclass
class ExecutionResult:
    """Outputs of every node that ran (slot -> list of values), output-node UI data, failures and timings."""

    outputs: dict[str, list[list[Any]]] = field(default_factory=dict)
    ui: dict[str, list[Any]] = field(default_factory=dict)
    failures: list[ItemFailure] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    def output(self, node_id: str, slot: int = 0) -> list[Any]:
        return self.outputs[node_id][slot]


def execution_order(graph: ApiGraph, specs: Mapping[str, NodeSpec], targets: list[str] | None = None) -> list[str]:
    """Node ids to run, dependencies first: ``targets`` (default: every output node) and their ancestors."""
    if targets is None:
        targets = [n for n, node in graph.items() if specs[node["class_type"]].output_node]
    if not targets:
        raise WorkflowError(["the workflow has no output node (SaveImage, BackdropSave, PreviewImage...), "
                             "so nothing would run"])
    return dependency_order(graph, sorted(targets, key=node_id_key))


def execute_workflow(graph: ApiGraph, classes: Mapping[str, type], *, ui_workflow: Mapping | None = None,
                     targets: list[str] | None = None, continue_on_error: bool = False,
                     progress: NodeProgress | None = None) -> ExecutionResult:
    """Validate ``graph`` against ``classes`` and run it. Raises ``WorkflowError`` before running anything
    if a node type is unavailable or an input is invalid."""
    missing = sorted({n["class_type"] for n in graph.values() if n["class_type"] not in classes})
    if missing:
        raise WorkflowError([f"these node types only run inside ComfyUI: {', '.join(missing)}. Run the workflow "
                             "in ComfyUI (or post it to its /prompt API); headless runs support this pack's nodes "
                             "and LoadImage, SaveImage and PreviewImage"])
    specs = {k: spec_from_class(k, c) for k, c in classes.items() if k in {n["class_type"] for n in graph.values()}}
    problems = workflow_problems(graph, specs) + custom_validation_problems(graph, classes)
    if problems:
        raise WorkflowError(problems)
    order = execution_order(graph, specs, targets)
    result = ExecutionResult(order=order)
    hidden_values = {"PROMPT": graph, "EXTRA_PNGINFO": {"workflow": ui_workflow} if ui_workflow else {}}
    for done, node_id in enumerate(order):
        node = graph[node_id]
        started = time.perf_counter()
        outputs, ui = _run_node(node_id, node_title(graph, node_id), classes[node["class_type"]],
                                specs[node["class_type"]], node["inputs"], result, hidden_values, continue_on_error)
        result.outputs[node_id] = outputs
        if ui:
            result.ui[node_id] = ui
        result.seconds[node_id] = time.perf_counter() - started
        if progress is not None:
            progress(done + 1, len(order), node_id)
    return result


def _run_node(node_id: str, title: str, node_class: type, spec: NodeSpec, inputs: Mapping[str, Any],
              result: ExecutionResult, hidden_values: Mapping[str, Any], continue_on_error: bool
              ) -> tuple[list[list[Any]], list[Any]]:
    lists: dict[str, list[Any]] = {}
    for declared in spec.inputs:
        if declared.name in inputs:
            value = inputs[declared.name]
            lists[declared.name] = result.outputs[value[0]][value[1]] if is_link(value) else [value]
    for name, kind in spec.hidden.items():
        lists[name] = [node_id if kind == "UNIQUE_ID" else hidden_values.get(kind)]
    instance = node_class()
    function = getattr(instance, node_class.FUNCTION)
    outputs: list[list[Any]] = [[] for _ in spec.output_types]
    ui: list[Any] = []
    if spec.input_is_list:
        calls = [lists]
    elif any(len(v) == 0 for v in lists.values()):
        calls = []
    else:
        count = max((len(v) for v in lists.values()), default=1)
        calls = [{k: v[min(i, len(v) - 1)] for k, v in lists.items()} for i in range(count)]
    for item, kwargs in enumerate(calls):
        failed = next((v for v in kwargs.values() if isinstance(v, ItemFailure)), None)
        if failed is None:
            try:
                returned = function(**kwargs)
            except (Interrupted, KeyboardInterrupt):
                raise
            except Exception as exc:
                if not continue_on_error:
                    raise
                failed = ItemFailure(node_id, title, item, exc)
                result.failures.append(failed)
        if failed is not None:
            for slot in outputs:
                slot.append(failed)
            continue
        values = _result_tuple(returned, ui)
        for slot, value in enumerate(values[:len(outputs)]):
            if spec.output_is_list[slot]:
                outputs[slot].extend(value)
            else:
                outputs[slot].append(value)
    return outputs, ui


def _result_tuple(returned: Any, ui: list[Any]) -> tuple:
    if isinstance(returned, Mapping):
        if "ui" in returned:
            ui.append(returned["ui"])
        return tuple(returned.get("result", ()))
    return tuple(returned) if returned is not None else ()

