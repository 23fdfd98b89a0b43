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
    name, report = BackdropTrainLoRA().train(styled, "catalog", "node_bg", **SETTINGS)
    assert name == "node_bg.safetensors" and (private_loras / name).is_file()
    assert "dataset: 2 images" in report and "stage 1: 3 steps" in report
    assert (3, 3) in calls and (2, 2) in calls  # dataset preparation, then training
    assert read_metadata(private_loras / name)["backdrop.rank"] == "2"
    (reloaded,) = BackdropLoRA().apply(pipeline, name, 1.0, enabled=True, fuse=False)
    assert reloaded.loras[-1].name == name


def test_node_explains_a_missing_dataset(private_loras, tmp_path, monkeypatch):
    use_node_host(monkeypatch, tmp_path / "input")
    (pipeline,) = BackdropInpaintLoader().load("checkpoints/tiny-sd15-inpaint.safetensors", "cpu", "auto")
    with pytest.raises(InvalidInputError, match="found neither as a path nor under"):
        BackdropTrainLoRA().train(pipeline, "nowhere", "x", **SETTINGS)
    assert BackdropTrainLoRA.CATEGORY == "Backdrop/training"
