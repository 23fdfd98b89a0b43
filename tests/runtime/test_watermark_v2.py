"""Codec v2 (issue 19): per-image carriers, the dihedral search, large tiles for thumbnails and flat shots.

Each new attack decodes the exact ID on a few images; unmarked images and marks under other keys give no
detection; v1 marks still read; PSNR >= 40 dB on every image. Rates over 25 images are in
benchmarks/bench_watermark.py.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.watermark import carrier, codec, detect
from comfyui_backdrop.runtime.watermark import embed as embed_any
from comfyui_backdrop.runtime.watermark.perceptual import luma
from tests.fixtures.watermark_images import (
    crop_area,
    jpeg,
    mirror,
    noise_image,
    psnr,
    real_photos,
    resize,
    skimage_photo,
    studio_shot,
    turn,
    webp,
)

KEY = b"watermark-v2-test-key-0123456789"
OTHER_KEY = b"another-installation-v2-key-0000"


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {**real_photos(), "studio": studio_shot()}


@pytest.fixture(scope="module")
def marked(photos) -> dict[str, tuple[np.ndarray, int]]:
    ids = {name: 0x2000_0000_0000_0000 + 7919 * i for i, name in enumerate(photos)}
    return {name: (embed(image, ids[name], KEY, version=2), ids[name]) for name, image in photos.items()}


@pytest.fixture(scope="module")
def large() -> dict[str, tuple[np.ndarray, int]]:
    """~1 MP images (the thumbnail targets are for >= 1 MP): a photo and a flat studio shot, marked."""
    images = {"astronaut": resize(skimage_photo("astronaut"), 2.0),
              "studio": studio_shot(1024, 1280, seed=2)}
    return {name: (embed(image, 0x0FED_CBA9_8765_4321 + i, KEY, version=2), 0x0FED_CBA9_8765_4321 + i)
            for i, (name, image) in enumerate(images.items())}


def embed(image: np.ndarray, payload: int, key: bytes, **options) -> np.ndarray:
    """The codec's embed, writing v2 unless told otherwise (v3, the default since stop 28, has its own tests)."""
    return embed_any(image, payload, key, **{"version": 2, **options})


def reads(image: np.ndarray, payload: int) -> codec.Detection:
    result = detect(image, KEY)
    assert result.found, f"not found: {result.details}"
    assert result.payload == payload and result.version == 2
    assert result.false_positive_probability <= 1e-6
    return result


def test_round_trip_psnr_and_determinism(photos, marked):
    for name, image in photos.items():
        out, payload = marked[name]
        assert out.dtype == image.dtype and out.shape == image.shape
        assert psnr(out, image) >= 40.0, name
        assert reads(out, payload).details["version"] == 2
    image, (out, payload) = photos["coffee"], marked["coffee"]
    assert np.array_equal(embed(image, payload, KEY, version=2), out)


def test_psnr_floor_holds_near_white_and_black():
    """Headroom shifts and rounding count against v2's PSNR promise: >= 40 dB on every image."""
    image = skimage_photo("camera")
    near_white = np.clip(image.astype(np.int32) // 3 + 175, 0, 255).astype(np.uint8)
    near_black = (image // 4).astype(np.uint8)
    for sample in (near_white, near_black, noise_image(320, 320, seed=4, sigma=70)):
        assert psnr(embed(sample, 99, KEY, version=2), sample) >= 40.0


def test_a_flat_near_white_sweep_gets_a_faint_coarse_grain_and_no_colour_cast():
    """v2's 128 px tile sits lower in frequency than v1's (what JPEG 20 keeps on a sweep), so a 4 px blur keeps
    more of it; the bounds are the documented ones: <= 0.35 levels RMS (0.14% contrast) after that blur, peaks
    under 0.55%, no speckle over 6 levels (255: the headroom shift), neutral, and still readable."""
    for level in (245, 250, 255):
        flat = np.full((384, 512, 3), level, np.uint8)
        out = embed(flat, 77, KEY)
        delta = out.astype(np.float32) - flat
        assert np.sqrt(np.mean(delta**2)) <= 1.35 and np.abs(delta).max() <= 6, level
        coarse = cv2.GaussianBlur(delta[:, :, 1], (0, 0), 4.0)
        assert coarse.std() <= 0.35 and np.abs(coarse - coarse.mean()).max() <= 0.0055 * level, level
        assert np.array_equal(out[:, :, 0], out[:, :, 1]) and np.array_equal(out[:, :, 1], out[:, :, 2])
        assert reads(out, 77).details["version"] == 2, level


def test_gray_float_rgba_round_trip(photos):
    rgb = photos["rocket"]
    as_float = rgb.astype(np.float32) / 255.0
    assert reads(embed(as_float, 5, KEY, version=2), 5)
    gray = luma(rgb).astype(np.uint8)
    assert reads(embed(gray, 6, KEY, version=2), 6)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])
    out = embed(rgba, 7, KEY, version=2)
    assert np.array_equal(out[:, :, 3], rgba[:, :, 3]) and reads(out, 7)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "studio"])
@pytest.mark.parametrize("attack", ["mirror left-right", "mirror top-bottom", "rotate 90", "rotate 180",
                                    "rotate 270"])
def test_mirrors_and_quarter_turns(marked, name, attack):
    image, payload = marked[name]
    attacked = {"mirror left-right": lambda: mirror(image, True), "mirror top-bottom": lambda: mirror(image, False),
                "rotate 90": lambda: turn(image, 1), "rotate 180": lambda: turn(image, 2),
                "rotate 270": lambda: turn(image, 3)}[attack]()
    result = reads(attacked, payload)
    assert result.details["mirrored"] == attack.startswith("mirror")


@pytest.mark.parametrize("name", ["astronaut", "studio"])
@pytest.mark.parametrize("scale", [0.33, 0.25])
def test_thumbnails_of_a_megapixel_image(large, name, scale):
    image, payload = large[name]
    reads(resize(image, scale), payload)


def test_mirrored_thumbnail_recompressed(large):
    image, payload = large["astronaut"]
    reads(jpeg(resize(mirror(image), 0.33), 75), payload)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "studio"])
def test_jpeg_quality_20(marked, name):
    image, payload = marked[name]
    reads(jpeg(image, 20), payload)


@pytest.mark.parametrize("name", ["rocket", "motorcycle", "studio"])
def test_webp_quality_40(marked, name):
    image, payload = marked[name]
    reads(webp(image, 40), payload)


def test_flat_studio_shots_survive_heavy_compression_at_1_mp(large):
    image, payload = large["studio"]
    reads(jpeg(image, 20), payload)
    reads(webp(image, 40), payload)


@pytest.mark.parametrize(("name", "fx", "fy"), [("rocket", 0.3, 0.6), ("studio", 0.8, 0.2)])
def test_crop_to_a_tenth_of_the_area(marked, name, fx, fy):
    image, payload = marked[name]
    reads(crop_area(image, 0.1, fx, fy), payload)


@pytest.mark.parametrize("name", ["astronaut", "studio"])
def test_crop_quarter_halve_then_jpeg_60(large, name):
    image, payload = large[name]
    reads(jpeg(resize(crop_area(image, 0.25, 0.4, 0.6), 0.5), 60), payload)


def test_the_tile_period_follows_size_and_flatness():
    assert carrier.period_for(luma(skimage_photo("astronaut"))) == 64          # small and busy
    assert carrier.period_for(luma(studio_shot(480, 640))) == 128               # small but flat
    assert carrier.period_for(luma(resize(skimage_photo("astronaut"), 2.0))) == 128  # 1 MP
    assert carrier.period_for(luma(studio_shot(200, 300))) == 64                # too small for two large tiles


def test_each_image_gets_its_own_carrier():
    """The nonce differs between IDs, and the carrier of two IDs shares no sync pattern at the same place."""
    nonces = {carrier.nonce(KEY, payload) for payload in range(64)}
    assert len({n.variant for n in nonces}) == carrier.VARIANTS
    assert len({n.dihedral for n in nonces}) == carrier.DIHEDRAL
    assert len({n.shift for n in nonces}) == 64
    coded = np.zeros(528, np.uint8)  # the same coded bits: only the carrier differs
    a = carrier.tile(KEY, coded, carrier.nonce(KEY, 1), 64).astype(np.float64)
    b = carrier.tile(KEY, coded, carrier.nonce(KEY, 2), 64).astype(np.float64)
    assert abs(float(np.mean(a * b))) < 0.1


def test_dihedral_transforms_form_the_group_of_the_square():
    tile = np.arange(36.0).reshape(6, 6)
    images = {carrier.dihedral(tile, k).tobytes() for k in range(8)}
    assert len(images) == 8
    for k in range(8):  # each keeps the tile periodic: the spectrum's magnitudes are only permuted
        spectrum = np.sort(np.abs(np.fft.fft2(carrier.dihedral(tile, k))).ravel())
        assert np.allclose(spectrum, np.sort(np.abs(np.fft.fft2(tile)).ravel()))


def test_unmarked_and_other_key_images_give_nothing(photos):
    images = [photos["astronaut"], photos["studio"], noise_image(300, 400, seed=9, sigma=30),
              np.full((256, 256, 3), 250, np.uint8), mirror(photos["coffee"]), turn(photos["rocket"])]
    images += [embed(photos["coffee"], 123, OTHER_KEY, version=2), embed(photos["motorcycle"], 456, OTHER_KEY),
               resize(embed(photos["rocket"], 789, OTHER_KEY, version=2), 0.5)]
    for image in images:
        result = detect(image, KEY)
        assert not result.found and result.payload is None and result.version == 0
        assert result.false_positive_probability > 1e-6


def test_v1_marks_still_read_and_report_their_version(photos):
    old = embed(photos["coffee"], 0xABCDEF, KEY, version=1)
    result = detect(old, KEY)
    assert result.found and result.payload == 0xABCDEF and result.version == 1
    assert result.details["version"] == 1
    assert detect(old, KEY, versions=(2,)).found is False  # the v2 search alone does not see a v1 mark
    assert detect(jpeg(resize(old, 0.5), 75), KEY).payload == 0xABCDEF


def test_both_versions_count_in_the_false_positive_bound():
    one = codec._Scorer(1, 5, 1).log10_fpp(7.0, True)
    both = codec._Scorer(1, 5, 2).log10_fpp(7.0, True)
    assert both - one == pytest.approx(np.log10(2))
    v2 = codec._Scorer(2, 5, 2).log10_fpp(7.0, True)  # 8 transforms x VARIANTS, less the nonce check
    assert v2 - both == pytest.approx(np.log10(carrier.DIHEDRAL))


def test_remarking_sees_marks_of_either_version(photos, marked):
    image, payload = marked["astronaut"]
    assert np.array_equal(embed(image, payload, KEY, version=2), image)
    with pytest.raises(codec.AlreadyWatermarkedError) as info:
        embed(image, payload + 1, KEY, version=1)
    assert info.value.existing_payload == payload
    old = embed(photos["rocket"], 31337, KEY, version=1)
    with pytest.raises(codec.AlreadyWatermarkedError):
        embed(old, 31338, KEY, version=2)


def test_unknown_versions_are_refused(photos):
    with pytest.raises(InvalidInputError, match="version"):
        embed(photos["coffee"], 1, KEY, version=4)
    with pytest.raises(InvalidInputError, match="version"):
        detect(photos["coffee"], KEY, versions=(7,))


# ------------------------------------------------------------------ small crops and enlarged crops (issue 19, round 2)
# The crop cases below failed on the first v2 (one 128 px layer on large images, 148 sync chips, no half-level
# lattice search under 576 px): sync z 4.9-5.8 against a threshold of ~5.9, or a payload that no longer decoded.
# The thumbnail and JPEG 20 / WebP 40 cases passed on it too: they guard what the two layers and the punctured
# code must keep.

BUSY_IDS = (0x0FED_CBA9_8765_4321, 0x2000_0000_0000_1EEF)


@pytest.fixture(scope="module")
def busy_megapixel() -> dict[int, np.ndarray]:
    """A busy 1 MP picture (microscopy, 1024 px) marked with two IDs: it carries both layers."""
    image = resize(skimage_photo("immunohistochemistry"), 2.0)
    return {payload: embed(image, payload, KEY, version=2) for payload in BUSY_IDS}


def test_a_large_busy_picture_carries_two_layers_and_a_small_one_one():
    busy = luma(resize(skimage_photo("immunohistochemistry"), 2.0))
    assert carrier.layers_for(busy) == ((128, 1.0 - carrier.FINE_SHARE), (64, carrier.FINE_SHARE))
    assert carrier.layers_for(luma(skimage_photo("astronaut"))) == ((64, 1.0),)
    under_1mp = luma(resize(skimage_photo("immunohistochemistry"), 1.5))  # 768 px: busy, under 1 MP
    assert carrier.layers_for(under_1mp) == ((128, 1.0 - carrier.MID_FINE_SHARE), (64, carrier.MID_FINE_SHARE))
    assert carrier.layers_for(luma(studio_shot(1024, 1280, seed=2))) == ((128, 1.0),)  # flat: JPEG/WebP layer only
    small_flat = ((128, 1.0 - carrier.FLAT_FINE_SHARE), (64, carrier.FLAT_FINE_SHARE))
    assert carrier.layers_for(luma(studio_shot(480, 640))) == small_flat  # ... and a crop layer under 768 px
    tile = carrier.image_tile(KEY, np.zeros(528, np.uint8), carrier.nonce(KEY, 5), busy)
    assert tile.shape == (128, 128) and np.sqrt(np.mean(tile.astype(np.float64) ** 2)) == pytest.approx(1.0, abs=1e-3)


def test_v2_sync_takes_one_code_output_and_v1_is_unchanged():
    from comfyui_backdrop.runtime.watermark.pattern import keyed_layout

    v1, v2 = keyed_layout(KEY), carrier.layout(KEY, 3)
    assert v1.sync_index.size == 148 and np.array_equal(np.sort(v1.payload_bit), np.arange(528))
    assert v2.sync_index.size == 236 and v2.payload_bit.size == 440
    assert set((v2.payload_bit % 6).tolist()) == {1, 2, 3, 4, 5}  # output 0 of every step is punctured
    soft = v2.soft_bits(np.ones((26, 26)))
    assert np.all(soft[0::6] == 0) and np.all(soft[1::6] != 0)


def test_a_small_busy_picture_cropped_to_a_tenth():
    image = embed(skimage_photo("astronaut"), 31337, KEY, version=2)  # old v2: sync z 5.3, not found
    reads(crop_area(image, 0.1, 0.3, 0.6), 31337)


@pytest.mark.parametrize("payload", BUSY_IDS)
def test_a_busy_megapixel_picture_cropped_to_a_tenth(busy_megapixel, payload):
    result = reads(crop_area(busy_megapixel[payload], 0.1, 0.3, 0.6), payload)  # old v2: z 5.0-5.3
    assert result.details["period_px"][0] == pytest.approx(64, abs=0.5)  # read from the 64 px layer


def test_a_busy_megapixel_picture_cropped_shrunk_and_recompressed(busy_megapixel):
    payload = BUSY_IDS[1]
    reads(jpeg(resize(crop_area(busy_megapixel[payload], 0.25, 0.4, 0.6), 0.8), 70), payload)  # old v2: z 5.8


@pytest.mark.parametrize("scale", [0.33, 0.25])
def test_thumbnails_of_a_two_layer_picture(busy_megapixel, scale):
    """The 128 px layer keeps 80% of the energy: thumbnails (and a mirrored, recompressed one) still read."""
    payload = BUSY_IDS[0]
    reads(resize(busy_megapixel[payload], scale), payload)
    reads(jpeg(resize(mirror(busy_megapixel[payload]), scale), 75), payload)


def test_a_studio_crop_enlarged_then_recompressed():
    """A 128 px tile enlarged 1.5x in a 480x384 crop: the half-level lattice search now runs from 384 px."""
    image = embed(studio_shot(512, 640, seed=1), 0x2000_0000_0000_0000, KEY, version=2)
    reads(jpeg(resize(crop_area(image, 0.25, 0.4, 0.6), 1.5), 70), 0x2000_0000_0000_0000)  # old v2: z 4.9


def test_jpeg_20_on_a_flat_studio_shot():
    image = embed(studio_shot(480, 640, seed=3), 31337, KEY, version=2)
    reads(jpeg(image, 20), 31337)
    reads(webp(image, 40), 31337)


def test_a_black_border_never_makes_the_texture_map_nan():
    """Before: the box filter's running sums left -1e-9 in the texture energy of retina's black surround
    (downscaled, JPEG'd), its square root was NaN, the weighted residual NaN, and detect failed an assertion."""
    from comfyui_backdrop.runtime.watermark.perceptual import texture_rms

    retina = skimage_photo("retina")
    image = resize(retina, 1411 / max(retina.shape[:2]))
    marked = embed(image, 5, KEY)
    attacked = jpeg(marked, 50)
    half = cv2.resize(luma(attacked), (attacked.shape[1] // 2, attacked.shape[0] // 2), interpolation=cv2.INTER_AREA)
    assert np.isfinite(texture_rms(half)).all()
    reads(attacked, 5)
