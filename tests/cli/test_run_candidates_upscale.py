"""`backdrop run --checkpoint ... --candidates K --keep-best N --upscale ...`: ranked candidates, super-resolution
and the second paste-back, end to end with the tiny inpainting model; product pixels exact at the photo's size."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from comfyui_backdrop.cli.main import main


def _write(path, rgb: np.ndarray) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _read(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)


@pytest.fixture()
def models(tmp_path, inpaint_models):
    """The tiny inpainting checkpoints plus models/upscale_models with a tiny x2 Real-ESRGAN compact."""
    root = tmp_path / "models"
    root.mkdir()
    (root / "checkpoints").symlink_to(inpaint_models / "checkpoints", target_is_directory=True)
    pytest.importorskip("spandrel", reason="the upscale extra (spandrel) is not installed")
    from safetensors.torch import save_file

    from tests.runtime.test_upscaling import tiny_compact_state

    (root / "upscale_models").mkdir()
    save_file(tiny_compact_state(2), str(root / "upscale_models" / "tiny_x2.safetensors"))
    return root


def _run(tmp_path, models, photo, *extra: str) -> int:
    _write(tmp_path / "bottle.png", photo)
    return main(["run", str(tmp_path / "bottle.png"), "--out", str(tmp_path / "out"), "--models-dir", str(models),
                 "--checkpoint", "tiny-sd15-inpaint.safetensors", "--steps", "2", "--resolution", "128",
                 "--save-mask", "--quiet", *extra])


def test_candidates_are_ranked_the_best_kept_upscaled_and_exact(tmp_path, product_photo, models, capsys):
    photo, _ = product_photo
    assert _run(tmp_path, models, photo, "--candidates", "3", "--keep-best", "2", "--upscale", "lanczos") == 0
    out = tmp_path / "out"
    product = cv2.imread(str(out / "bottle_mask.png"), cv2.IMREAD_GRAYSCALE) >= 128
    pictures = [_read(out / f"bottle_minimal-studio_{k}.png") for k in range(2)]
    assert not (out / "bottle_minimal-studio_2.png").exists()
    for picture in pictures:
        assert picture.shape == photo.shape  # delivered at the photo's own size
        assert np.array_equal(picture[product], photo[product])
        assert np.abs(picture[~product].astype(int) - photo[~product].astype(int)).mean() > 5
    record = json.loads((out / "bottle_minimal-studio_0.json").read_text())
    ranking = record["candidates"]
    assert [c["rank"] for c in ranking] == [0, 1, 2] and sorted(c["index"] for c in ranking) == [0, 1, 2]
    assert ranking[0]["score"] <= ranking[1]["score"] <= ranking[2]["score"]
    assert [c["output"] for c in ranking] == [str(out / "bottle_minimal-studio_0.png"),
                                              str(out / "bottle_minimal-studio_1.png"), None]
    assert set(ranking[0]["defects"]) == {"seam", "leakage", "cast", "clutter"}
    assert record["upscale"]["delivered"] == [517, 389] and record["upscale"]["generated"][0] < 517
    assert "ranked" in capsys.readouterr().out


def test_a_model_upscale_from_a_third_of_the_size(tmp_path, product_photo, models):
    photo, _ = product_photo
    assert _run(tmp_path, models, photo, "--upscale", "tiny_x2.safetensors", "--upscale-to", "3x",
                "--prompt-json") == 0
    out = tmp_path / "out"
    product = cv2.imread(str(out / "bottle_mask.png"), cv2.IMREAD_GRAYSCALE) >= 128
    picture = _read(out / "bottle_minimal-studio.png")
    assert picture.shape == photo.shape and np.array_equal(picture[product], photo[product])
    record = json.loads((out / "bottle_minimal-studio.json").read_text())
    assert record["upscale"] == {"method": "tiny_x2.safetensors", "to": "3x", "generated": [172, 130],
                                 "delivered": [517, 389]}


def test_an_aesthetic_predictor_in_the_models_folder_joins_the_ranking(tmp_path, product_photo, models):
    from tests.fixtures.aesthetic_fixtures import write_aesthetic_models

    write_aesthetic_models(models)
    photo, _ = product_photo
    assert _run(tmp_path, models, photo, "--candidates", "3") == 0  # --aesthetic auto: the one predictor there
    ranking = json.loads((tmp_path / "out" / "bottle_minimal-studio.json").read_text())["candidates"]
    ratings = [c["raw"]["aesthetic"] for c in ranking]
    assert [c["defects"]["aesthetic"] for c in ranking] == pytest.approx([max(ratings) - r for r in ratings], abs=1e-3)
    assert [c["rank"] for c in ranking] == [0, 1, 2] and ranking[0]["score"] <= ranking[1]["score"]
    (tmp_path / "none").mkdir()
    assert _run(tmp_path / "none", models, photo, "--candidates", "3", "--aesthetic", "none") == 0
    plain = json.loads((tmp_path / "none" / "out" / "bottle_minimal-studio.json").read_text())["candidates"]
    assert all("aesthetic" not in c["raw"] for c in plain)


@pytest.mark.parametrize(("extra", "message"), [
    (["--aesthetic", "tiny-aesthetic.safetensors"], "--aesthetic and --clip-vision rank candidates"),
    (["--candidates", "3", "--aesthetic", "missing.safetensors"], "models/aesthetic"),
    (["--candidates", "3", "--keep-best", "4"], "--keep-best must be 1..3"),
    (["--keep-best", "2"], "--keep-best needs --candidates"),
    (["--candidates", "3", "--variations", "2"], "replaces --variations"),
    (["--upscale", "missing_x4.pth"], "models/upscale_models"),
])
def test_bad_options_fail_before_any_photo(tmp_path, product_photo, models, capsys, extra, message):
    assert _run(tmp_path, models, product_photo[0], *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_candidates_need_a_checkpoint(tmp_path, product_photo, capsys):
    _write(tmp_path / "p.png", product_photo[0])
    assert main(["run", str(tmp_path / "p.png"), "--out", str(tmp_path / "out"), "--candidates", "3"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
