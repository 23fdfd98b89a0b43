"""API-format workflows: reading them, telling them apart from UI format, and ``--set`` overrides.

An API workflow maps node ids to ``{"class_type": ..., "inputs": {...}, "_meta": {"title": ...}}``; an
input is a literal or a link ``[source_node_id, output_index]``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ..flags import parse_flag
from .specs import InputSpec, NodeSpec

ApiGraph = dict[str, dict[str, Any]]


def is_link(value: Any) -> bool:
    """True for an API-format link ``[node_id, output_index]``."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def is_ui_format(data: Any) -> bool:
    """UI-format (frontend) workflows have ``nodes`` and ``links`` lists."""
    return isinstance(data, Mapping) and isinstance(data.get("nodes"), list) and "links" in data


def read_workflow_file(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"workflow file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"{path} is not a readable JSON workflow: {exc}") from None


def check_api_shape(data: Any, where: str = "workflow") -> ApiGraph:
    """A deep copy of ``data`` after checking it has the API-format shape; errors name the node."""
    if is_ui_format(data):
        raise InvalidInputError(f"{where} is in UI format; convert it with ui_to_api or use the API export "
                                "(ComfyUI: Workflow > Export (API))")
    if not isinstance(data, Mapping) or not data:
        raise InvalidInputError(f"{where} is not an API-format workflow (expected an object of nodes)")
    graph: ApiGraph = {}
    for node_id, node in data.items():
        if not isinstance(node, Mapping) or not isinstance(node.get("class_type"), str):
            raise InvalidInputError(f"{where}: node {node_id!r} has no class_type")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, Mapping):
            raise InvalidInputError(f"{where}: node {node_id!r} inputs must be an object")
        node_copy = copy.deepcopy(dict(node))
        node_copy["inputs"] = dict(node_copy.get("inputs", {}))
        graph[str(node_id)] = node_copy
    return graph


def node_title(graph: ApiGraph, node_id: str) -> str:
    node = graph[node_id]
    return str(node.get("_meta", {}).get("title") or node["class_type"])


def find_node(graph: ApiGraph, ref: str) -> str:
    """A node id from ``ref``: an id, a node title, or a class type used once in the graph."""
    if ref in graph:
        return ref
    for label, key in (("title", lambda n: graph[n].get("_meta", {}).get("title")),
                       ("class type", lambda n: graph[n]["class_type"])):
        matches = [n for n in graph if key(n) == ref]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidInputError(f"{len(matches)} nodes have the {label} {ref!r} (ids {', '.join(matches)}); "
                                    "use a node id")
    listing = ", ".join(f"{n} ({node_title(graph, n)})" for n in graph)
    raise InvalidInputError(f"no node {ref!r} in the workflow; nodes: {listing}")


def parse_assignment(text: str) -> tuple[str, str, str]:
    """``NODE.INPUT=VALUE`` -> (node ref, input name, raw value). NODE may contain dots; INPUT may not."""
    target, sep, value = text.partition("=")
    node_ref, dot, input_name = target.rpartition(".")
    if not sep or not dot or not node_ref or not input_name:
        raise InvalidInputError(f"--set {text!r}: expected NODE.INPUT=VALUE (NODE = id, title or class type)")
    return node_ref.strip(), input_name.strip(), value


def coerce_value(spec: InputSpec, raw: str) -> Any:
    """A command-line string turned into the widget's type (range and choices are checked by validation)."""
    try:
        if spec.kind == "INT":
            return int(raw, 0) if raw.strip().lower().startswith(("0x", "-0x")) else int(raw)
        if spec.kind == "FLOAT":
            return float(raw)
    except ValueError:
        raise InvalidInputError(f"{spec.name} takes a {spec.kind.lower()}, got {raw!r}") from None
    if spec.kind == "BOOLEAN":
        flag = parse_flag(raw)
        if flag is None:
            raise InvalidInputError(f"{spec.name} takes true/false, got {raw!r}")
        return flag
    return raw


def apply_assignments(graph: ApiGraph, assignments: list[str], specs: Mapping[str, NodeSpec]) -> ApiGraph:
    """A copy of ``graph`` with each ``NODE.INPUT=VALUE`` applied (typed from the node's spec)."""
    result = copy.deepcopy(graph)
    for text in assignments:
        node_ref, input_name, raw = parse_assignment(text)
        node_id = find_node(result, node_ref)
        class_type = result[node_id]["class_type"]
        spec = specs.get(class_type)
        declared = spec.input(input_name) if spec else None
        if spec is not None and declared is None:
            names = ", ".join(i.name for i in spec.inputs)
            raise InvalidInputError(f"--set {text!r}: {class_type} has no input {input_name!r}; inputs: {names}")
        result[node_id]["inputs"][input_name] = coerce_value(declared, raw) if declared else raw
    return result


def dependency_order(graph: ApiGraph, targets: list[str]) -> list[str]:
    """``targets`` and every node they depend on, each once, dependencies first (iterative: no depth limit)."""
    order: list[str] = []
    done: set[str] = set()
    for target in targets:
        stack = [(target, False)]
        while stack:
            node_id, expanded = stack.pop()
            if node_id in done:
                continue
            if expanded:
                done.add(node_id)
                order.append(node_id)
                continue
            stack.append((node_id, True))
            for value in reversed(list(graph[node_id]["inputs"].values())):
                if is_link(value) and value[0] in graph and value[0] not in done:
                    stack.append((value[0], False))
    return order


def node_id_key(node_id: str) -> tuple[int, str]:
    """Sort key: numeric ids in numeric order, then the others."""
    return (int(node_id), node_id) if node_id.isdigit() else (1 << 62, node_id)
