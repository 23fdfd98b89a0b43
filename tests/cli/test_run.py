"""`backdrop run` end to end: files in, files out, product pixels exact, failures reported."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from comfyui_backdrop.cli.main import main
from tests.fixtures.images import studio_product_photo


def _write(path, rgb: np.ndarray) -> None:
    if rgb.ndim == 2:
        cv2.imwrite(str(path), rgb)
    elif rgb.shape[2] == 4:
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGBA2BGRA))
    else:
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _read(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)


def _quick_run(photo, models, checkpoint: str) -> list[str]:
    """`backdrop run` arguments for one photo on a tiny checkpoint: 2 steps at 128 px, seed 7, mask saved, quiet
    (add --out and the options under test)."""
    return ["run", str(photo), "--models-dir", str(models), "--checkpoint", checkpoint, "--steps", "2",
            "--resolution", "128", "--seed", "7", "--save-mask", "--quiet"]


def test_run_keeps_product_pixels_exact(tmp_path, product_photo):
    photo, truth = product_photo
    _write(tmp_path / "bottle.png", photo)
    assert main(["run", str(tmp_path / "bottle.png"), "--style", "soft spring", "--out", str(tmp_path / "out"),
                 "--save-mask", "--quiet"]) == 0
    out = _read(tmp_path / "out" / "bottle_soft-spring.png")
    mask = cv2.imread(str(tmp_path / "out" / "bottle_mask.png"), cv2.IMREAD_GRAYSCALE)
    core = mask == 255
    assert core.sum() > 0.8 * truth.sum()
    assert np.array_equal(out[core], photo[core])
    background = ~cv2.dilate(truth.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    assert np.abs(out[background].astype(int) - photo[background].astype(int)).mean() > 5, "background unchanged"


def test_run_never_overwrites_and_is_deterministic(tmp_path, product_photo):
    _write(tmp_path / "p.png", product_photo[0])
    args = ["run", str(tmp_path / "p.png"), "--out", str(tmp_path / "o"), "--quiet"]
    assert main(args) == 0 and main(args) == 0
    first, second = tmp_path / "o" / "p_minimal-studio.png", tmp_path / "o" / "p_minimal-studio-1.png"
    assert first.exists() and second.exists()
    assert np.array_equal(_read(first), _read(second))


def test_one_bad_file_does_not_stop_the_batch(tmp_path, product_photo, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    _write(folder / "a.png", product_photo[0])
    (folder / "b.jpg").write_bytes(b"\xff\xd8 broken")
    _write(folder / "c.png", studio_product_photo(120, 90, seed=5)[0])
    code = main(["run", str(folder), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "b.jpg" in err and "2 file(s) written, 1 input(s) failed" in err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a_minimal-studio.png", "c_minimal-studio.png"]


def test_16bit_grayscale_and_rgba_inputs(tmp_path, product_photo):
    photo, _ = product_photo
    deep = photo.astype(np.uint16) * 257 + 3
    _write(tmp_path / "deep.png", deep)
    _write(tmp_path / "gray.png", cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY))
    cut = np.dstack([photo, np.where(product_photo[1], 255, 0).astype(np.uint8)])
    _write(tmp_path / "cut.png", cut)
    assert main(["run", str(tmp_path / "deep.png"), str(tmp_path / "gray.png"), str(tmp_path / "cut.png"),
                 "--out", str(tmp_path / "o"), "--save-mask", "--quiet"]) == 0
    out16 = cv2.imread(str(tmp_path / "o" / "deep_minimal-studio.png"), cv2.IMREAD_UNCHANGED)
    assert out16.dtype == np.uint16
    core = cv2.imread(str(tmp_path / "o" / "deep_mask.png"), cv2.IMREAD_GRAYSCALE) == 255
    assert core.any() and np.array_equal(out16[..., ::-1][core], deep[core])
    gray_out = _read(tmp_path / "o" / "gray_minimal-studio.png")
    assert gray_out.shape == photo.shape
    cut_core = cv2.imread(str(tmp_path / "o" / "cut_mask.png"), cv2.IMREAD_GRAYSCALE) == 255
    # an RGBA cut-out's own alpha is the product mask
    assert (cut_core & product_photo[1]).sum() >= 0.95 * cut_core.sum()
    assert np.array_equal(_read(tmp_path / "o" / "cut_minimal-studio.png")[cut_core], photo[cut_core])


@pytest.mark.parametrize("side", [8, 8000])
def test_extreme_sizes(tmp_path, side):
    h, w = (8, 8) if side == 8 else (48, 8000)
    image = np.full((h, w, 3), 235, np.uint8)
    image[h // 4 : 3 * h // 4, w // 3 : w // 2] = (30, 60, 200)
    _write(tmp_path / "x.png", image)
    assert main(["run", str(tmp_path / "x.png"), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert _read(tmp_path / "o" / "x_minimal-studio.png").shape == image.shape


def test_missing_sam_names_the_folder(tmp_path, product_photo, capsys):
    _write(tmp_path / "p.png", product_photo[0])
    (tmp_path / "models" / "sams").mkdir(parents=True)
    code = main(["run", str(tmp_path / "p.png"), "--sam", "sam_vit_h.pth", "--models-dir", str(tmp_path / "models"),
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "models/sams" in err and ".pth" in err and ".safetensors" in err


def test_unknown_style_and_bad_box_are_clear_errors(tmp_path, product_photo, capsys):
    _write(tmp_path / "p.png", product_photo[0])
    assert main(["run", str(tmp_path / "p.png"), "--style", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "Soft Spring" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "p.png"), "--box", "1,2,3", "--out", str(tmp_path / "o")]) == 2
    assert "x0,y0,x1,y1" in capsys.readouterr().err


def test_styles_command_lists_presets(capsys):
    assert main(["styles"]) == 0
    listed = capsys.readouterr().out
    assert "Soft Spring" in listed and "Glam" in listed


def test_prompt_json_records_captions_and_prompts(tmp_path, product_photo):
    import json

    _write(tmp_path / "p.png", product_photo[0])
    assert main(["run", str(tmp_path / "p.png"), "--out", str(tmp_path / "o"), "--prompt-json", "--quiet",
                 "--style", "glam", "--composition", "flat lay", "--scene", "on black marble"]) == 0
    record = json.loads((tmp_path / "o" / "p_glam.json").read_text())
    assert record["input"] == str(tmp_path / "p.png") and record["caption_source"] == "statistics"
    assert "on black marble" in record["positive"] and "flat lay" in record["positive"]
    assert "satin fabric and gold accents" in record["positive"] and record["negative"]
    assert record["background_caption"] and record["product_caption"]


def test_run_with_a_captioner_from_models_llm(tmp_path, product_photo):
    import json

    from tests.fixtures.caption_fixtures import build_tiny_blip

    build_tiny_blip(tmp_path / "models" / "LLM" / "tiny-blip")
    _write(tmp_path / "p.png", product_photo[0])
    assert main(["run", str(tmp_path / "p.png"), "--out", str(tmp_path / "o"), "--quiet",
                 "--captioner", "tiny-blip", "--models-dir", str(tmp_path / "models")]) == 0
    record = json.loads((tmp_path / "o" / "p_minimal-studio.json").read_text())
    assert record["captioner"] == "tiny-blip" and record["caption_source"] != "statistics"
    assert main(["run", str(tmp_path / "p.png"), "--out", str(tmp_path / "o"), "--quiet",
                 "--captioner", "nope", "--models-dir", str(tmp_path / "models")]) == 2


def test_run_with_a_checkpoint_generates_exact_product_variations(tmp_path, product_photo, inpaint_models):
    photo, _ = product_photo
    _write(tmp_path / "bottle.png", photo)
    args = ["run", str(tmp_path / "bottle.png"), "--out", str(tmp_path / "out"), "--models-dir", str(inpaint_models),
            "--checkpoint", "tiny-sd15-inpaint.safetensors", "--lora", "style_a.safetensors:0.6",
            "--steps", "2", "--resolution", "128", "--variations", "2", "--seed", "7", "--save-mask", "--quiet"]
    assert main(args) == 0
    mask = cv2.imread(str(tmp_path / "out" / "bottle_mask.png"), cv2.IMREAD_GRAYSCALE)
    product = mask >= 128  # the runtime's product threshold is 0.5
    outputs = [_read(tmp_path / "out" / f"bottle_minimal-studio_{k}.png") for k in range(2)]
    for out in outputs:
        assert np.array_equal(out[product], photo[product])
        assert np.abs(out[~product].astype(int) - photo[~product].astype(int)).mean() > 5
    assert not np.array_equal(outputs[0], outputs[1])


def test_run_with_a_missing_checkpoint_names_the_folder(tmp_path, product_photo, inpaint_models, capsys):
    _write(tmp_path / "p.png", product_photo[0])
    code = main(["run", str(tmp_path / "p.png"), "--models-dir", str(inpaint_models), "--checkpoint", "nope.ckpt",
                 "--quiet"])
    assert code == 2 and "models/checkpoints" in capsys.readouterr().err


def test_run_with_watermark_then_verify_finds_the_record(tmp_path, product_photo, inpaint_models, capsys):
    import json

    photo, _ = product_photo
    _write(tmp_path / "bottle.png", photo)
    args = ["run", str(tmp_path / "bottle.png"), "--out", str(tmp_path / "out"), "--models-dir", str(inpaint_models),
            "--checkpoint", "tiny-sd15-inpaint.safetensors", "--steps", "2", "--resolution", "128", "--save-mask",
            "--watermark", "--account", "studio-a", "--quiet"]
    assert main(args) == 0
    out_file = tmp_path / "out" / "bottle_minimal-studio.png"
    mask = cv2.imread(str(tmp_path / "out" / "bottle_mask.png"), cv2.IMREAD_GRAYSCALE)
    product = mask >= 128
    assert np.array_equal(_read(out_file)[product], photo[product])  # the mark goes around the product
    capsys.readouterr()
    assert main(["verify", str(out_file), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)["files"][0]
    assert found["found"] and found["record"]["account"] == "studio-a"
    assert "tiny-sd15-inpaint" in json.dumps(found["record"]["models"])


def test_checkpoint_captioner_prompt_json_and_outpaint_caption_each_photo_once(tmp_path, product_photo,
                                                                                inpaint_models, monkeypatch, capsys):
    """--checkpoint + --captioner + --prompt-json + --outpaint to another aspect, over a folder: every photo ok,
    every file written, and each photo captioned once (one product + one background generation)."""
    import json

    from comfyui_backdrop.runtime.captioning.captioner import Captioner
    from tests.fixtures.caption_fixtures import build_tiny_blip

    models = tmp_path / "models"
    models.mkdir()
    for kind in ("checkpoints", "loras"):
        (models / kind).symlink_to(inpaint_models / kind, target_is_directory=True)
    build_tiny_blip(models / "LLM" / "tiny-blip")
    photos = tmp_path / "photos"
    photos.mkdir()
    photo, _ = product_photo
    _write(photos / "a.png", photo)
    _write(photos / "b.png", photo[:, ::-1])
    generations = []
    real_caption = Captioner.caption

    def counting_caption(self, image, instruction, settings=None):
        generations.append(instruction)
        return real_caption(self, image, instruction, settings)

    monkeypatch.setattr(Captioner, "caption", counting_caption)
    out = tmp_path / "out"
    code = main(["run", str(photos), "--out", str(out), "--models-dir", str(models), "--quiet",
                 "--checkpoint", "tiny-sd15-inpaint.safetensors", "--captioner", "tiny-blip", "--prompt-json",
                 "--outpaint", "16:9", "--steps", "2", "--resolution", "128", "--save-mask"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "0 input(s) failed" in err and "FAILED" not in err
    assert len(generations) == 2 * 2  # two photos, each captioned once: product + background
    for stem in ("a", "b"):
        image = cv2.imread(str(out / f"{stem}_minimal-studio.png"))
        assert abs(image.shape[1] / image.shape[0] - 16 / 9) < 0.02  # outpainted to 16:9
        record = json.loads((out / f"{stem}_minimal-studio.json").read_text())
        assert record["caption_source"] != "statistics" and record["positive"]
        assert (out / f"{stem}_mask.png").is_file()


def test_out_naming_a_file_is_one_error_before_any_work(tmp_path, product_photo, capsys):
    _write(tmp_path / "p.png", product_photo[0])
    (tmp_path / "taken").write_text("not a folder")
    code = main(["run", str(tmp_path / "p.png"), "--out", str(tmp_path / "taken"), "--quiet"])
    assert code == 2 and "is a file; give a folder" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "not a folder"


def test_ctrl_c_stops_the_batch_with_a_summary_and_exit_130(tmp_path, product_photo, monkeypatch, capsys):
    """Ctrl-C while the second photo is processed: the first photo's file is listed, the rest are listed as not
    run, the exit code is 130 and no temporary file is left."""
    from comfyui_backdrop.runtime.masking import product_mask as masking

    photos = tmp_path / "photos"
    photos.mkdir()
    for stem in ("a", "b", "c"):
        _write(photos / f"{stem}.png", product_photo[0])
    real_mask, calls = masking.product_mask, []

    def mask_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_mask(*args, **kwargs)

    monkeypatch.setattr(masking, "product_mask", mask_then_ctrl_c)
    out = tmp_path / "out"
    assert main(["run", str(photos), "--out", str(out), "--quiet"]) == 130
    captured = capsys.readouterr()
    assert f"wrote {out / 'a_minimal-studio.png'}" in captured.out
    assert f"NOT RUN {photos / 'c.png'}" in captured.err and "interrupted" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["a_minimal-studio.png"]  # no temp files


def test_max_megapixels_sets_the_input_gate_and_the_refusal_names_the_flag(tmp_path, product_photo, capsys):
    _write(tmp_path / "p.png", product_photo[0])  # 517 x 389 = 0.2 MP
    assert main(["run", str(tmp_path / "p.png"), "--out", str(tmp_path / "o"), "--quiet",
                 "--max-megapixels", "0.1"]) == 1
    err = capsys.readouterr().err
    assert "megapixels are refused before decoding" in err and "--max-megapixels" in err
    assert main(["run", str(tmp_path / "p.png"), "--out", str(tmp_path / "o"), "--quiet",
                 "--max-megapixels", "0.3"]) == 0


def test_a_fully_transparent_cutout_is_refused_on_the_diffusion_path_too(tmp_path, product_photo, inpaint_models,
                                                                          capsys):
    rgba = np.dstack([product_photo[0], np.zeros(product_photo[0].shape[:2], np.uint8)])
    _write(tmp_path / "cut.png", rgba)
    code = main(["run", str(tmp_path / "cut.png"), "--out", str(tmp_path / "o"), "--quiet", "--models-dir",
                 str(inpaint_models), "--checkpoint", "tiny-sd15-inpaint.safetensors", "--steps", "1"])
    assert code == 1 and "fully transparent" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
