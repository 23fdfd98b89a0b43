"""Job parameters: checked against the catalog and the tier, and turned into exactly `backdrop run`'s plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfyui_backdrop.cli.main import build_parser
from comfyui_backdrop.cli.run_plan import RunPlan
from comfyui_backdrop.cli.serve.config import DataFolder, ServeConfig
from comfyui_backdrop.cli.serve.params import Catalog, JobParams, ParamError

CATALOG = Catalog(styles=("Minimal Studio", "Soft Spring"), compositions=("centered", "rule of thirds"),
                  models=("studio", "checkpoints/tiny.safetensors", "diffusers/tiny"), loras=("shop.safetensors",))


def form(**fields) -> dict[str, list[str]]:
    return {name: value if isinstance(value, list) else [str(value)] for name, value in fields.items()}


@pytest.mark.parametrize("fields, config", [
    ({}, {}),
    ({"style": "soft-spring", "scene": "--on a table", "seed": "41", "format": "jpeg", "variations": "3"},
     {"device": "cpu", "max_pixels": 12_345_678}),
    ({"model": "checkpoints/tiny.safetensors", "lora": ["shop.safetensors:0.5"], "variations": "2", "seed": "7",
      "composition": "Rule-of-Thirds", "format": "webp"}, {"tokenizer_dir": "/tok", "dtype": "fp32"}),
])
def test_the_worker_plan_is_the_plan_backdrop_run_builds(tmp_path, fields, config):
    """The worker builds its RunPlan without the CLI's parser; it must equal what `backdrop run` parses."""
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"x")
    (tmp_path / "models").mkdir()
    run_defaults = vars(build_parser().parse_args(["run", "-"]))
    settings = ServeConfig(data=DataFolder.at(tmp_path), models_dir=tmp_path / "models", run_defaults=run_defaults,
                           **config)
    params = JobParams.from_form(form(**fields), CATALOG, max_variations=8)
    for seed in (params.seed, params.seed + 1):
        kwargs = {"seed": seed, "variations": params.variations, "account": "acct_1", "config": settings}
        expected = RunPlan.from_args(build_parser().parse_args(params.run_argv(photo, tmp_path / "o", **kwargs)))
        assert params.run_plan(photo, tmp_path / "o", **kwargs) == expected
        assert expected.watermark.account == "acct_1" and expected.watermark.c2pa


def test_defaults_and_round_trip():
    params = JobParams.from_form({}, CATALOG, max_variations=1)
    assert (params.style, params.composition, params.variations, params.seed, params.format, params.model,
            params.resolution) == ("Minimal Studio", "centered", 1, 0, "png", "studio", "original")
    assert JobParams.from_json(params.to_json()) == params
    assert params.fingerprint("a") != params.fingerprint("b")


@pytest.mark.parametrize("fields, message, limit", [
    ({"style": "Neon"}, "unknown style 'Neon'; available: ", None),
    ({"variations": "3"}, "allows at most 2 per job", "max_variations"),
    ({"variations": "two"}, "variations must be a whole number", None),
    ({"seed": "-1"}, "seed must be 0..", None),
    ({"format": "gif"}, "use png, jpeg or webp", None),
    ({"resolution": "8k"}, "use one of original, 4k, 2k, web, social, thumbnail", None),
    ({"model": "../../etc/passwd"}, "unknown model '../../etc/passwd'", None),
    ({"lora": ["shop.safetensors"]}, "LoRAs need a diffusion model", None),
    ({"model": "diffusers/tiny", "lora": ["nope.safetensors"]}, "unknown LoRA 'nope.safetensors'", None),
    ({"model": "diffusers/tiny", "lora": ["shop.safetensors:nan"]}, "strength must be", None),
    ({"scene": "a\nb"}, "one line", None),
    ({"colour": "red"}, "unknown form field(s) colour", None),
    ({"style": ["Soft Spring", "Minimal Studio"]}, "style is given 2 times", None),
])
def test_bad_parameters_are_refused_with_a_reason(fields, message, limit):
    with pytest.raises(ParamError) as refused:
        JobParams.from_form(form(**fields), CATALOG, max_variations=2)
    assert message in str(refused.value) and refused.value.limit == limit


def test_output_size_follows_the_resolution_preset():
    params = JobParams.from_form(form(resolution="web"), CATALOG, max_variations=1)
    assert params.output_size(4000, 3000) == (1600, 1200)
    assert params.output_size(800, 600) == (800, 600), "never enlarged"
    assert params.saving_preset == "web (1600 long edge)"


def test_catalog_lists_the_models_folder(tmp_path):
    for kind, name in (("checkpoints", "a.safetensors"), ("loras", "l.safetensors")):
        (tmp_path / kind).mkdir()
        (tmp_path / kind / name).write_bytes(b"0")
    (tmp_path / "diffusers" / "pipe").mkdir(parents=True)
    catalog = Catalog.load(Path(tmp_path))
    assert catalog.models == ("studio", "checkpoints/a.safetensors", "diffusers/pipe")
    assert catalog.loras == ("l.safetensors",) and "Minimal Studio" in catalog.styles


def test_workers_keep_models_loaded_while_jobs_need_the_same_ones(tmp_path, monkeypatch):
    from comfyui_backdrop.cli import photo_steps
    from comfyui_backdrop.cli.serve.worker import JobExecutor

    loads = []
    monkeypatch.setattr(photo_steps, "load_models", lambda plan: loads.append(plan) or object())
    settings = ServeConfig(data=DataFolder.at(tmp_path), run_defaults=vars(build_parser().parse_args(["run", "-"])))
    executor = JobExecutor(settings, store=None, name="w0")
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"x")

    def plan(**fields):
        params = JobParams.from_form(form(**fields), CATALOG, max_variations=8)
        return params.run_plan(photo, tmp_path / "o", seed=params.seed, variations=params.variations,
                               account="acct_1", config=settings)

    first = executor.models(plan())
    assert executor.models(plan(style="Glam", seed="9", scene="a table")) is first
    diffusion = executor.models(plan(model="checkpoints/tiny.safetensors", seed="3"))
    assert executor.models(plan(model="checkpoints/tiny.safetensors", seed="4", variations="2")) is diffusion
    executor.models(plan(model="checkpoints/tiny.safetensors", lora=["shop.safetensors:0.5"]))
    assert len(loads) == 3, "a new photo, seed or prompt reloaded the models"
