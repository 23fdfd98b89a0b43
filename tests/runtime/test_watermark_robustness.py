"""Each attack family from issue 6 on a few real photos and a studio shot: the exact ID comes back, for both codec
versions (v1, and v3, the default since stop 28; v3 is v2's carrier with a 40-bit ID, so it covers v2's too).

The images are 400-740 px, so a 25% crop leaves 200-370 px. Wider sweeps (20+ photos, more sizes and
attack strengths, imwatermark side by side) are in tests/bench_watermark.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from comfyui_backdrop.runtime.watermark import carrier, detect, embed
from comfyui_backdrop.runtime.watermark.perceptual import luma
from tests.fixtures.watermark_images import blur, crop_area, jpeg, real_photos, resize, rotate, studio_shot, tone, webp

KEY = b"robustness-test-key-0123456789ab"
IDS = {"astronaut": 0x0123_4567_89AB_CDEF, "coffee": 0xFEDC_BA98_7654_3210, "rocket": 0x1111_2222_3333_4444,
       "motorcycle": 0x5A5A_A5A5_0F0F_F0F0, "immunohistochemistry": 0x8000_0000_0000_0001, "studio": 0x0BAD_CAFE}


@pytest.fixture(scope="module")
def originals() -> dict[str, np.ndarray]:
    return {**real_photos(), "studio": studio_shot()}


@pytest.fixture(scope="module", params=[1, 3], ids=["v1", "v3"])
def version(request) -> int:
    return request.param


@pytest.fixture(scope="module")
def marked(originals, version) -> dict[str, np.ndarray]:
    return {name: embed(image, payload(name, version), KEY, version=version) for name, image in originals.items()}


def payload(name: str, version: int) -> int:
    """The ID ``name`` carries: IDS, its top 40 bits under v3."""
    return IDS[name] >> 24 if version == 3 else IDS[name]


def tile_scales(originals: dict[str, np.ndarray], name: str, version: int) -> set[float]:
    """The scales an unresized image can report: each of its tile layers against 64 px (v2 renders 64 and/or
    128 px layers, and the detector reads whichever it finds first)."""
    if version == 1:
        return {1.0}
    return {period / 64.0 for period, _ in carrier.layers_for(luma(originals[name]))}


def assert_scale(details: dict, tiles: set[float], sx: float, sy: float) -> None:
    assert any(details["scale_x"] == pytest.approx(sx * t, rel=0.01)
               and details["scale_y"] == pytest.approx(sy * t, rel=0.01) for t in tiles), details


def assert_reads(image: np.ndarray, name: str, version: int) -> dict:
    result = detect(image, KEY)
    assert result.found, f"{name}: not found (sync z {result.details['sync_z']:.1f}, {result.details})"
    assert result.payload == payload(name, version) and result.version == version
    assert result.false_positive_probability <= 1e-6
    return result.details


@pytest.mark.parametrize(("name", "fx", "fy"), [("astronaut", 0.9, 0.1), ("coffee", 0.2, 0.8),
                                                ("motorcycle", 0.5, 0.5), ("studio", 0.0, 1.0)])
def test_crop_to_a_quarter_of_the_area_anywhere(marked, version, name, fx, fy):
    image = marked[name]
    crop = crop_area(image, 0.25, fx, fy)
    details = assert_reads(crop, name, version)
    if version != 1:
        return  # v2's tile origin carries the image's own keyed shift
    # the tile origin is found where the crop put it (mod one 64 px period)
    y0 = int((image.shape[0] - crop.shape[0]) * fy)
    x0 = int((image.shape[1] - crop.shape[1]) * fx)
    ox, oy = details["offset_px"]
    assert abs((ox + x0 + 32) % 64 - 32) < 1.0 and abs((oy + y0 + 32) % 64 - 32) < 1.0


@pytest.mark.parametrize(("name", "sx", "sy"), [("astronaut", 0.5, 0.5), ("rocket", 0.5, 0.5),
                                                ("coffee", 2.0, 2.0), ("studio", 2.0, 2.0),
                                                ("motorcycle", 0.9, 1.1), ("immunohistochemistry", 1.2, 0.8)])
def test_scale_and_aspect(marked, originals, version, name, sx, sy):
    details = assert_reads(resize(marked[name], sx, sy), name, version)
    assert_scale(details, tile_scales(originals, name, version), sx, sy)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "studio"])
def test_jpeg_quality_50_with_420_subsampling(marked, version, name):
    assert_reads(jpeg(marked[name], 50), name, version)


@pytest.mark.parametrize("name", ["rocket", "motorcycle", "studio"])
def test_webp(marked, version, name):
    assert_reads(webp(marked[name], 80), name, version)


@pytest.mark.parametrize("name", ["astronaut", "immunohistochemistry"])
def test_mild_blur(marked, version, name):
    assert_reads(blur(marked[name], 0.8), name, version)


@pytest.mark.parametrize(("name", "brightness", "contrast", "gamma"),
                         [("coffee", 15.0, 0.8, 1.3), ("rocket", -10.0, 1.2, 0.8), ("studio", -20.0, 1.0, 1.0)])
def test_brightness_contrast_gamma(marked, version, name, brightness, contrast, gamma):
    assert_reads(tone(marked[name], brightness, contrast, gamma), name, version)


@pytest.mark.parametrize(("name", "degrees"), [("astronaut", 5.0), ("motorcycle", -5.0), ("studio", 3.0)])
def test_small_rotations(marked, version, name, degrees):
    details = assert_reads(rotate(marked[name], degrees), name, version)
    assert abs(details["rotation_deg"] + degrees) < 0.2  # image y points down: a CCW turn reads negative


@pytest.mark.parametrize(("name", "scale", "quality"), [("astronaut", 0.8, 70), ("coffee", 1.25, 60),
                                                        ("rocket", 0.8, 60), ("studio", 1.5, 75)])
def test_crop_then_scale_then_jpeg(marked, originals, version, name, scale, quality):
    attacked = jpeg(resize(crop_area(marked[name], 0.25, 0.35, 0.65), scale), quality)
    details = assert_reads(attacked, name, version)
    assert_scale(details, tile_scales(originals, name, version), scale, scale)


def test_rotate_scale_jpeg(marked, version):
    assert_reads(jpeg(resize(rotate(marked["rocket"], -4.0), 0.75, 0.85), 60), "rocket", version)
