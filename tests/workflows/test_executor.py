"""The headless executor follows ComfyUI's rules: what runs, list mapping, failures per item, validation."""

from __future__ import annotations

import pytest

from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.workflow.api_graph import apply_assignments, find_node, parse_assignment
from comfyui_backdrop.runtime.workflow.executor import ItemFailure, execute_workflow
from comfyui_backdrop.runtime.workflow.specs import specs_from_classes
from comfyui_backdrop.runtime.workflow.ui_format import api_to_ui, ui_to_api, widget_values_to_inputs
from comfyui_backdrop.runtime.workflow.validate import WorkflowError, workflow_problems

CALLS: list[str] = []


class Numbers:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"count": ("INT", {"default": 3, "min": 1, "max": 10}),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 99})}}

    RETURN_TYPES = ("NUMBER", "STRING")
    OUTPUT_IS_LIST = (True, False)
    FUNCTION = "make"

    def make(self, count, seed):
        CALLS.append("Numbers")
        return (list(range(seed, seed + count)), f"{count} numbers")


class Reciprocal:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("NUMBER",), "scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0})},
                "optional": {"label": ("STRING", {"forceInput": True})}}

    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "run"

    def run(self, value, scale, label=None):
        CALLS.append("Reciprocal")
        return (scale / value,)


class Collect:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"values": ("FLOAT",), "mode": (["sum", "list"], {"default": "sum"})},
                "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    INPUT_IS_LIST = True
    FUNCTION = "collect"

    def collect(self, values, mode, prompt, unique_id):
        CALLS.append("Collect")
        return {"ui": {"values": list(values), "mode": mode, "nodes": sorted(prompt[0]), "id": unique_id}}


class Show:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("FLOAT",)}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "show"

    def show(self, value):
        return {"ui": {"value": [value]}}


CLASSES = {"Numbers": Numbers, "Reciprocal": Reciprocal, "Collect": Collect, "Show": Show}
SPECS = specs_from_classes(CLASSES)


def graph() -> dict:
    return {
        "1": {"class_type": "Numbers", "inputs": {"count": 3, "seed": 0}, "_meta": {"title": "Source"}},
        "2": {"class_type": "Reciprocal", "inputs": {"value": ["1", 0], "scale": 2.0, "label": ["1", 1]}},
        "3": {"class_type": "Collect", "inputs": {"values": ["2", 0], "mode": "list"}},
        "9": {"class_type": "Reciprocal", "inputs": {"value": ["1", 0], "scale": 5.0}},  # feeds no output node
    }


def test_lists_map_per_item_and_only_output_ancestors_run():
    CALLS.clear()
    result = execute_workflow({**graph(), "1": {**graph()["1"], "inputs": {"count": 3, "seed": 1}}}, CLASSES)
    assert result.output("2") == [2.0, 1.0, 2 / 3]  # mapped over the list, the short label list repeats its item
    assert CALLS == ["Numbers", "Reciprocal", "Reciprocal", "Reciprocal", "Collect"]  # node 9 never ran
    assert result.ui["3"] == [{"values": [2.0, 1.0, 2 / 3], "mode": ["list"], "nodes": ["1", "2", "3", "9"],
                                "id": ["3"]}]  # INPUT_IS_LIST: hidden values come as lists too, as in ComfyUI
    assert result.order == ["1", "2", "3"]


def test_a_failing_item_is_recorded_and_the_rest_continue():
    g = {**graph(), "4": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}  # seed 0: 2.0 / 0 fails
    with pytest.raises(ZeroDivisionError):
        execute_workflow(g, CLASSES)
    result = execute_workflow(g, CLASSES, continue_on_error=True)
    assert [type(v) for v in result.output("2")] == [ItemFailure, float, float]
    assert result.ui["4"] == [{"value": [2.0]}, {"value": [1.0]}]  # the failed item skipped Show, others shown
    assert len(result.failures) == 1 and result.failures[0].item == 0
    assert "node 2 (Reciprocal), item 0: ZeroDivisionError" in result.failures[0].describe()


@pytest.mark.parametrize(("change", "expected"), [
    (lambda g: g["1"]["inputs"].update(count=11), "count: 11 is above the maximum 10"),
    (lambda g: g["1"]["inputs"].update(count="3"), "count: expects an integer"),
    (lambda g: g["3"]["inputs"].update(mode="median"), "mode: 'median' is not one of: sum, list"),
    (lambda g: g["3"]["inputs"].update(values=["1", 0]), "values takes FLOAT but is linked to NUMBER"),
    (lambda g: g["3"]["inputs"].update(values=["7", 0]), "linked to node 7, which is not in the workflow"),
    (lambda g: g["3"]["inputs"].update(values=["2", 3]), "linked to output 3 of node 2, which has 1 outputs"),
    (lambda g: g["2"]["inputs"].pop("scale"), "required input 'scale' is missing"),
    (lambda g: g["2"]["inputs"].update(value=4), "value: is a NUMBER socket: it must be linked"),
    (lambda g: g["2"]["inputs"].update(colour="red"), "Reciprocal has no input 'colour'"),
    (lambda g: g.update({"5": {"class_type": "Mystery", "inputs": {}}}), "unknown node types: Mystery"),
    (lambda g: g["1"]["inputs"].update(count=["2", 0]), "cycle"),
])
def test_validation_names_each_problem(change, expected):
    g = graph()
    change(g)
    problems = workflow_problems(g, SPECS)
    assert any(expected in p for p in problems), problems
    if "has no input" in expected:  # ComfyUI ignores extra inputs when it runs; only the strict check flags them
        return
    with pytest.raises(WorkflowError, match="cannot run"):
        execute_workflow(g, {**CLASSES, "Mystery": Show} if "Mystery" not in expected else CLASSES)


def test_the_valid_graph_has_no_problems_and_missing_classes_are_named():
    assert workflow_problems(graph(), SPECS) == []
    with pytest.raises(WorkflowError, match="only run inside ComfyUI: Collect"):
        execute_workflow(graph(), {k: v for k, v in CLASSES.items() if k != "Collect"})


def test_set_assignments_are_typed_and_find_nodes_by_id_title_or_type():
    g = graph()
    changed = apply_assignments(g, ["Source.count=5", "3.mode=sum", "Numbers.seed=0x10"], SPECS)
    assert changed["1"]["inputs"] == {"count": 5, "seed": 16} and changed["3"]["inputs"]["mode"] == "sum"
    assert g["1"]["inputs"] == {"count": 3, "seed": 0}  # the original is untouched
    assert parse_assignment("My.Node.title.seed=a=b") == ("My.Node.title", "seed", "a=b")
    with pytest.raises(InvalidInputError, match="2 nodes have the class type 'Reciprocal'"):
        find_node(g, "Reciprocal")
    with pytest.raises(InvalidInputError, match="no node 'Nope'.*1 \\(Source\\)"):
        apply_assignments(g, ["Nope.count=1"], SPECS)
    with pytest.raises(InvalidInputError, match="has no input 'colour'; inputs: count, seed"):
        apply_assignments(g, ["1.colour=1"], SPECS)
    with pytest.raises(InvalidInputError, match="count takes a int, got 'many'"):
        apply_assignments(g, ["1.count=many"], SPECS)
    with pytest.raises(InvalidInputError, match="expected NODE.INPUT=VALUE"):
        apply_assignments(g, ["count=3"], SPECS)


def test_ui_format_round_trip_and_the_seed_control_value():
    g = graph()
    ui = api_to_ui(g, SPECS, {k: (0, 0) for k in g})
    numbers = next(n for n in ui["nodes"] if n["id"] == 1)
    assert numbers["widgets_values"] == [3, 0, "fixed"]  # the frontend stores a control mode after 'seed'
    reciprocal = next(n for n in ui["nodes"] if n["id"] == 2)
    assert [i["name"] for i in reciprocal["inputs"]] == ["value", "label"] and reciprocal["widgets_values"] == [2.0]
    converted = ui_to_api(ui, SPECS)
    assert {k: v["inputs"] for k, v in converted.items()} == {k: v["inputs"] for k, v in g.items()}
    for row in ui["links"]:
        origin = next(n for n in ui["nodes"] if n["id"] == row[1])
        assert row[0] in origin["outputs"][row[2]]["links"]


def test_reordered_widget_values_are_caught():
    spec = SPECS["Numbers"]
    assert widget_values_to_inputs(spec, [3, 7, "randomize"], "n") == {"count": 3, "seed": 7}
    with pytest.raises(InvalidInputError, match="only 3 widget positions"):
        widget_values_to_inputs(spec, [3, 7, "fixed", 9], "n")
    with pytest.raises(InvalidInputError, match="needs a value for 'seed'"):
        widget_values_to_inputs(spec, [3], "n")
    swapped = {"1": {"class_type": "Numbers", "inputs": widget_values_to_inputs(spec, [0, "fixed", 3], "n")}}
    assert any("seed: expects an integer" in p for p in workflow_problems(swapped, SPECS))


def test_reroutes_are_followed_and_primitive_nodes_give_their_value():
    g = graph()
    ui = api_to_ui(g, SPECS, {k: (0, 0) for k in g})
    link = next(row for row in ui["links"] if row[3] == 2 and row[4] == 0)  # Numbers -> Reciprocal.value
    reroute = {"id": 50, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 90}],
               "outputs": [{"name": "", "type": "NUMBER", "links": [link[0]]}]}
    primitive = {"id": 51, "type": "PrimitiveNode", "mode": 0, "outputs": [{"type": "FLOAT", "links": [91]}],
                 "widgets_values": [4.0, "fixed"]}
    ui["nodes"] += [reroute, primitive]
    ui["links"].append([90, 1, 0, 50, 0, "NUMBER"])
    link[1], link[2] = 50, 0
    target = next(n for n in ui["nodes"] if n["id"] == 2)
    target["inputs"].append({"name": "scale", "type": "FLOAT", "widget": {"name": "scale"}, "link": 91})
    ui["links"].append([91, 51, 0, 2, 2, "FLOAT"])
    converted = ui_to_api(ui, SPECS)
    assert set(converted) == {"1", "2", "3", "9"}
    assert converted["2"]["inputs"]["value"] == ["1", 0] and converted["2"]["inputs"]["scale"] == 4.0


class AddOne:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("FLOAT", {"forceInput": True})}}

    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "add"

    def add(self, x):
        return (x + 1.0,)


def test_a_long_chain_runs_without_hitting_the_recursion_limit():
    classes = {**CLASSES, "AddOne": AddOne}
    chain = {"n": {"class_type": "Numbers", "inputs": {"count": 1, "seed": 1}},
             "0": {"class_type": "Reciprocal", "inputs": {"value": ["n", 0], "scale": 1.0}}}
    for i in range(1, 3000):
        chain[str(i)] = {"class_type": "AddOne", "inputs": {"x": [str(i - 1), 0]}}
    chain["out"] = {"class_type": "Show", "inputs": {"value": ["2999", 0]}}
    specs = specs_from_classes(classes)
    chain["5"]["inputs"]["x"] = ["7", 0]  # 5 -> 7 -> 6 -> 5: a cycle deep in the chain is found
    assert any("cycle" in p for p in workflow_problems(chain, specs))
    chain["5"]["inputs"]["x"] = ["4", 0]
    assert execute_workflow(chain, classes).ui["out"] == [{"value": [3000.0]}]
