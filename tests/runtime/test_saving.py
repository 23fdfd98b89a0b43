"""Saving: formats, quality, resolution presets, workflow metadata, C2PA, never overwriting."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.provenance.c2pa_manifest import TRUSTED, read_manifest
from comfyui_backdrop.runtime.provenance.keys import load_keys
from comfyui_backdrop.runtime.saving import (
    RESOLUTION_PRESETS,
    SaveOptions,
    comfy_metadata,
    comfy_style_path,
    encode_image,
    read_comfy_metadata,
    resize_to_preset,
    save_image,
)
from tests.fixtures.images import studio_product_photo

PROMPT = {"3": {"class_type": "KSampler", "inputs": {"seed": 5, "positive": ["6", 0]}},
          "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "bottle on linen, é"}}}
WORKFLOW = {"workflow": {"last_node_id": 6, "nodes": [{"id": 6, "type": "CLIPTextEncode"}]}}


@pytest.fixture(scope="module")
def photo():
    return studio_product_photo(150, 200, seed=2)[0]


def _decode(path_or_bytes) -> tuple[str, np.ndarray]:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    with Image.open(io.BytesIO(data)) as picture:
        return picture.format, np.asarray(picture)


@pytest.mark.parametrize("fmt, pil_name, exact", [("png", "PNG", True), ("jpeg", "JPEG", False),
                                                  ("webp", "WEBP", False)])
def test_formats_and_metadata(tmp_path, photo, fmt, pil_name, exact):
    metadata = comfy_metadata(PROMPT, WORKFLOW)
    saved = save_image(photo, tmp_path / "out.png", SaveOptions(fmt=fmt, quality=90, c2pa=False, metadata=metadata))
    assert saved.path.suffix == {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}[fmt]
    kind, pixels = _decode(saved.path)
    assert kind == pil_name and pixels.shape == photo.shape
    error = np.abs(pixels.astype(int) - photo.astype(int)).mean()
    assert (error == 0) if exact else (0 < error < 3)
    entries = read_comfy_metadata(saved.path.read_bytes())
    assert json.loads(entries["prompt"]) == PROMPT and json.loads(entries["workflow"]) == WORKFLOW["workflow"]


def test_png_text_chunks_match_comfyui_saveimage(tmp_path, photo):
    """The same chunks ComfyUI's SaveImage writes (what its drag-and-drop loader reads)."""
    saved = save_image(photo, tmp_path / "a.png", SaveOptions(c2pa=False, metadata=comfy_metadata(PROMPT, WORKFLOW)))
    with Image.open(saved.path) as picture:
        assert picture.text == {"prompt": json.dumps(PROMPT), "workflow": json.dumps(WORKFLOW["workflow"])}


def test_exif_convention_for_webp(photo):
    data, _ = encode_image(photo, "webp", metadata=comfy_metadata(PROMPT, WORKFLOW))
    with Image.open(io.BytesIO(data)) as picture:
        exif = picture.getexif()
    assert exif[0x0110] == "prompt:" + json.dumps(PROMPT)
    assert exif[0x010F] == "workflow:" + json.dumps(WORKFLOW["workflow"])


def test_quality_and_lossless_webp(photo):
    low, _ = encode_image(photo, "jpeg", quality=30)
    high, _ = encode_image(photo, "jpeg", quality=95)
    assert len(low) < len(high)
    lossy_error = np.abs(_decode(low)[1].astype(int) - photo).mean()
    assert lossy_error > np.abs(_decode(high)[1].astype(int) - photo).mean()
    lossless, _ = encode_image(photo, "webp", quality=100)
    assert np.array_equal(_decode(lossless)[1], photo)


def test_resolution_presets_shrink_only(photo):
    big = np.zeros((1200, 2400, 3), np.uint8)
    assert resize_to_preset(big, "thumbnail (512 long edge)").shape == (256, 512, 3)
    assert resize_to_preset(big, "social (1080 long edge)").shape == (540, 1080, 3)
    small = resize_to_preset(photo, "2K (2048 long edge)")
    assert small.shape == photo.shape and small is not photo
    assert all(v is None or v >= 512 for v in RESOLUTION_PRESETS.values())
    with pytest.raises(InvalidInputError, match="resolution preset"):
        SaveOptions(resolution="8K")


def test_alpha_is_kept_in_png_and_webp(tmp_path, photo):
    rgba = np.dstack([photo, np.full(photo.shape[:2], 128, np.uint8)])
    for fmt in ("png", "webp"):
        _, pixels = _decode(save_image(rgba, tmp_path / "a", SaveOptions(fmt=fmt, quality=100, c2pa=False)).path)
        assert pixels.shape[2] == 4 and np.all(pixels[..., 3] == 128)
    _, pixels = _decode(save_image(rgba, tmp_path / "a", SaveOptions(fmt="jpeg", c2pa=False)).path)
    assert pixels.shape == photo.shape


def test_never_overwrites(tmp_path, photo):
    first = save_image(photo, tmp_path / "x.png", SaveOptions(c2pa=False))
    before = first.path.read_bytes()
    second = save_image(photo[::-1].copy(), tmp_path / "x.png", SaveOptions(c2pa=False))
    assert first.path.name == "x.png" and second.path.name == "x-1.png"
    assert first.path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp files left behind"


def test_comfy_style_names_continue_the_counter(tmp_path):
    (tmp_path / "shoots").mkdir()
    (tmp_path / "shoots" / "Backdrop_00007_.png").write_bytes(b"")
    (tmp_path / "shoots" / "Other_00042_.png").write_bytes(b"")
    path, subfolder = comfy_style_path(tmp_path, "shoots/Backdrop", "webp")
    assert path == tmp_path / "shoots" / "Backdrop_00008_.webp" and subfolder == "shoots"
    path, subfolder = comfy_style_path(tmp_path, "run_%width%x%height%", "jpeg", 640, 480)
    assert path.name == "run_640x480_00001_.jpg" and subfolder == ""
    for bad in ("../escape", "/etc/passwd", "a/../../b"):
        with pytest.raises(InvalidInputError, match="outside the output folder"):
            comfy_style_path(tmp_path, bad, "png")


def test_oversized_jpeg_metadata_goes_to_a_sidecar(tmp_path, photo):
    huge = comfy_metadata(PROMPT, {"workflow": {"nodes": ["x" * 100] * 800}})
    saved = save_image(photo, tmp_path / "big.jpg", SaveOptions(fmt="jpeg", c2pa=False, metadata=huge))
    assert saved.sidecar == tmp_path / "big.json" and saved.notes
    assert json.loads(saved.sidecar.read_text())["workflow"] == {"nodes": ["x" * 100] * 800}
    assert read_comfy_metadata(saved.path.read_bytes()) == {}
    # WebP has no such limit
    data, left_over = encode_image(photo, "webp", metadata=huge)
    assert not left_over and json.loads(read_comfy_metadata(data)["workflow"])["nodes"][0] == "x" * 100


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_c2pa_manifest_with_binding_from_the_final_pixels(tmp_path, photo, fmt):
    keys = load_keys(tmp_path / "home")
    seen = []

    def binding(pixels):
        seen.append(pixels.shape)
        return 0x42, "ef" * 32

    options = SaveOptions(fmt=fmt, c2pa=True, resolution="thumbnail (512 long edge)",
                          metadata=comfy_metadata(PROMPT, WORKFLOW))
    big = np.repeat(np.repeat(photo, 4, axis=0), 4, axis=1)  # 600x800 -> 384x512
    saved = save_image(big, tmp_path / "img", options, keys=keys, binding=binding)
    assert seen == [(384, 512, 3)] and (saved.width, saved.height) == (512, 384)
    info = read_manifest(saved.path, keys=keys)
    assert info.state == TRUSTED and info.watermark_ids == ["0000000000000042"] and info.record_hash == "ef" * 32
    assert saved.c2pa and saved.watermark_id == "0000000000000042"
    assert json.loads(read_comfy_metadata(saved.path.read_bytes())["prompt"]) == PROMPT


def test_c2pa_without_a_mark_is_noted(tmp_path, photo):
    saved = save_image(photo, tmp_path / "n.png", SaveOptions(), keys=load_keys(tmp_path / "h"),
                       binding=lambda _: (None, None))
    assert saved.c2pa and saved.watermark_id == "" and "no soft binding" in saved.notes[0]
    with pytest.raises(InvalidInputError, match="provenance keys"):
        save_image(photo, tmp_path / "n.png", SaveOptions())
