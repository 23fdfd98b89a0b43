"""`backdrop run --checkpoint diffusers/<FLUX.1 Fill folder>` end to end: files in, exact product out."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from comfyui_backdrop.cli.main import main
from tests.fixtures.images import studio_product_photo


def test_run_with_a_flux_fill_folder_keeps_the_product_exact(tmp_path, flux_models):
    photo, _ = studio_product_photo(77, 101, seed=5)
    cv2.imwrite(str(tmp_path / "bottle.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    args = ["run", str(tmp_path / "bottle.png"), "--out", str(tmp_path / "out"), "--models-dir", str(flux_models),
            "--checkpoint", "diffusers/tiny-flux-fill", "--lora", "flux_kohya.safetensors:0.8",
            "--steps", "2", "--resolution", "128", "--variations", "2", "--seed", "7", "--save-mask", "--quiet"]
    assert main(args) == 0
    mask = cv2.imread(str(tmp_path / "out" / "bottle_mask.png"), cv2.IMREAD_GRAYSCALE)
    product = mask >= 128  # the runtime's product threshold is 0.5
    outputs = [cv2.cvtColor(cv2.imread(str(tmp_path / "out" / f"bottle_minimal-studio_{k}.png")), cv2.COLOR_BGR2RGB)
               for k in range(2)]
    assert product.any()
    for out in outputs:
        assert out.shape == photo.shape
        assert np.array_equal(out[product], photo[product])
        assert np.abs(out[~product].astype(int) - photo[~product].astype(int)).mean() > 5
    assert not np.array_equal(outputs[0], outputs[1])


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
