"""``backdrop train-lora`` on a FLUX.1 Fill diffusers folder: trains, checkpoints, resumes, saves a FLUX LoRA."""

from __future__ import annotations

import argparse

import pytest
from safetensors.torch import load_file

from comfyui_backdrop.cli.train import add_train_parser, run_train
from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.training.export import read_metadata
from tests.fixtures.training_fixtures import private_models_dir, write_product_folder

FILL = "diffusers/tiny-flux-fill"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="backdrop")
    add_train_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["train-lora", *argv])


def test_cli_trains_a_flux_lora_and_resumes(flux_models_root, tmp_path, capsys):
    models = private_models_dir(flux_models_root["root"], tmp_path / "models")
    photos = write_product_folder(tmp_path / "photos", count=2)
    common = ["--model", FILL, "--models-dir", str(models), "--resolution", "64", "--rank", "2", "--lr", "5e-3",
              "--device", "cpu", "--quiet", "--guidance", "10"]
    assert run_train(parse([str(photos), "--name", "flux_bg", "--steps", "3", "--checkpoint-every", "2",
                            *common])) == 0
    out = capsys.readouterr().out
    assert "dataset: 2 images" in out and "stage 1: 3 steps" in out
    path = models / "loras" / "flux_bg.safetensors"
    meta = read_metadata(path)
    assert meta["backdrop.family"] == "flux-fill" and meta["backdrop.guidance"] == "10"
    assert meta["backdrop.steps"] == "3" and meta["ss_network_module"] == "networks.lora_flux"
    keys = load_file(str(path))
    assert all(k.startswith("transformer.") for k in keys)
    assert "transformer.single_transformer_blocks.0.proj_mlp.alpha" in keys
    checkpoints = photos / ".backdrop-dataset" / "checkpoints" / "flux_bg"
    assert [p.name for p in checkpoints.iterdir()] == ["checkpoint-000002.pt"]

    assert run_train(parse([str(photos), "--name", "flux_bg", "--steps", "4", "--resume", *common])) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "checkpoint-000002.pt" in out
    assert read_metadata(models / "loras" / "flux_bg-1.safetensors")["backdrop.steps"] == "4"


def test_cli_refuses_a_flux_resolution_that_is_not_a_multiple_of_16(flux_models_root, tmp_path):
    models = private_models_dir(flux_models_root["root"], tmp_path / "models")
    photos = write_product_folder(tmp_path / "photos", count=1)
    with pytest.raises(InvalidInputError, match="FLUX trains at multiples of 16"):
        run_train(parse([str(photos), "--model", FILL, "--name", "x", "--models-dir", str(models),
                         "--resolution", "72", "--device", "cpu", "--quiet"]))
