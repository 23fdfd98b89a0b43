"""Watermark codec API: round trips in every dtype/layout, imperceptibility, bad input, re-marking policy."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.watermark import (
    MIN_DETECT_SIDE,
    MIN_SIDE,
    PAYLOAD_BITS,
    AlreadyWatermarkedError,
    Detection,
    ImageTooSmallError,
    detect,
    embed,
    is_marked,
)
from tests.fixtures.watermark_images import noise_image, psnr, real_photos, studio_shot

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
ID = 0xC0FFEE_1234_5678


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return real_photos()


@pytest.fixture(scope="module")
def marked_astronaut(photos) -> np.ndarray:
    return embed(photos["astronaut"], ID, KEY)


def test_round_trip_rgb_uint8(photos, marked_astronaut):
    original = photos["astronaut"]
    assert marked_astronaut.dtype == np.uint8 and marked_astronaut.shape == original.shape
    assert not np.array_equal(marked_astronaut, original)
    found = detect(marked_astronaut, KEY)
    assert isinstance(found, Detection)
    assert found.found and found.payload == ID
    assert found.false_positive_probability < 1e-12
    assert found.score == pytest.approx(-math.log10(found.false_positive_probability), rel=1e-6)
    for name in ("scale_x", "scale_y", "rotation_deg", "offset_px", "sync_z", "periods", "hypotheses", "crc_ok"):
        assert name in found.details
    assert found.details["scale_x"] == pytest.approx(1.0, abs=2e-3)
    assert is_marked(marked_astronaut, KEY)


def test_extreme_payloads_round_trip(photos):
    image = photos["coffee"]
    for payload in (0, 2**PAYLOAD_BITS - 1):
        assert detect(embed(image, payload, KEY), KEY).payload == payload


def test_input_is_never_mutated(photos):
    image = photos["rocket"].copy()
    before = image.copy()
    embed(image, ID, KEY)
    detect(image, KEY)
    assert np.array_equal(image, before)


def test_rgba_alpha_untouched_and_mark_readable(photos):
    rgb = photos["coffee"]
    alpha = np.tile(np.linspace(0, 255, rgb.shape[1], dtype=np.uint8), (rgb.shape[0], 1))
    rgba = np.dstack([rgb, alpha])
    out = embed(rgba, ID, KEY)
    assert out.shape == rgba.shape and out.dtype == np.uint8
    assert np.array_equal(out[:, :, 3], alpha)
    assert detect(out, KEY).payload == ID
    assert detect(out[:, :, :3], KEY).payload == ID


def test_gray_float_and_uint16_round_trip(photos):
    gray = cv2.cvtColor(photos["motorcycle"], cv2.COLOR_RGB2GRAY)
    out = embed(gray, ID, KEY)
    assert out.shape == gray.shape and out.dtype == np.uint8
    assert detect(out, KEY).payload == ID

    rgb = photos["rocket"]
    as_float = rgb.astype(np.float32) / 255.0
    out = embed(as_float, ID, KEY)
    assert out.dtype == np.float32 and out.shape == as_float.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert detect(out, KEY).payload == ID
    # float in -> the same image a uint8 pipeline would produce, to within rounding
    assert np.abs(out * 255.0 - embed(rgb, ID, KEY).astype(np.float32)).max() <= 1.0

    as_u16 = rgb.astype(np.uint16) * 257
    out = embed(as_u16, ID, KEY)
    assert out.dtype == np.uint16 and detect(out, KEY).payload == ID


def test_embedding_is_deterministic(photos):
    a = embed(photos["coffee"], ID, KEY)
    b = embed(photos["coffee"], ID, KEY)
    assert np.array_equal(a, b)


def test_psnr_at_least_40_db(photos):
    images = {**photos, "studio": studio_shot()}
    for name, image in images.items():
        value = psnr(embed(image, ID, KEY), image)
        assert value >= 40.0, f"{name}: PSNR {value:.2f} dB"


def test_strength_adapts_to_texture():
    """The mark is several times stronger in busy texture than in a flat area of the same image."""
    image = np.full((384, 512, 3), 128, np.uint8)
    image[:, 256:] = noise_image(384, 256, seed=3, sigma=25.0)
    delta = embed(image, ID, KEY).astype(np.float32) - image
    flat, busy = delta[:, :200], delta[:, 320:]
    assert np.sqrt(np.mean(busy**2)) > 2.5 * np.sqrt(np.mean(flat**2))


def test_no_visible_pattern_on_flat_near_white():
    """On a flat near-white sweep a v1 mark stays a faint, fine grain: no blotches, no clipping, no banding."""
    for level in (245, 250, 255):
        flat = np.full((384, 512, 3), level, np.uint8)
        out = embed(flat, ID, KEY, version=1)
        delta = out.astype(np.float32) - flat
        assert np.sqrt(np.mean(delta**2)) <= 1.35, level         # RMS of about one 8-bit level
        assert np.abs(delta).max() <= 5, level                    # no visible speckles (< 2% contrast)
        coarse = cv2.GaussianBlur(delta[:, :, 1], (0, 0), 4.0)    # what the eye sees from a distance:
        assert np.abs(coarse - coarse.mean()).max() <= 0.8, level  # < 0.35% contrast, below threshold
        assert np.array_equal(out[:, :, 0], out[:, :, 1])         # a neutral change: no colour cast
        assert detect(out, KEY).payload == ID, level              # and still carries the ID (clip-aware)


def test_unmarked_images_are_not_found(photos):
    images = [photos["astronaut"], photos["immunohistochemistry"], studio_shot(),
              np.full((300, 400, 3), 250, np.uint8), noise_image(320, 320, seed=5),
              noise_image(256, 384, seed=6, sigma=20, smooth=1.5)]
    for image in images:
        result = detect(image, KEY)
        assert not result.found and result.payload is None
        assert 1e-6 < result.false_positive_probability <= 1.0
        assert not result.details["crc_ok"] or result.false_positive_probability > 1e-6


def test_wrong_key_finds_nothing(marked_astronaut):
    result = detect(marked_astronaut, OTHER_KEY)
    assert not result.found and result.payload is None
    assert not is_marked(marked_astronaut, OTHER_KEY)


def test_too_small_images_state_the_minimum():
    small = np.zeros((MIN_SIDE - 1, 300, 3), np.uint8)
    with pytest.raises(ImageTooSmallError, match=rf"at least {MIN_SIDE} px") as info:
        embed(small, ID, KEY)
    assert f"300x{MIN_SIDE - 1}" in str(info.value)
    assert isinstance(info.value, InvalidInputError)
    tiny = np.zeros((40, MIN_DETECT_SIDE - 1), np.uint8)
    with pytest.raises(ImageTooSmallError, match=rf"at least {MIN_DETECT_SIDE} px"):
        detect(tiny, KEY)
    embed(np.full((MIN_SIDE, MIN_SIDE, 3), 128, np.uint8), ID, KEY)  # exactly the minimum is fine


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"payload": -1}, "payload must be in"),
        ({"payload": 2**64}, "payload must be in"),
        ({"payload": True}, "must be an integer"),
        ({"payload": 1.5}, "must be an integer"),
        ({"key": b"short"}, "at least 16 random bytes"),
        ({"key": "a string key 1234567"}, "must be bytes"),
        ({"strength": 0.0}, "strength must be in"),
        ({"strength": 9.0}, "strength must be in"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    args = {"image": np.full((200, 200, 3), 100, np.uint8), "payload": 1, "key": KEY, **kwargs}
    with pytest.raises(InvalidInputError, match=message):
        embed(**args)


def test_bad_images_are_rejected():
    with pytest.raises(InvalidInputError, match="unsupported image dtype"):
        embed(np.zeros((200, 200, 3), np.int32), 1, KEY)
    with pytest.raises(InvalidInputError, match="shape"):
        embed(np.zeros((200, 200, 5), np.uint8), 1, KEY)
    bad = np.full((200, 200, 3), 0.5, np.float32)
    bad[3, 4, 1] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        detect(bad, KEY)
    with pytest.raises(InvalidInputError, match="fpr_threshold"):
        detect(np.zeros((200, 200), np.uint8), KEY, fpr_threshold=0.0)


def test_remarking_same_payload_is_a_no_op(marked_astronaut):
    again = embed(marked_astronaut, ID, KEY)
    assert again is not marked_astronaut and np.array_equal(again, marked_astronaut)


def test_remarking_with_another_payload_is_refused(marked_astronaut):
    with pytest.raises(AlreadyWatermarkedError, match=str(ID)) as info:
        embed(marked_astronaut, ID + 1, KEY)
    assert info.value.existing_payload == ID
    assert isinstance(info.value, InvalidInputError)


def test_remarking_check_sees_a_recompressed_crop(marked_astronaut):
    from tests.fixtures.watermark_images import jpeg

    crop = jpeg(marked_astronaut[37:37 + 300, 91:91 + 320], 80)
    with pytest.raises(AlreadyWatermarkedError):
        embed(crop, ID + 1, KEY)


def test_marks_under_different_keys_coexist(photos):
    both = embed(embed(photos["coffee"], ID, KEY), 77, OTHER_KEY)
    assert detect(both, KEY).payload == ID
    assert detect(both, OTHER_KEY).payload == 77
