"""`backdrop run --checkpoint diffusers/<FLUX.1 Fill folder>` end to end: files in, exact product out."""

from __future__ import annotations

import cv2
import pytest

from comfyui_backdrop.cli.main import main
from tests.fixtures.images import studio_product_photo
from tests.fixtures.inpaint_checks import assert_run_outputs_product_exact


def test_run_with_a_flux_fill_folder_keeps_the_product_exact(tmp_path, flux_models):
    photo, _ = studio_product_photo(77, 101, seed=5)
    cv2.imwrite(str(tmp_path / "bottle.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    args = ["run", str(tmp_path / "bottle.png"), "--out", str(tmp_path / "out"), "--models-dir", str(flux_models),
            "--checkpoint", "diffusers/tiny-flux-fill", "--lora", "flux_kohya.safetensors:0.8",
            "--steps", "2", "--resolution", "128", "--variations", "2", "--seed", "7", "--save-mask", "--quiet"]
    assert main(args) == 0
    assert_run_outputs_product_exact(tmp_path / "out", photo, 2)


@pytest.mark.parametrize(("checkpoint", "cfg"), [("diffusers/tiny-flux-fill", 30.0),
                                                 ("diffusers/tiny-flux-kontext", 2.5), ("diffusers/not-there", 7.0)])
def test_cfg_defaults_to_what_the_model_is_made_for(tmp_path, flux_models, checkpoint, cfg):
    from comfyui_backdrop.cli.main import build_parser
    from comfyui_backdrop.cli.run_plan import RunPlan

    args = build_parser().parse_args(["run", str(tmp_path / "p.png"), "--models-dir", str(flux_models),
                                      "--checkpoint", checkpoint])
    assert RunPlan.from_args(args).inpaint.settings.cfg == cfg
    args = build_parser().parse_args(["run", str(tmp_path / "p.png"), "--models-dir", str(flux_models),
                                      "--checkpoint", checkpoint, "--cfg", "4"])
    assert RunPlan.from_args(args).inpaint.settings.cfg == 4.0
