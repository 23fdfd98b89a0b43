"""`backdrop run --checkpoint diffusion_models/<FLUX file> --text-encoders ... --vae ...`: the folder's pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from comfyui_backdrop.cli.main import main
from tests.fixtures.flux_single_file_fixtures import FILL_FILE
from tests.fixtures.images import studio_product_photo


@pytest.fixture(scope="module")
def sf_models(tmp_path_factory):
    from tests.fixtures.flux_single_file_fixtures import build_single_file_models

    return build_single_file_models(tmp_path_factory.mktemp("flux-sf-cli") / "models")


def _run(tmp_path, sf_models, out: str, *model_args: str) -> list[np.ndarray]:
    args = ["run", str(tmp_path / "bottle.png"), "--out", str(tmp_path / out), "--models-dir", str(sf_models["root"]),
            *model_args, "--tokenizer-dir", str(sf_models["tokenizer"]), "--steps", "2", "--resolution", "128",
            "--variations", "2", "--seed", "7", "--quiet"]
    assert main(args) == 0
    return [cv2.imread(str(tmp_path / out / f"bottle_minimal-studio_{k}.png")) for k in range(2)]


def test_run_with_comfyui_single_files_matches_the_diffusers_folder(tmp_path, sf_models):
    photo, _ = studio_product_photo(77, 101, seed=5)
    cv2.imwrite(str(tmp_path / "bottle.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    single = _run(tmp_path, sf_models, "single", "--checkpoint", f"diffusion_models/{FILL_FILE}",
                  "--text-encoders", "clip_l.safetensors,t5xxl_fp16.safetensors", "--vae", "ae.safetensors")
    folder = _run(tmp_path, sf_models, "folder", "--checkpoint", "diffusers/tiny-flux-fill")
    for a, b in zip(single, folder, strict=True):
        assert a is not None and np.array_equal(a, b)
    assert not np.array_equal(single[0], single[1])


def test_run_names_a_missing_vae_and_refuses_components_for_a_folder(tmp_path, sf_models, capsys):
    cv2.imwrite(str(tmp_path / "bottle.png"), np.full((32, 32, 3), 200, np.uint8))
    base = ["run", str(tmp_path / "bottle.png"), "--out", str(tmp_path / "out"), "--models-dir",
            str(sf_models["root"]), "--tokenizer-dir", str(sf_models["tokenizer"]), "--steps", "1", "--quiet"]
    assert main([*base, "--checkpoint", f"diffusion_models/{FILL_FILE}", "--vae", "sdxl_vae.safetensors"]) != 0
    err = capsys.readouterr().err
    assert "sdxl_vae.safetensors" in err and "models/vae" in err and "ae.safetensors" in err
    assert main([*base, "--checkpoint", "diffusers/tiny-flux-fill", "--vae", "ae.safetensors"]) != 0
    assert "only for FLUX single files" in capsys.readouterr().err
