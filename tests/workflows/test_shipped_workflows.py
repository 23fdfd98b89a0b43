"""The workflows in workflows/ load (UI and API form agree, nodes and widgets match their definitions,
links connect matching types) and the API forms run end to end on tiny models through our nodes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from comfyui_backdrop.cli.workflow import node_classes, node_specs
from comfyui_backdrop.runtime.host import HeadlessHost
from comfyui_backdrop.runtime.workflow.api_graph import apply_assignments, check_api_shape
from comfyui_backdrop.runtime.workflow.executor import execute_workflow
from comfyui_backdrop.runtime.workflow.specs import types_compatible
from comfyui_backdrop.runtime.workflow.ui_format import ui_to_api, widget_values_to_inputs
from comfyui_backdrop.runtime.workflow.validate import workflow_problems
from tests.fixtures.caption_fixtures import build_tiny_florence2
from tests.fixtures.docs_scripts import load_docs_script
from tests.fixtures.images import studio_product_photo, to_float
from tests.fixtures.sam_fixtures import build_tiny_sam, save_sam
from tests.fixtures.training_fixtures import write_product_folder

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
# The files, model and input names the shipped workflows refer to (the README's workflow table lists them).
EXPECTED_FILES = {"models/sams/sam_vit_b_01ec64.pth", "models/LLM/Florence-2-base/config.json",
                  "models/checkpoints/sd-v1-5-inpainting.safetensors", "models/loras/backdrop_background.safetensors",
                  "input/product.png", "input/suspicious.png", "input/catalog/a.png", "input/product_photos/a.png",
                  "models/diffusers/FLUX.1-Fill-dev/model_index.json"}
# Quick settings and the tiny models in place of the real ones, given the way users give them: --set.
TINY = ["Inpainting model.model=checkpoints/tiny-sd15-inpaint.safetensors", "Base model.model="
        "checkpoints/tiny-sd15-inpaint.safetensors", "SAM.sam_model=tiny_sam.safetensors",
        "Captioner (VLM).model=tiny-florence2", "BackdropInpaint.steps=2", "BackdropInpaint.resolution=128"]


GENERATOR = load_docs_script("make_workflows")


def _load(name: str, api: bool = False) -> dict:
    return json.loads((WORKFLOWS / ("api" if api else "") / f"{name}.json").read_text(encoding="utf-8"))


def _specs(root: Path) -> dict:
    """Our nodes' specs as they are now (combos listing ``root``'s input folder), and ComfyUI's core nodes from the
    0.8.0 snapshot."""
    return GENERATOR.load_specs(_host(root))


def _host(root: Path) -> HeadlessHost:
    return HeadlessHost(root / "input", root / "output")


@pytest.fixture()
def studio_with_expected_files(tmp_path, monkeypatch):
    """A ComfyUI-like folder where every model and input the workflows name exists (as placeholders), so
    machine-dependent combo lists contain them and validation is exact."""
    from comfyui_backdrop.runtime.models import ModelLocator, set_locator

    for relative in EXPECTED_FILES:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"placeholder")
    set_locator(ModelLocator.from_models_dir(tmp_path / "models"))
    yield tmp_path
    set_locator(None)


def test_the_eight_workflows_ship_in_both_forms_and_are_current():
    assert NAMES == ["catalog_folder", "engine_export_load", "flux_fill_headless", "native_flux_fill",
                     "native_ksampler", "product_background", "train_lora", "verify_image"]
    assert sorted(p.stem for p in (WORKFLOWS / "api").glob("*.json")) == NAMES
    stale = [str(p) for p, text in GENERATOR.render().items() if p.read_text(encoding="utf-8") != text]
    assert not stale, f"out of date (run python docs/make_workflows.py): {stale}"


@pytest.mark.parametrize("name", NAMES)
def test_api_form_validates_against_the_node_definitions(name, studio_with_expected_files):
    graph = check_api_shape(_load(name, api=True))
    assert workflow_problems(graph, _specs(studio_with_expected_files), strict=True) == []


@pytest.mark.parametrize("name", NAMES)
def test_ui_form_loads_and_converts_to_the_api_form(name, studio_with_expected_files):
    ui, specs = _load(name), _specs(studio_with_expected_files)
    assert ui["version"] == 0.4 and ui["last_node_id"] >= max(n["id"] for n in ui["nodes"])
    assert ui["last_link_id"] == len(ui["links"]) and len({n["id"] for n in ui["nodes"]}) == len(ui["nodes"])
    nodes = {n["id"]: n for n in ui["nodes"]}
    for link_id, origin, origin_slot, target, target_slot, kind in ui["links"]:
        out, into = nodes[origin]["outputs"][origin_slot], nodes[target]["inputs"][target_slot]
        assert link_id in out["links"] and into["link"] == link_id
        assert kind == out["type"] and types_compatible(kind, into["type"]), (name, link_id)
        declared = specs[nodes[target]["type"]].input(into["name"])
        assert declared is not None and types_compatible(kind, declared.kind), (name, into["name"])
    for node in ui["nodes"]:
        if node["type"] == "Note":
            continue
        spec = specs[node["type"]]  # every node exists: ours or a ComfyUI core node
        named = widget_values_to_inputs(spec, node["widgets_values"], f"{name} node {node['id']}")
        assert list(named) == [w.name for w in spec.widgets][:len(named)]
        assert [o["type"] for o in node["outputs"]] == list(spec.output_types)
    api = _load(name, api=True)
    converted = ui_to_api(ui, specs)
    assert {k: v["inputs"] for k, v in converted.items()} == {k: v["inputs"] for k, v in api.items()}
    assert {k: v["class_type"] for k, v in converted.items()} == {k: v["class_type"] for k, v in api.items()}


def test_a_reordered_or_retyped_widget_fails_validation(studio_with_expected_files):
    ui, specs = _load("product_background"), _specs(studio_with_expected_files)
    inpaint = next(n for n in ui["nodes"] if n["type"] == "BackdropInpaint")
    values = inpaint["widgets_values"]
    steps_at = [w.name for w in specs["BackdropInpaint"].widgets].index("steps") + 1  # +1: seed's control value
    values[steps_at], values[steps_at + 1] = values[steps_at + 1], values[steps_at]  # steps <-> cfg
    values[steps_at + 2] = "euler_a"
    problems = workflow_problems(ui_to_api(ui, specs), specs)
    assert any("scheduler: 'euler_a' is not one of" in p for p in problems)
    api = _load("native_ksampler", api=True)
    api["8"]["inputs"]["mask"] = ["2", 2]  # the preview IMAGE into a MASK input
    assert any("mask takes MASK but is linked to IMAGE" in p for p in workflow_problems(api, specs))


# ---- running the API forms on tiny models -------------------------------------------------------------------

@pytest.fixture(scope="module")
def studio(tmp_path_factory, inpaint_models_root):
    """models/ with tiny SAM, Florence-2, SD1.5 inpainting and LoRAs; input/ with the photos the workflows name."""
    root = tmp_path_factory.mktemp("studio")
    models = root / "models"
    models.mkdir()
    (models / "checkpoints").symlink_to(inpaint_models_root["root"] / "checkpoints", target_is_directory=True)
    shutil.copytree(inpaint_models_root["root"] / "loras", models / "loras")
    save_sam(build_tiny_sam(), models / "sams" / "tiny_sam.safetensors")
    build_tiny_florence2(models / "LLM" / "tiny-florence2")
    photo, _ = studio_product_photo(256, 320, seed=3)
    from comfyui_backdrop.runtime.imaging import write_image

    write_image(root / "input" / "product.png", to_float(photo))
    write_product_folder(root / "input" / "catalog", count=2, height=256, width=288)
    (root / "input" / "catalog" / "broken.png").write_bytes(b"not an image")
    write_product_folder(root / "input" / "product_photos", count=2)
    return root


@pytest.fixture()
def run(studio, inpaint_models_root, monkeypatch):
    """Run an API workflow with the tiny models: returns (ExecutionResult, graph)."""
    from comfyui_backdrop.runtime.models import ModelLocator, set_locator

    monkeypatch.setenv("BACKDROP_CLIP_TOKENIZER", str(inpaint_models_root["tokenizer"]))
    set_locator(ModelLocator.from_models_dir(studio / "models"))

    def _run(name: str, extra: list[str] = (), continue_on_error: bool = False):
        classes = node_classes(_host(studio))
        specs = node_specs(classes)
        graph = _load(name, api=True)
        usable = [a for a in [*TINY, *extra] if _names_node(graph, a)]
        graph = apply_assignments(graph, usable, specs)
        return execute_workflow(graph, classes, continue_on_error=continue_on_error), graph

    yield _run
    set_locator(None)


def _names_node(graph: dict, assignment: str) -> bool:
    ref = assignment.partition("=")[0].rpartition(".")[0]
    return any(ref in (k, n["class_type"], n.get("_meta", {}).get("title")) for k, n in graph.items())


def _saved(result, studio: Path) -> list[Path]:
    return [studio / "output" / i["subfolder"] / i["filename"] for ui in result.ui.values() for entry in ui
            for i in entry.get("images", [])]


def _read(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def test_product_background_runs_with_the_product_exact_then_verifies(run, studio):
    result, _ = run("product_background")
    files = _saved(result, studio)
    assert len(files) == 2 and all(f.suffix == ".png" and f.is_file() for f in files)  # 2 variations
    original = _read(studio / "input" / "product.png")
    product = result.output("9", 1)[0].numpy() == 1.0  # the product on the output canvas
    assert 0.05 < product[0].mean() < 0.9
    for index, path in enumerate(files):
        out = _read(path)
        assert np.array_equal(out[product[index]], original[product[index]])  # product pixels bit-exact
        assert not np.array_equal(out, original)  # a new background
    marked_ids = result.output("10", 1)[0].split("\n")
    assert len(marked_ids) == 2 and all(len(i) == 16 for i in marked_ids)

    shutil.copy(files[1], studio / "input" / "suspicious.png")
    verified, _ = run("verify_image")
    found, ids, signature, chain = (verified.output("2", i) for i in (0, 1, 4, 5))
    assert found == [True] and ids == [marked_ids[1]] and signature == ["valid"] and chain == ["intact"]
    assert marked_ids[1] in verified.ui["2"][0]["text"][0]  # the report shown on the node
    (presence,) = verified.output("2", 7)  # where the mark is: the new background, not the product kept exact
    presence = presence[0].numpy()
    assert presence.shape == product[1].shape and presence[~product[1]].mean() > 0.8
    record = json.loads(verified.output("2", 3)[0])
    assert record["prompt"] == result.output("7", 0)[0] and record["account"] == "studio" and record["seed"] == 42


def test_flux_fill_headless_runs_with_the_product_exact(run, studio, flux_models_root):
    """The FLUX.1 Fill workflow on a tiny FluxFillPipeline folder: FLUX's guidance 30 and euler, product exact."""
    folder = studio / "models" / "diffusers" / "tiny-flux-fill"
    if not folder.exists():
        folder.parent.mkdir(exist_ok=True)
        folder.symlink_to(flux_models_root["root"] / "diffusers" / "tiny-flux-fill", target_is_directory=True)
    result, graph = run("flux_fill_headless", ["Inpainting model.model=diffusers/tiny-flux-fill"])
    assert graph["9"]["inputs"]["cfg"] == 30.0 and graph["9"]["inputs"]["scheduler"] == "euler"
    assert result.output("8", 0)[0].family == "flux-fill"
    files = _saved(result, studio)
    assert len(files) == 2 and all(f.name.startswith("flux_fill") for f in files)
    original = _read(studio / "input" / "product.png")
    product = result.output("9", 1)[0].numpy() == 1.0
    for index, path in enumerate(files):
        out = _read(path)
        assert np.array_equal(out[product[index]], original[product[index]])
        assert not np.array_equal(out, original)
    assert all(len(i) == 16 for i in result.output("10", 1)[0].split("\n"))


def test_native_flux_fill_graph_names_the_core_nodes_it_needs(run):
    from comfyui_backdrop.runtime.workflow.validate import WorkflowError

    with pytest.raises(WorkflowError, match="only run inside ComfyUI: CLIPTextEncode, DifferentialDiffusion, "
                                            "DualCLIPLoader, FluxGuidance, InpaintModelConditioning, KSampler, "
                                            "UNETLoader, VAEDecode, VAELoader"):
        run("native_flux_fill")


def test_train_then_catalog_with_the_trained_lora(run, studio):
    trained, _ = run("train_lora", ["3.steps=2", "3.rank=2", "3.resolution=64", "3.checkpoint_every=0"])
    assert trained.output("3", 0) == ["backdrop_background.safetensors"]
    lora = studio / "models" / "loras" / "backdrop_background.safetensors"
    from safetensors import safe_open

    with safe_open(str(lora), "pt") as f:
        keys = list(f.keys())
    assert any(".attn1.to_q" in k or "attn1_to_q" in k for k in keys) and any("resnets" in k for k in keys)

    result, _ = run("catalog_folder", continue_on_error=True)
    assert not result.failures, [f.describe() for f in result.failures]
    files = _saved(result, studio)
    assert sorted(f.name.split("_")[0] + "_" + f.name.split("_")[1] for f in files) == ["product_0", "product_1"]
    assert "skipped broken.png" in result.output("1", 2)[0] and not result.failures
    originals = {p.stem: _read(p) for p in (studio / "input" / "catalog").glob("product_*.png")}
    masks = result.output("7", 1)
    for path, mask in zip(sorted(files), masks, strict=True):
        name = "_".join(path.name.split("_")[:2])
        keep = mask[0].numpy() == 1.0
        assert np.array_equal(_read(path)[keep], originals[name][keep])


def test_engine_export_then_load_runs_on_the_onnx_engine(run, studio):
    result, _ = run("engine_export_load", ["2.resolutions=128x128", "2.onnx_target=portable (refittable, "
                                           "TensorRT input)", "6.resolution=128"])
    engine = result.output("2", 0)[0]
    assert engine.startswith("onnx/") and (studio / "models" / engine).is_file()
    unet = result.output("3", 0)[0].pipe.unet
    assert type(unet).__name__ == "BackendUNet" and str(unet.backend.model_path).endswith(engine.split("/")[1])
    assert len(_saved(result, studio)) == 1


def test_a_shared_workflow_naming_missing_models_names_their_folders(studio, tmp_path):
    """What ComfyUI shows (through VALIDATE_INPUTS) when a workflow names a model this machine lacks."""
    from comfyui_backdrop.runtime.models import ModelLocator, set_locator
    from comfyui_backdrop.runtime.workflow.validate import WorkflowError

    (tmp_path / "models" / "loras").mkdir(parents=True)
    (tmp_path / "models" / "loras" / "style_a.safetensors").write_bytes(b"placeholder")
    set_locator(ModelLocator.from_models_dir(tmp_path / "models"))
    try:
        classes = node_classes(_host(studio))
        with pytest.raises(WorkflowError) as caught:
            execute_workflow(_load("catalog_folder", api=True), classes)
        (problem,) = [p for p in caught.value.problems if "Studio LoRA" in p]
        assert "Model 'backdrop_background.safetensors' was not found in models/loras" in problem
        assert "for example models/loras/" in problem and "style_a.safetensors" in problem
        assert classes["BackdropLoadEngine"].VALIDATE_INPUTS(engine="(engine input)") is True
        assert "must be onnx/<name> or tensorrt/<name>" in classes["BackdropLoadEngine"].VALIDATE_INPUTS(engine="x")
    finally:
        set_locator(None)


def test_native_ksampler_graph_names_the_core_nodes_it_needs(run):
    from comfyui_backdrop.runtime.workflow.validate import WorkflowError

    with pytest.raises(WorkflowError, match="only run inside ComfyUI: CLIPTextEncode, CheckpointLoaderSimple, "
                                            "KSampler, VAEDecode, VAEEncodeForInpaint"):
        run("native_ksampler")


@pytest.mark.skipif(not os.environ.get("BACKDROP_COMFYUI_URL"),
                    reason="set BACKDROP_COMFYUI_URL to a running ComfyUI with this pack to post the workflows to it")
@pytest.mark.parametrize("name", ["native_ksampler", "native_flux_fill"])
def test_native_workflows_are_accepted_by_a_live_comfyui(name):
    import urllib.request

    url = os.environ["BACKDROP_COMFYUI_URL"].rstrip("/")
    body = json.dumps({"prompt": _load(name, api=True)}).encode()
    request = urllib.request.Request(f"{url}/prompt", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        reply = json.loads(response.read())
    assert reply.get("prompt_id") and not reply.get("node_errors")


def test_backdrop_run_workflow_over_photos_reports_failures_and_continues(studio, inpaint_models_root, tmp_path,
                                                                         monkeypatch, capsys):
    from comfyui_backdrop.cli.main import main

    monkeypatch.setenv("BACKDROP_CLIP_TOKENIZER", str(inpaint_models_root["tokenizer"]))
    photos = tmp_path / "shoot"
    photos.mkdir()
    shutil.copy(studio / "input" / "product.png", photos / "bottle.png")
    (photos / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    graph = _load("product_background", api=True)
    wanted = [a for a in TINY if _names_node(graph, a)] + ["Save (C2PA).filename_prefix=shoot/bottle"]
    sets = [x for a in wanted for x in ("--set", a)]
    code = main(["run", "--workflow", str(WORKFLOWS / "api" / "product_background.json"), *sets,
                 "--models-dir", str(studio / "models"), "--out", str(out), "--quiet", str(photos)])
    assert code == 1  # one photo failed
    summary = json.loads((out / "backdrop-summary.json").read_text(encoding="utf-8"))
    assert (summary["runs"], summary["ok"], summary["failed"]) == (2, 1, 1)
    bottle, broken = summary["jobs"]  # folder contents in name order
    assert broken["status"] == "failed" and "broken.png is not a readable image" in broken["errors"][0]
    assert bottle["status"] == "ok" and len(bottle["outputs"]) == 2
    assert set(bottle["node_seconds"]) >= {"9 (New background (product exact))", "11 (Save (C2PA))"}
    assert all(Path(p).is_file() and Path(p).parent == out / "shoot" for p in bottle["outputs"])
    assert "FAILED" in capsys.readouterr().err

    code = main(["run", "--workflow", str(WORKFLOWS / "verify_image.json"), "--out", str(tmp_path / "checked"),
                 "--quiet", bottle["outputs"][0]])  # the UI form runs too
    assert code == 0
    assert "signature: valid; chain: intact" in capsys.readouterr().out


def test_ctrl_c_in_a_workflow_run_writes_the_summary_and_exits_130(studio, tmp_path, monkeypatch, capsys):
    """Ctrl-C during the second photo: the first photo's run is kept in the summary, the rest are listed as not
    run, and the exit code is 130."""
    from comfyui_backdrop.cli import workflow as workflow_command
    from comfyui_backdrop.cli.main import main

    photos = tmp_path / "shoot"
    photos.mkdir()
    for stem in ("a", "b", "c"):
        shutil.copy(studio / "input" / "product.png", photos / f"{stem}.png")
    real, calls = workflow_command.execute_workflow, []

    def execute_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(workflow_command, "execute_workflow", execute_then_ctrl_c)
    out = tmp_path / "out"
    code = main(["run", "--workflow", str(WORKFLOWS / "verify_image.json"), "--out", str(out), "--quiet",
                 str(photos)])
    assert code == 130
    summary = json.loads((out / "backdrop-summary.json").read_text(encoding="utf-8"))
    assert summary["interrupted"] is True
    assert [job["status"] for job in summary["jobs"]] == ["ok", "interrupted", "not run"]
    assert f"NOT RUN {photos / 'c.png'}" in capsys.readouterr().err


def test_backdrop_run_workflow_errors_before_running(tmp_path, capsys):
    from comfyui_backdrop.cli.main import main

    code = main(["run", "--workflow", str(WORKFLOWS / "api" / "verify_image.json"), "--set", "2.colour=red",
                 "--out", str(tmp_path), "--quiet"])
    assert code == 2 and "BackdropVerify has no input 'colour'" in capsys.readouterr().err
    code = main(["run", "--workflow", str(tmp_path / "missing.json"), "--out", str(tmp_path)])
    assert code == 2 and "workflow file not found" in capsys.readouterr().err


def test_dry_run_checks_model_names_without_running(studio, tmp_path, capsys):
    from comfyui_backdrop.cli.main import main

    out = tmp_path / "never"
    args = ["run", "--workflow", str(WORKFLOWS / "api" / "product_background.json"), "--dry-run",
            "--models-dir", str(studio / "models"), "--out", str(out), str(studio / "input" / "product.png")]
    assert main(args) == 1  # the shipped model names are not in the tiny models folder
    printed = capsys.readouterr().out
    assert "INVALID  " in printed and "node 2 (SAM): sam_model: Model 'sam_vit_b_01ec64.pth' was not found in " \
        "models/sams" in printed and "Found there: tiny_sam.safetensors" in printed
    assert "node 8 (Inpainting model): model: Model 'sd-v1-5-inpainting.safetensors' was not found in " \
        "models/checkpoints" in printed
    tiny = [x for a in TINY if _names_node(_load("product_background", api=True), a) for x in ("--set", a)]
    assert main([*args, *tiny]) == 0 and not out.exists()
    assert "ok  " in capsys.readouterr().out
