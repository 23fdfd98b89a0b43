"""UI-format (frontend) workflows <-> API format, following the ComfyUI frontend's rules.

In UI format a node's widget values are stored by position in ``widgets_values``, in the order its
``required`` then ``optional`` widget inputs are declared. The frontend adds one extra value after an INT
named ``seed``/``noise_seed`` (or declared with ``control_after_generate``): the control mode
("fixed", "randomize"...), and one after an ``image_upload`` combo: the upload button's "image".
Links are ``[link_id, origin_id, origin_slot, target_id, target_slot, type]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InvalidInputError
from .api_graph import ApiGraph, dependency_order, is_link, node_id_key
from .specs import NodeSpec

MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4
SKIPPED_UI_TYPES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})  # frontend-only nodes


def widget_values_to_inputs(spec: NodeSpec, values: list[Any], where: str) -> dict[str, Any]:
    """Name the positional ``widgets_values`` of a node of type ``spec``."""
    named: dict[str, Any] = {}
    index = 0
    for widget in spec.widgets:
        if index >= len(values):
            if widget.required:
                raise InvalidInputError(f"{where}: widgets_values has {len(values)} values; "
                                        f"{spec.class_type} needs a value for {widget.name!r} at position {index}")
            break
        named[widget.name] = values[index]
        index += 1 + int(widget.has_seed_control) + int(widget.has_upload_widget)
    if index < len(values):
        raise InvalidInputError(f"{where}: widgets_values has {len(values)} values but {spec.class_type} has "
                                f"only {index} widget positions (widgets reordered or removed?)")
    return named


def inputs_to_widget_values(spec: NodeSpec, inputs: Mapping[str, Any], seed_control: str = "fixed") -> list[Any]:
    """Positional ``widgets_values`` for API ``inputs`` (linked widgets keep their default)."""
    values: list[Any] = []
    for widget in spec.widgets:
        value = inputs.get(widget.name, widget.options.get("default"))
        if is_link(value) or value is None:
            value = widget.options.get("default", widget.choices[0] if widget.choices else "")
        values.append(value)
        if widget.has_seed_control:
            values.append(seed_control)
        if widget.has_upload_widget:
            values.append("image")
    return values


def ui_to_api(workflow: Mapping[str, Any], specs: Mapping[str, NodeSpec]) -> ApiGraph:
    """The API prompt the frontend would queue for this UI workflow (muted nodes and notes left out)."""
    nodes = workflow.get("nodes")
    if not isinstance(nodes, list):
        raise InvalidInputError("not a UI-format workflow: no 'nodes' list")
    links = {int(link[0]): link for link in workflow.get("links", []) if isinstance(link, list) and len(link) >= 5}
    by_id = {int(node["id"]): node for node in nodes}
    graph: ApiGraph = {}
    for node in sorted(nodes, key=lambda n: int(n["id"])):
        node_type = node.get("type")
        mode = node.get("mode", MODE_ALWAYS)
        if node_type in SKIPPED_UI_TYPES or mode == MODE_NEVER:
            continue
        where = f"node {node['id']} ({node_type})"
        if mode == MODE_BYPASS:
            raise InvalidInputError(f"{where} is bypassed; enable or remove it before converting")
        spec = specs.get(node_type)
        if spec is None:
            raise InvalidInputError(f"{where}: unknown node type {node_type!r}")
        values = node.get("widgets_values", [])
        if isinstance(values, Mapping):
            named = {k: v for k, v in values.items() if spec.input(k) is not None}
        else:
            named = widget_values_to_inputs(spec, list(values), where)
        for slot in node.get("inputs", []):
            source = _link_source(slot.get("link"), links, by_id)
            if source is _UNLINKED:
                continue
            if source is None:
                named.pop(slot["name"], None)
            else:
                named[slot["name"]] = source
        title = node.get("title") or spec.display_name or node_type
        graph[str(node["id"])] = {"inputs": named, "class_type": node_type, "_meta": {"title": title}}
    return graph


_UNLINKED = object()


def _link_source(link_id: int | None, links: Mapping[int, list], by_id: Mapping[int, dict]) -> Any:
    """What an input receives: an API link, a PrimitiveNode's value, None (muted source), or _UNLINKED.
    Reroute nodes are followed to the real source, as the frontend does when it queues a prompt."""
    seen = set()
    while link_id is not None and link_id in links and link_id not in seen:
        seen.add(link_id)
        link = links[link_id]
        origin = by_id.get(int(link[1]))
        if origin is None or origin.get("mode", MODE_ALWAYS) == MODE_NEVER:
            return None
        if origin.get("type") == "Reroute":
            inputs = origin.get("inputs") or [{}]
            link_id = inputs[0].get("link")
            continue
        if origin.get("type") == "PrimitiveNode":
            values = origin.get("widgets_values") or [None]
            return values[0]
        return [str(link[1]), int(link[2])]
    return _UNLINKED


def _node_size(spec: NodeSpec, sockets: int) -> list[int]:
    rows = max(sockets, len(spec.output_types))
    widgets = len(spec.widgets) + sum(w.has_seed_control for w in spec.widgets)
    tall = sum(3 for w in spec.widgets if w.options.get("multiline"))
    return [320, 46 + 22 * rows + 26 * (widgets + tall)]


def api_to_ui(graph: ApiGraph, specs: Mapping[str, NodeSpec], positions: Mapping[str, tuple[int, int]],
              groups: list[dict] | None = None, notes: Mapping[str, tuple[tuple[int, int], str]] | None = None
              ) -> dict[str, Any]:
    """A UI-format workflow (schema version 0.4) laid out at ``positions``; ids are kept."""
    link_rows: list[list[Any]] = []
    out_links: dict[tuple[str, int], list[int]] = {}
    ui_nodes: list[dict[str, Any]] = []
    order = {node_id: i for i, node_id in enumerate(dependency_order(graph, sorted(graph, key=node_id_key)))}
    for node_id, node in sorted(graph.items(), key=lambda kv: node_id_key(kv[0])):
        spec = specs[node["class_type"]]
        inputs = []
        for declared in spec.inputs:
            value = node["inputs"].get(declared.name)
            linked = is_link(value)
            if declared.is_widget and not linked:
                continue
            slot: dict[str, Any] = {"name": declared.name, "type": declared.kind, "link": None}
            if declared.is_widget:
                slot["widget"] = {"name": declared.name}
            if not declared.required:
                slot["shape"] = 7
            if linked:
                link_id = len(link_rows) + 1
                target_slot = len(inputs)
                src_type = specs[graph[value[0]]["class_type"]].output_types[value[1]]
                link_rows.append([link_id, int(value[0]), value[1], int(node_id), target_slot, src_type])
                out_links.setdefault((value[0], value[1]), []).append(link_id)
                slot["link"] = link_id
            inputs.append(slot)
        ui_nodes.append({
            "id": int(node_id), "type": node["class_type"], "pos": list(positions[node_id]),
            "size": _node_size(spec, len(inputs)), "flags": {}, "order": order[node_id], "mode": MODE_ALWAYS,
            "inputs": inputs, "outputs": [], "properties": {"Node name for S&R": node["class_type"]},
            "widgets_values": inputs_to_widget_values(spec, node["inputs"]),
        })
        title = node.get("_meta", {}).get("title")
        if title and title != (spec.display_name or node["class_type"]):
            ui_nodes[-1]["title"] = title
    for ui_node in ui_nodes:
        spec = specs[ui_node["type"]]
        ui_node["outputs"] = [
            {"name": name, "type": kind, "links": out_links.get((str(ui_node["id"]), slot), []), "slot_index": slot}
            | ({"shape": 6} if spec.output_is_list[slot] else {})
            for slot, (name, kind) in enumerate(zip(spec.output_names, spec.output_types, strict=True))]
    next_id = max((n["id"] for n in ui_nodes), default=0)
    for note_id, (pos, text) in (notes or {}).items():
        next_id = max(next_id, int(note_id))
        ui_nodes.append({"id": int(note_id), "type": "Note", "pos": list(pos), "size": [360, 160], "flags": {},
                         "order": len(ui_nodes), "mode": MODE_ALWAYS, "inputs": [], "outputs": [],
                         "properties": {}, "widgets_values": [text]})
    return {"last_node_id": next_id, "last_link_id": len(link_rows), "nodes": ui_nodes, "links": link_rows,
            "groups": groups or [], "config": {}, "extra": {"ds": {"scale": 0.75, "offset": [0, 0]}},
            "version": 0.4}


