"""What a node accepts and returns, read from a V1 node class or from ComfyUI's /object_info.

Widget order is public API: a UI-format workflow stores widget values by position, in the order
``required`` then ``optional`` inputs are declared.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Input types that are sockets only, never widgets (anything not in WIDGET_TYPES and not a combo).
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
SEED_WIDGET_NAMES = frozenset({"seed", "noise_seed"})


@dataclass(frozen=True)
class InputSpec:
    """One declared input. ``kind`` is the ComfyUI type name; combos have kind ``COMBO`` and ``choices``."""

    name: str
    kind: str
    required: bool
    options: Mapping[str, Any] = field(default_factory=dict)
    choices: tuple[Any, ...] | None = None
    dynamic_choices: bool = False

    @property
    def is_widget(self) -> bool:
        """True for inputs the frontend shows as a widget (and stores in ``widgets_values``)."""
        return self.kind in WIDGET_TYPES and not self.options.get("forceInput", False)

    @property
    def has_seed_control(self) -> bool:
        """The frontend adds a 'control_after_generate' value right after this widget."""
        if self.kind != "INT":
            return False
        return bool(self.options.get("control_after_generate")) or self.name in SEED_WIDGET_NAMES

    @property
    def has_upload_widget(self) -> bool:
        """LoadImage-style combos get an extra 'upload' widget value after them."""
        return bool(self.options.get("image_upload"))


@dataclass(frozen=True)
class NodeSpec:
    """A node type's inputs (in widget order), hidden inputs and outputs."""

    class_type: str
    inputs: tuple[InputSpec, ...]
    hidden: Mapping[str, str]
    output_types: tuple[str, ...]
    output_names: tuple[str, ...]
    output_is_list: tuple[bool, ...]
    input_is_list: bool
    output_node: bool
    category: str = ""
    display_name: str = ""
    custom_validated: frozenset[str] = frozenset()  # inputs the node's VALIDATE_INPUTS checks instead

    def input(self, name: str) -> InputSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    @property
    def widgets(self) -> tuple[InputSpec, ...]:
        return tuple(i for i in self.inputs if i.is_widget)


def _input_spec(name: str, declared: Any, required: bool) -> InputSpec:
    if isinstance(declared, str):
        declared = (declared,)
    kind = declared[0]
    options = dict(declared[1]) if len(declared) > 1 and isinstance(declared[1], Mapping) else {}
    if isinstance(kind, (list, tuple)):
        choices = tuple(kind)
        dynamic = bool(options.get("_dynamic")) or not choices
        return InputSpec(name, "COMBO", required, options, choices, dynamic)
    if kind == "COMBO":  # V3-style combo: options carry the list
        choices = tuple(options.get("options", ()))
        dynamic = bool(options.get("_dynamic")) or not choices
        return InputSpec(name, "COMBO", required, options, choices, dynamic)
    return InputSpec(name, str(kind), required, options)


def spec_from_class(class_type: str, node_class: type, display_name: str = "") -> NodeSpec:
    """The spec of a V1 node class (``INPUT_TYPES``, ``RETURN_TYPES``...)."""
    declared = node_class.INPUT_TYPES()
    inputs = [_input_spec(n, d, True) for n, d in declared.get("required", {}).items()]
    inputs += [_input_spec(n, d, False) for n, d in declared.get("optional", {}).items()]
    hidden = {n: (d if isinstance(d, str) else d[0]) for n, d in declared.get("hidden", {}).items()}
    outputs = tuple(getattr(node_class, "RETURN_TYPES", ()))
    names = tuple(getattr(node_class, "RETURN_NAMES", outputs))
    is_list = tuple(getattr(node_class, "OUTPUT_IS_LIST", (False,) * len(outputs)))
    return NodeSpec(class_type, tuple(inputs), hidden, tuple(str(o) for o in outputs), names, is_list,
                    bool(getattr(node_class, "INPUT_IS_LIST", False)), bool(getattr(node_class, "OUTPUT_NODE", False)),
                    getattr(node_class, "CATEGORY", ""), display_name, frozenset(custom_validated_inputs(node_class)))


def custom_validated_inputs(node_class: type) -> list[str]:
    """The input names a ``VALIDATE_INPUTS`` classmethod takes; ComfyUI skips its own range and choice
    checks for those and calls the method instead."""
    import inspect

    method = getattr(node_class, "VALIDATE_INPUTS", None)
    if method is None:
        return []
    return [n for n in inspect.signature(method).parameters if n not in ("cls", "self", "input_types")]


def spec_from_object_info(class_type: str, info: Mapping[str, Any]) -> NodeSpec:
    """The spec of one entry of ComfyUI's ``/object_info`` (how core nodes are described in tests)."""
    declared = info.get("input", {})
    order = info.get("input_order", {})
    inputs = []
    for section, required in (("required", True), ("optional", False)):
        items = declared.get(section, {})
        names = order.get(section, list(items))
        inputs += [_input_spec(n, items[n], required) for n in names]
    hidden = {n: (d if isinstance(d, str) else d[0]) for n, d in declared.get("hidden", {}).items()}
    outputs = tuple(str(o) if not isinstance(o, list) else "COMBO" for o in info.get("output", ()))
    return NodeSpec(class_type, tuple(inputs), hidden, outputs, tuple(info.get("output_name", outputs)),
                    tuple(info.get("output_is_list", (False,) * len(outputs))), False,
                    bool(info.get("output_node", False)), info.get("category", ""), info.get("display_name", ""))


def specs_from_classes(classes: Mapping[str, type], display_names: Mapping[str, str] | None = None
                       ) -> dict[str, NodeSpec]:
    names = display_names or {}
    return {k: spec_from_class(k, c, names.get(k, k)) for k, c in classes.items()}


def types_compatible(output_type: str, input_type: str) -> bool:
    """ComfyUI's link rule: equal types, ``*`` on either side, or comma-separated alternatives."""
    if output_type == "*" or input_type == "*":
        return True
    outs = set(output_type.split(","))
    ins = set(input_type.split(","))
    return bool(outs & ins)
