"""Stage 2 (curated subset, continuing from stage 1) and the ``backdrop train-lora`` command."""

from __future__ import annotations

import argparse

import pytest
import torch

from comfyui_backdrop.cli.train import add_train_parser, run_train
from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.training.dataset import prepare_dataset
from comfyui_backdrop.runtime.training.export import read_metadata
from comfyui_backdrop.runtime.training.stage2 import curated_entries, read_scores, stage2_config
from comfyui_backdrop.runtime.training.trainer import TrainConfig, train_lora
from tests.fixtures.training_fixtures import locator_with_loras, private_models_dir, write_product_folder

SD15 = "checkpoints/tiny-sd15-inpaint.safetensors"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="backdrop")
    add_train_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["train-lora", *argv])


def test_scored_list_picks_top_k_and_weights(tmp_path):
    folder = write_product_folder(tmp_path / "photos", count=3)
    entries = prepare_dataset(folder).entries
    (tmp_path / "scores.csv").write_text("image,score\nproduct_0.png,0.2\nproduct_2.png,3\nproduct_1.png,1.5\n")
    assert read_scores(tmp_path / "scores.csv")[1] == ("product_2.png", 3.0)
    chosen = curated_entries(entries, tmp_path / "scores.csv", top_k=2, weighting="score")
    assert [e["image"].rsplit("/", 1)[-1] for e in chosen] == ["product_2.png", "product_1.png"]
    assert [e["weight"] for e in chosen] == [3.0, 1.5]
    assert all(e["weight"] == 1.0 for e in curated_entries(entries, tmp_path / "scores.csv"))
    (tmp_path / "bad.csv").write_text("product_0.png,1\nnot_there.png,2\n")
    with pytest.raises(InvalidInputError, match="not in the stage-1 dataset.*not_there.png"):
        curated_entries(entries, tmp_path / "bad.csv")


def test_stage2_starts_from_the_stage1_lora(inpaint_models_root, tmp_path, monkeypatch):
    from comfyui_backdrop.runtime.inpainting.loader import load_pipeline
    from comfyui_backdrop.runtime.models import set_locator

    monkeypatch.setenv("BACKDROP_CLIP_TOKENIZER", str(inpaint_models_root["tokenizer"]))
    set_locator(locator_with_loras(inpaint_models_root["root"], tmp_path / "loras"))
    try:
        entries = prepare_dataset(write_product_folder(tmp_path / "photos", count=2)).entries
        handle = load_pipeline(SD15)
        config = TrainConfig(steps=3, rank=2, resolution=64, learning_rate=5e-3)
        stage1 = train_lora(handle, entries, config)
        path = stage1.save("stage1")
        frozen = train_lora(handle, entries, stage2_config(config, path, steps=1, learning_rate=0.0))
        assert frozen.rank == 2 and frozen.alpha == 2.0
        for key, value in stage1.lora.items():
            torch.testing.assert_close(frozen.lora[key], value, atol=0, rtol=0)
        moved = train_lora(handle, entries[:1], stage2_config(config, path.name, steps=2))
        assert any(not torch.equal(moved.lora[k], v) for k, v in stage1.lora.items())
    finally:
        set_locator(None)


def test_cli_trains_resumes_and_runs_stage2(inpaint_models_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BACKDROP_CLIP_TOKENIZER", str(inpaint_models_root["tokenizer"]))
    models = private_models_dir(inpaint_models_root["root"], tmp_path / "models")
    photos = write_product_folder(tmp_path / "photos", count=3)
    (photos / "broken.png").write_bytes(b"garbage")
    common = ["--model", SD15, "--models-dir", str(models), "--resolution", "64", "--rank", "2", "--lr", "5e-3",
              "--device", "cpu", "--quiet"]
    assert run_train(parse([str(photos), "--name", "bg", "--steps", "4", "--checkpoint-every", "2", *common])) == 0
    out = capsys.readouterr().out
    assert "dataset: 3 images" in out and "skipped (unreadable): broken.png" in out
    meta = read_metadata(models / "loras" / "bg.safetensors")
    assert meta["backdrop.steps"] == "4" and meta["backdrop.base_model"] == SD15
    checkpoints = photos / ".backdrop-dataset" / "checkpoints" / "bg"
    assert [p.name for p in checkpoints.iterdir()] == ["checkpoint-000002.pt"]

    assert run_train(parse([str(photos), "--name", "bg", "--steps", "5", "--resume", *common])) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "checkpoint-000002.pt" in out and "(3 reused)" in out
    assert (models / "loras" / "bg-1.safetensors").is_file()  # the first LoRA is kept

    (tmp_path / "best.csv").write_text("product_1.png,5\nproduct_0.png,1\n")
    argv = [str(photos), "--name", "bg_final", "--steps", "2", "--curated", str(tmp_path / "best.csv"),
            "--stage2-steps", "2", "--top-k", "1", *common]
    assert run_train(parse(argv)) == 0
    final = read_metadata(models / "loras" / "bg_final.safetensors")
    assert final["backdrop.stage"] == "2" and final["backdrop.stage1_lora"] == "bg_final_stage1.safetensors"
    assert final["backdrop.dataset_hash"] != final["backdrop.stage1_dataset_hash"]


def test_cli_refuses_an_empty_folder(inpaint_models_root, tmp_path):
    models = private_models_dir(inpaint_models_root["root"], tmp_path / "models")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="holds no images"):
        run_train(parse([str(tmp_path / "empty"), "--model", SD15, "--name", "x", "--models-dir", str(models),
                         "--device", "cpu", "--quiet"]))
