"""Checks an API workflow against node specs before anything runs, the way ComfyUI's /prompt does:
known node types, required inputs, link targets and types, widget value types, ranges and choices."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InvalidInputError
from .api_graph import ApiGraph, is_link, node_title
from .specs import InputSpec, NodeSpec, custom_validated_inputs, types_compatible


class WorkflowError(InvalidInputError):
    """A workflow that cannot run; ``problems`` lists every reason, each naming its node."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("the workflow cannot run:\n  - " + "\n  - ".join(self.problems))


def literal_problem(spec: InputSpec, value: Any) -> str | None:
    """Why ``value`` is not acceptable for widget ``spec``, or None."""
    if spec.kind == "COMBO":
        if spec.dynamic_choices:
            return None if isinstance(value, str) else f"expects a name (string), got {value!r}"
        if value not in spec.choices:
            shown = ", ".join(map(str, spec.choices[:12])) + (" ..." if len(spec.choices) > 12 else "")
            return f"{value!r} is not one of: {shown}"
        return None
    if spec.kind == "INT":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expects an integer, got {value!r}"
    elif spec.kind == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expects a number, got {value!r}"
    elif spec.kind == "BOOLEAN":
        if not isinstance(value, bool):
            return f"expects true/false, got {value!r}"
    elif spec.kind == "STRING":
        return None if isinstance(value, str) else f"expects a string, got {value!r}"
    else:
        return f"is a {spec.kind} socket: it must be linked to another node's output, not given a value"
    low, high = spec.options.get("min"), spec.options.get("max")
    if low is not None and value < low:
        return f"{value} is below the minimum {low}"
    if high is not None and value > high:
        return f"{value} is above the maximum {high}"
    return None


def workflow_problems(graph: ApiGraph, specs: Mapping[str, NodeSpec], strict: bool = True) -> list[str]:
    """Everything wrong with ``graph``; empty when it can run. ``strict`` also flags unknown input names."""
    problems: list[str] = []
    unknown = sorted({n["class_type"] for n in graph.values() if n["class_type"] not in specs})
    if unknown:
        problems.append(f"unknown node types: {', '.join(unknown)} (is the custom-node pack that provides "
                        "them installed?)")
    for node_id, node in graph.items():
        spec = specs.get(node["class_type"])
        if spec is None:
            continue
        where = f"node {node_id} ({node_title(graph, node_id)})"
        inputs = node["inputs"]
        for declared in spec.inputs:
            if declared.name not in inputs:
                if declared.required:
                    problems.append(f"{where}: required input {declared.name!r} is missing")
                continue
            value = inputs[declared.name]
            if is_link(value):
                problems += _link_problems(graph, specs, where, declared, value)
                continue
            if declared.name in spec.custom_validated:
                continue  # the node's VALIDATE_INPUTS decides (custom_validation_problems)
            reason = literal_problem(declared, value)
            if reason:
                problems.append(f"{where}: {declared.name}: {reason}")
        if strict:
            known = {i.name for i in spec.inputs}
            for name in inputs:
                if name not in known:
                    problems.append(f"{where}: {spec.class_type} has no input {name!r}")
    problems += _cycle_problems(graph)
    return problems


def _link_problems(graph: ApiGraph, specs: Mapping[str, NodeSpec], where: str, declared: InputSpec,
                   link: list) -> list[str]:
    source_id, slot = link
    if source_id not in graph:
        return [f"{where}: {declared.name} is linked to node {source_id}, which is not in the workflow"]
    source = specs.get(graph[source_id]["class_type"])
    if source is None:
        return []
    if not 0 <= slot < len(source.output_types):
        return [f"{where}: {declared.name} is linked to output {slot} of node {source_id}, which has "
                f"{len(source.output_types)} outputs"]
    out_type = source.output_types[slot]
    if not types_compatible(out_type, declared.kind):
        return [f"{where}: {declared.name} takes {declared.kind} but is linked to {out_type} "
                f"(output {source.output_names[slot]!r} of node {source_id})"]
    return []


def _cycle_problems(graph: ApiGraph) -> list[str]:
    """A cycle through links makes a workflow unrunnable (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for root in graph:
        if state.get(root):
            continue
        stack = [(root, iter(_sources(graph, root)))]
        state[root] = 1
        while stack:
            node_id, sources = stack[-1]
            source = next(sources, None)
            if source is None:
                state[node_id] = 2
                stack.pop()
            elif state.get(source) == 1:
                return [f"the workflow has a cycle through node {source}"]
            elif not state.get(source):
                state[source] = 1
                stack.append((source, iter(_sources(graph, source))))
    return []


def _sources(graph: ApiGraph, node_id: str) -> list[str]:
    return [v[0] for v in graph[node_id]["inputs"].values() if is_link(v) and v[0] in graph]


def custom_validation_problems(graph: ApiGraph, classes: Mapping[str, type]) -> list[str]:
    """Run each node's ``VALIDATE_INPUTS`` on its literal values, as ComfyUI does before queueing."""
    problems = []
    for node_id, node in graph.items():
        node_class = classes.get(node["class_type"])
        names = custom_validated_inputs(node_class) if node_class is not None else []
        values = {n: node["inputs"][n] for n in names if n in node["inputs"] and not is_link(node["inputs"][n])}
        if not names or len(values) != len(names):
            continue
        try:
            verdict = node_class.VALIDATE_INPUTS(**values)
        except Exception as exc:  # a value of the wrong type: reported like any other problem
            verdict = f"{type(exc).__name__}: {exc}"
        if verdict is not True:
            detail = "" if verdict is False else f": {verdict}"
            problems.append(f"node {node_id} ({node_title(graph, node_id)}): {', '.join(names)}{detail}")
    return problems
