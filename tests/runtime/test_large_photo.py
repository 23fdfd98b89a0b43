"""Large photos through the weight-free path: the same look, exact product pixels, bounded work.

The 8000x6000 timing (target: under 30 s and 4 GB on the 2-core dev machine) is measured by
``benchmarks/large_photo.py``; these tests check correctness on moderately large images and that the
expensive step (the contact shadow's blur, 0.07 x the product's width) runs on a reduced grid.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from comfyui_backdrop.runtime.backdrop import studio
from comfyui_backdrop.runtime.backdrop.composite import composite_product
from comfyui_backdrop.runtime.backdrop.studio import (
    StudioOptions,
    contact_shadow,
    product_frame,
    render_studio_backdrop,
)
from comfyui_backdrop.runtime.backdrop.studio_job import studio_background
from comfyui_backdrop.runtime.backdrop.styles import get_style
from comfyui_backdrop.runtime.imaging import to_integer
from comfyui_backdrop.runtime.masking.product_mask import product_mask
from comfyui_backdrop.runtime.masking.refine import decontaminate
from tests.fixtures.images import studio_product_photo


def _reference_contact_shadow(alpha, frame, strength):
    """The full-resolution contact shadow as it was first written (the look to keep)."""
    h, w = alpha.shape
    base = frame.y1
    soft_sigma = max(1.0, 0.07 * frame.width)
    tight_sigma = max(0.6, 0.012 * max(frame.width, frame.height))
    squash = 0.10
    matrix = np.float32([[1.0, 0.0, 0.0], [0.0, squash, base * (1.0 - squash)]])
    footprint = cv2.warpAffine((alpha > 0.5).astype(np.float32), matrix, (w, h), flags=cv2.INTER_LINEAR)
    soft = cv2.GaussianBlur(footprint, (0, 0), soft_sigma)
    soft = soft / max(float(soft.max()), 1e-6)
    rows = np.arange(h)[:, None]
    contact_band = (alpha > 0.5) & (rows >= base - max(2, int(0.04 * frame.height)))
    shift = max(1, round(tight_sigma))
    contact = np.zeros((h, w), np.float32)
    contact[shift:] = contact_band[:-shift]
    contact = cv2.GaussianBlur(contact, (0, 0), tight_sigma)
    contact = contact / max(float(contact.max()), 1e-6)
    darkness = strength * np.clip(0.45 * soft + 0.55 * contact, 0.0, 1.0)
    return (1.0 - 0.85 * darkness).astype(np.float32)


def _bottle(h, w, box):
    alpha = np.zeros((h, w), np.float32)
    x0, y0, x1, y1 = box
    alpha[y0:y1, x0:x1] = 1.0
    cv2.ellipse(alpha, ((x0 + x1) // 2, y0), ((x1 - x0) // 2, (y1 - y0) // 10), 0, 180, 360, 1, -1)
    return alpha


@pytest.mark.parametrize("h, w, box, tolerance", [
    (600, 800, (300, 150, 500, 520), 1e-4),        # contact blur under 8 px: full-resolution grid, same result
    (900, 1200, (50, 500, 400, 899), 1e-4),        # product on the bottom edge
    (1200, 1600, (500, 200, 1100, 1000), 0.01),    # reduced grid (factor 2)
    (1200, 1600, (0, 100, 1600, 1150), 0.01),      # full-width product (factor 4): the slow case before
])
def test_contact_shadow_keeps_its_look(h, w, box, tolerance):
    alpha = _bottle(h, w, box)
    frame = product_frame(alpha)
    new = contact_shadow(alpha, frame, 1.0)
    old = _reference_contact_shadow(alpha, frame, 1.0)
    assert np.abs(new - old).max() <= tolerance  # 0.01 = 2.5 levels of 8-bit at full shadow strength
    assert np.abs(new - old).mean() < 1e-3


def test_the_shadow_blur_runs_on_a_reduced_grid_for_large_products(monkeypatch):
    # before: sigma 0.07 x product width at full resolution (94 s of blur on an 8000x6000 photo)
    blurred = []
    real_blur = cv2.GaussianBlur

    def recording_blur(src, ksize, sigma, *args, **kwargs):
        blurred.append((src.shape, sigma))
        return real_blur(src, ksize, sigma, *args, **kwargs)

    monkeypatch.setattr(cv2, "GaussianBlur", recording_blur)
    alpha = _bottle(3000, 4000, (0, 200, 4000, 2900))  # a product as wide as the photo: soft sigma 280 px
    render_studio_backdrop(3000, 4000, get_style("Minimal Studio"), alpha, StudioOptions(shadow=1.0))
    assert len(blurred) == 2
    for shape, sigma in blurred:
        assert shape[0] * shape[1] <= 200_000 and sigma <= 30  # 12 MP photo, blurred on a grid of 0.2 MP


def test_studio_backdrop_look_is_unchanged_at_normal_sizes():
    """Mean colour per band of rows matches the first implementation's formulas (dither aside)."""
    style = get_style("Glam")
    alpha = _bottle(480, 640, (250, 120, 390, 400))
    image = render_studio_backdrop(480, 640, style, alpha, StudioOptions(seed=3))
    frame = product_frame(alpha)
    horizon = studio.horizon_row(480, frame)
    ys = (np.arange(480, dtype=np.float32) + 0.5)[:, None]
    xs = (np.arange(640, dtype=np.float32) + 0.5)[None, :]
    wall, floor = (np.asarray(style.palette[k], np.float32) for k in ("wall", "floor"))
    wall_shade = 1.0 + 0.06 * (1.0 - np.clip(ys / horizon, 0.0, 1.0))
    floor_shade = 1.0 - 0.05 * np.clip((ys - horizon) / (480 - horizon), 0.0, 1.0)
    band = 0.09 * 480
    t = studio._smoothstep(np.clip((ys - (horizon - band)) / (1.6 * band), 0.0, 1.0))
    expected = (1 - t)[..., None] * wall * wall_shade[..., None] + t[..., None] * floor * floor_shade[..., None]
    expected = np.broadcast_to(expected, (480, 640, 3))
    cx, cy = frame.center_x, frame.y0 + frame.height * 0.3
    r2 = ((xs - cx) ** 2 + (ys - cy) ** 2) / (0.55 * np.hypot(480, 640)) ** 2
    look = style.look
    expected = expected * (1.0 + 0.10 * look.light * np.exp(-r2))[..., None]
    rv2 = ((xs - 320) ** 2 / 320**2 + (ys - 240) ** 2 / 240**2) / 2.0
    expected = expected * (1.0 - 0.45 * look.vignette * studio._smoothstep(np.clip(rv2, 0.0, 1.0)))[..., None]
    expected = expected * _reference_contact_shadow(alpha, frame, look.shadow)[..., None]
    assert np.abs(image - np.clip(expected, 0, 1)).max() <= 0.5 / 255 + 1e-5  # only the dither differs
    assert np.array_equal(image, render_studio_backdrop(480, 640, style, alpha, StudioOptions(seed=3)))


def test_a_large_photo_keeps_every_product_pixel_and_matches_the_plain_composite():
    photo, _ = studio_product_photo(1500, 2000, seed=5)
    rgb = photo.astype(np.float32) / 255.0
    before = rgb.copy()
    style = get_style("Soft Spring")
    alpha = product_mask(rgb)
    result = studio_background(rgb, style, alpha=alpha, studio=StudioOptions(seed=2))
    assert np.array_equal(rgb, before)  # the input is not touched by the in-place steps
    core = alpha >= 1.0
    assert core.mean() > 0.05
    assert np.array_equal(result.image[core], rgb[core])
    backdrop = render_studio_backdrop(1500, 2000, style, alpha, StudioOptions(seed=2))
    plain = composite_product(rgb, alpha, backdrop, foreground=decontaminate(rgb, alpha))
    assert np.array_equal(result.image, plain)
    assert np.array_equal(to_integer(result.image[core], 8), photo[core])


def test_composite_into_the_background_buffer_equals_a_fresh_composite():
    rng = np.random.default_rng(0)
    image = rng.random((40, 50, 3), dtype=np.float32)
    background = rng.random((40, 50, 3), dtype=np.float32)
    alpha = rng.choice(np.float32([0.0, 0.3, 1.0, 1.2, -0.5]), size=(40, 50))
    alpha[0, 0] = np.nan
    fresh = composite_product(image, alpha, background)
    assert np.isnan(fresh[0, 0]).all()  # NaN alpha stays visible, as it always was
    buffer = background.copy()
    into = composite_product(image, alpha, buffer, out=buffer)
    assert into is buffer and np.array_equal(into, fresh, equal_nan=True)
    reference = np.where((np.clip(alpha, 0, 1) >= 1)[..., None], image,
                         np.clip(alpha, 0, 1)[..., None] * image + (1 - np.clip(alpha, 0, 1))[..., None] * background)
    assert np.array_equal(fresh, reference, equal_nan=True)


def test_decontaminate_in_place_equals_a_copy():
    photo, _ = studio_product_photo(200, 260, seed=1)
    rgb = photo.astype(np.float32) / 255.0
    alpha = product_mask(rgb)
    copied = decontaminate(rgb, alpha)
    own = rgb.copy()
    assert decontaminate(own, alpha, out=own) is own and np.array_equal(own, copied)


def test_to_integer_in_blocks_matches_float64_rounding(monkeypatch):
    from comfyui_backdrop.runtime import imaging

    monkeypatch.setattr(imaging, "TO_INTEGER_BLOCK", 50)  # many blocks on a small image
    rng = np.random.default_rng(0)
    values = (rng.random((37, 23, 3)) * 1.2 - 0.1).astype(np.float32)
    for depth, scale, dtype in ((8, 255.0, np.uint8), (16, 65535.0, np.uint16)):
        expected = np.clip(np.rint(values.astype(np.float64) * scale), 0, scale).astype(dtype)
        assert np.array_equal(to_integer(values, depth), expected)
    codes = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(to_integer(codes.astype(np.float32) / 255.0, 8), codes)
