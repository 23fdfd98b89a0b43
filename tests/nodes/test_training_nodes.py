"""BackdropTrainLoRA through the node adapter: dataset under the input folder, progress, saved LoRA."""

from __future__ import annotations

import shutil

import pytest

from comfyui_backdrop.nodes.inpainting import BackdropInpaintLoader, BackdropLoRA
from comfyui_backdrop.nodes.training import BackdropTrainLoRA
from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.training.export import read_metadata
from tests.conftest import use_node_host
from tests.fixtures.training_fixtures import locator_with_loras, write_product_folder

SETTINGS = {"steps": 3, "rank": 2, "learning_rate": 5e-3, "resolution": 64, "seed": 1, "background_weight": 1.0,
            "product_weight": 0.1, "caption_dropout": 0.0, "checkpoint_every": 0, "resume": False}


@pytest.fixture()
def private_loras(inpaint_models_root, tmp_path, monkeypatch):
    from comfyui_backdrop.runtime.models import set_locator

    monkeypatch.setenv("BACKDROP_CLIP_TOKENIZER", str(inpaint_models_root["tokenizer"]))
    set_locator(locator_with_loras(inpaint_models_root["root"], tmp_path / "loras"))
    shutil.copy(inpaint_models_root["root"] / "loras" / "style_a.safetensors", tmp_path / "loras")
    yield tmp_path / "loras"
    set_locator(None)


def test_node_trains_from_a_folder_under_input(private_loras, tmp_path, monkeypatch):
    write_product_folder(tmp_path / "input" / "catalog", count=2)
    calls = []
    use_node_host(monkeypatch, tmp_path / "input", progress_factory=lambda total: lambda d, t: calls.append((d, t)))
    (pipeline,) = BackdropInpaintLoader().load("checkpoints/tiny-sd15-inpaint.safetensors", "cpu", "auto")
    (styled,) = BackdropLoRA().apply(pipeline, "style_a.safetensors", 1.0, enabled=True, fuse=False)
    photos_before = sorted(p.name for p in (tmp_path / "input" / "catalog").iterdir())
    returned = BackdropTrainLoRA().train(styled, "catalog", "node_bg", **SETTINGS)
    name, report = returned["result"]  # issue 14: the node also shows its summary (a UI dict, as BackdropVerify)
    assert returned["ui"] == {"text": [report]}
    assert name == "node_bg.safetensors" and (private_loras / name).is_file()
    # working files go under the output folder, never into the user's photo folder
    assert sorted(p.name for p in (tmp_path / "input" / "catalog").iterdir()) == photos_before
    work = BackdropTrainLoRA.host.output_directory() / "backdrop-training" / "catalog"
    assert (work / "manifest.json").is_file() and any((work / "masks").iterdir())
    assert "dataset: 2 images" in report and "stage 1: 3 steps" in report
    assert (3, 3) in calls and (2, 2) in calls  # dataset preparation, then training
    assert read_metadata(private_loras / name)["backdrop.rank"] == "2"
    (reloaded,) = BackdropLoRA().apply(pipeline, name, 1.0, enabled=True, fuse=False)
    assert reloaded.loras[-1].name == name


def test_node_explains_a_missing_dataset(private_loras, tmp_path, monkeypatch):
    use_node_host(monkeypatch, tmp_path / "input")
    (pipeline,) = BackdropInpaintLoader().load("checkpoints/tiny-sd15-inpaint.safetensors", "cpu", "auto")
    with pytest.raises(InvalidInputError, match="'nowhere' is not a folder in ComfyUI's input folder"):
        BackdropTrainLoRA().train(pipeline, "nowhere", "x", **SETTINGS)
    assert BackdropTrainLoRA.CATEGORY == "Backdrop/training"


def test_node_reads_only_folders_inside_the_input_folder(private_loras, tmp_path, monkeypatch):
    """Issue 14: any /prompt client could name a server path; the node now takes input folders only and never
    writes into the folder it reads."""
    outside = tmp_path / "elsewhere"
    write_product_folder(outside, count=2)
    write_product_folder(tmp_path / "input" / "catalog", count=2)
    (tmp_path / "input" / "best").mkdir()
    use_node_host(monkeypatch, tmp_path / "input", tmp_path / "output")
    spec = BackdropTrainLoRA.INPUT_TYPES()["required"]
    assert list(spec)[:3] == ["pipeline", "dataset", "lora_name"], "widget order is public API"
    assert spec["dataset"][0] == [".", "best", "catalog"] and spec["dataset"][1]["default"] in spec["dataset"][0]
    (pipeline,) = BackdropInpaintLoader().load("checkpoints/tiny-sd15-inpaint.safetensors", "cpu", "auto")
    before = sorted(p.name for p in outside.iterdir())
    for bad in (str(outside), "../elsewhere", "catalog/../../elsewhere"):
        with pytest.raises(InvalidInputError, match="is not a folder in ComfyUI's input folder"):
            BackdropTrainLoRA().train(pipeline, bad, "x", **SETTINGS)
    for bad in (str(outside), "../elsewhere/scores.csv"):
        with pytest.raises(InvalidInputError, match="outside ComfyUI's input folder"):
            BackdropTrainLoRA().train(pipeline, "catalog", "x", curated=bad, stage2_steps=1, **SETTINGS)
    assert sorted(p.name for p in outside.iterdir()) == before, "nothing was written outside the input folder"
    assert not (tmp_path / "input" / "catalog" / ".backdrop-dataset").exists()


def test_node_trains_a_flux_fill_lora_with_its_guidance(flux_models_root, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from comfyui_backdrop.runtime.models import set_locator

    set_locator(locator_with_loras(flux_models_root["root"], tmp_path / "loras"))
    try:
        write_product_folder(tmp_path / "input" / "catalog", count=2)
        use_node_host(monkeypatch, tmp_path / "input", tmp_path / "output")
        spec = BackdropTrainLoRA.INPUT_TYPES()
        assert list(spec["optional"])[-1] == "guidance", "new widgets go last"
        (pipeline,) = BackdropInpaintLoader().load("diffusers/tiny-flux-fill", "cpu", "auto")
        returned = BackdropTrainLoRA().train(pipeline, "catalog", "flux_node", **{**SETTINGS, "steps": 2},
                                             guidance=12.0)
        name, report = returned["result"]
        assert name == "flux_node.safetensors" and "stage 1: 2 steps" in report
        assert read_metadata(tmp_path / "loras" / name)["backdrop.guidance"] == "12"
        assert all(k.startswith("transformer.") for k in load_file(str(tmp_path / "loras" / name)))
        (reloaded,) = BackdropLoRA().apply(pipeline, name, 1.0, enabled=True, fuse=False)
        assert reloaded.loras[-1].name == name
    finally:
        set_locator(None)
