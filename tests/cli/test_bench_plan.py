"""`backdrop bench` options become one frozen plan; the shipped UNet configs are found wherever the CLI lives."""

from __future__ import annotations

import dataclasses
import json

import pytest

from comfyui_backdrop.cli.bench import BenchPlan, add_bench_parser, shipped_unet_config
from comfyui_backdrop.runtime.errors import InvalidInputError


def _args(*argv: str):
    import argparse

    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", *argv])


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_shipped_unet_configs_are_found(family):
    config = json.loads(shipped_unet_config(family).read_text())
    assert config["_class_name"] == "UNet2DConditionModel" and config["in_channels"] == 9


def test_plan_is_frozen_and_eager_comes_first():
    plan = BenchPlan.from_args(_args("--backends", "ort,eager", "--width", "640", "--size", "512", "--threads", "1"))
    assert plan.backends == ("eager", "ort") and (plan.height, plan.width) == (512, 640) and plan.latent == (64, 80)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.batch = 4


def test_plan_refuses_unknown_backends():
    with pytest.raises(InvalidInputError, match="unknown backends"):
        BenchPlan.from_args(_args("--backends", "eager,warp-drive", "--threads", "1"))
