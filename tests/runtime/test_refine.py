"""Mask refinement: holes, components, exact grow/shrink, banded guided-filter edges, feathering, halos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.masking import refine
from comfyui_backdrop.runtime.masking.refine import (
    auto_edge_radius,
    decontaminate,
    feather,
    fill_holes,
    grow,
    guided_filter,
    keep_components,
    refine_edges,
    refine_mask,
)
from comfyui_backdrop.runtime.masking.types import RefineOptions

RED = np.array([0.85, 0.1, 0.1], np.float32)


def disc(h: int, w: int, radius: float, cx: float | None = None, cy: float | None = None) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    cx = w / 2 if cx is None else cx
    cy = h / 2 if cy is None else cy
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2


def red_disc_on_white(h: int = 120, w: int = 160, radius: float = 35) -> tuple[np.ndarray, np.ndarray]:
    """A red disc with an anti-aliased edge on white; returns (image, true mask)."""
    yy, xx = np.mgrid[0:h, 0:w]
    dist = np.sqrt((xx - w / 2) ** 2 + (yy - h / 2) ** 2)
    alpha = np.clip(radius + 0.5 - dist, 0, 1)[..., None].astype(np.float32)
    image = alpha * RED + (1 - alpha) * np.ones(3, np.float32)
    return image.astype(np.float32), dist <= radius


def distance_to_edge(mask: np.ndarray) -> np.ndarray:
    """Distance of every pixel to the nearest pixel of the other class."""
    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    outside = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.maximum(inside, outside)


# --- fill_holes ----------------------------------------------------------------------------------------

def test_fill_holes_fills_enclosed_only():
    mask = np.zeros((40, 60), bool)
    mask[5:35, 5:35] = True
    mask[12:20, 12:20] = False  # enclosed hole
    mask[25:40, 45:55] = True
    mask[30:40, 48:52] = False  # notch open to the image border: not a hole
    filled = fill_holes(mask)
    assert filled[12:20, 12:20].all()
    assert not filled[30:40, 48:52].any()
    assert np.array_equal(filled & ~mask, np.pad(np.ones((8, 8), bool), ((12, 20), (12, 40))))


def test_fill_holes_diagonal_gap_is_still_enclosed():
    ring = disc(31, 31, 12) & ~disc(31, 31, 8)
    assert fill_holes(ring).sum() == disc(31, 31, 12).sum()


def test_fill_holes_empty_and_full():
    assert not fill_holes(np.zeros((5, 5), bool)).any()
    assert fill_holes(np.ones((5, 5), bool)).all()


# --- keep_components -----------------------------------------------------------------------------------

def three_blobs() -> np.ndarray:
    mask = np.zeros((60, 100), bool)
    mask[5:45, 5:45] = True  # 1600 px
    mask[5:25, 60:80] = True  # 400 px = 25 %
    mask[50:55, 90:95] = True  # 25 px
    return mask


def test_keep_components_modes():
    mask = three_blobs()
    assert keep_components(mask, "all").sum() == 2025
    assert keep_components(mask, "largest").sum() == 1600
    assert keep_components(mask, "main", 0.15).sum() == 2000
    assert keep_components(mask, "main", 0.5).sum() == 1600
    assert not keep_components(np.zeros((4, 4), bool), "largest").any()
    with pytest.raises(InvalidInputError):
        keep_components(mask, "biggest")


# --- grow ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("px", [1, 3, 7])
def test_grow_dilates_by_exact_pixels(px):
    mask = np.zeros((41, 41), bool)
    mask[20, 20] = True
    grown = grow(mask, px)
    ys, xs = np.nonzero(grown)
    assert xs.min() == 20 - px and xs.max() == 20 + px and ys.min() == 20 - px and ys.max() == 20 + px
    assert not grown[20 - px, 20 - px]  # elliptical, not square


@pytest.mark.parametrize("px", [1, 4, 9])
def test_grow_erodes_by_exact_pixels(px):
    mask = np.zeros((60, 60), bool)
    mask[10:50, 15:45] = True
    shrunk = grow(mask, -px)
    ys, xs = np.nonzero(shrunk)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (10 + px, 49 - px, 15 + px, 44 - px)


def test_grow_zero_is_identity_and_copies():
    mask = three_blobs()
    out = grow(mask, 0)
    assert np.array_equal(out, mask) and out is not mask


# --- guided filter / edges -----------------------------------------------------------------------------

def test_guided_filter_keeps_constant_and_follows_guide():
    rng = np.random.default_rng(0)
    guide = rng.random((40, 50, 3)).astype(np.float32)
    flat = guided_filter(guide, np.full((40, 50), 0.3, np.float32), radius=3)
    assert np.allclose(flat, 0.3, atol=1e-4)
    follows = guided_filter(guide, guide[..., 1].copy(), radius=2, eps=1e-6)
    assert np.abs(follows - guide[..., 1]).max() < 0.02


@pytest.mark.parametrize(("error", "radius"), [(1, 2), (1, 3), (2, 5), (3, 8)])
def test_edge_refinement_stays_within_band(error, radius):
    image, truth = red_disc_on_white()
    raw = grow(truth, error)  # a raw mask a few px too big, as an upsampled mask may be
    alpha = refine_edges(raw, image, radius)
    far = distance_to_edge(raw) > radius + 0.5
    assert np.array_equal(alpha[far], raw[far].astype(np.float32))
    assert (alpha[grow(raw, -radius - 1)] == 1.0).all()
    soft = (alpha > 0) & (alpha < 1)
    assert soft.any() and (distance_to_edge(raw)[soft] <= radius + 1).all()
    assert ((alpha >= 0.5) == truth).mean() > 0.998  # snapped back onto the real edge


def test_subsampled_guided_filter_path(monkeypatch):
    monkeypatch.setattr(refine, "GUIDED_MAX_PIXELS", 2000)
    image, truth = red_disc_on_white(240, 320, 80)
    raw = grow(truth, 3)
    alpha = refine_edges(raw, image, 6)
    far = distance_to_edge(raw) > 6.5
    assert np.array_equal(alpha[far], raw[far].astype(np.float32))
    assert ((alpha >= 0.5) == truth).mean() > 0.99


@pytest.mark.parametrize(("error", "radius"), [(1, 0), (2, 5), (-2, 5)])
def test_no_halo_on_dark_background(error, radius):
    image, truth = red_disc_on_white()
    raw = grow(truth, error)
    alpha = refine_mask(raw, image, RefineOptions(edge_radius_px=radius))
    ring = grow(truth, 4) & ~grow(truth, 1)  # 2..4 px outside the object
    naive = (alpha[..., None] * image).max(axis=2)  # cut from white, pasted on black
    assert naive[ring].mean() < 0.02 and naive[ring].max() < 0.15
    # The old white background shows as green/blue light in the edge; decontaminated edges carry red only.
    edge = (alpha > 0) & (alpha < 1)
    white_naive = (alpha[..., None] * image)[..., 1][edge]
    white_clean = (alpha[..., None] * decontaminate(image, alpha))[..., 1][edge]
    assert white_clean.mean() < 0.5 * white_naive.mean()
    assert (white_clean <= alpha[edge] * RED[1] + 0.02).all()


def test_refine_mask_empty_and_full():
    image = np.random.default_rng(0).random((30, 40, 3)).astype(np.float32)
    for options in (RefineOptions(), RefineOptions(feather_px=3, grow_px=2), RefineOptions(grow_px=-3)):
        empty = refine_mask(np.zeros((30, 40), bool), image, options)
        full = refine_mask(np.ones((30, 40), bool), image, options)
        assert empty.dtype == np.float32 and full.dtype == np.float32
        assert (empty == 0).all() and (full == 1).all()


def test_refine_mask_pipeline_and_purity():
    image, truth = red_disc_on_white()
    raw = truth.copy()
    raw[55:60, 75:80] = False  # a hole
    raw[2:6, 2:6] = True  # a speck
    raw_before, image_before = raw.copy(), image.copy()
    alpha = refine_mask(raw, image, RefineOptions(edge_refine=False))
    assert np.array_equal(alpha, truth.astype(np.float32))
    grown = refine_mask(raw, image, RefineOptions(edge_refine=False, grow_px=3))
    assert np.array_equal(grown > 0, grow(truth, 3))
    assert np.array_equal(raw, raw_before) and np.array_equal(image, image_before)
    float_raw = refine_mask(raw.astype(np.float32), image)
    assert np.isfinite(float_raw).all() and float_raw.min() >= 0 and float_raw.max() <= 1


def test_auto_edge_radius_scales_with_size():
    assert auto_edge_radius(64, 64) == 3
    assert auto_edge_radius(1000, 1000) == 5
    assert auto_edge_radius(8000, 6000) == 40
    assert auto_edge_radius(16384, 16384) == 64


def test_mismatched_shapes_raise():
    with pytest.raises(InvalidInputError):
        refine_mask(np.zeros((10, 10), bool), np.zeros((10, 12, 3), np.float32))
    with pytest.raises(InvalidInputError):
        decontaminate(np.zeros((10, 10, 3), np.float32), np.zeros((10, 11), np.float32))


# --- feather -------------------------------------------------------------------------------------------

def test_feather_extends_outward_only():
    mask = disc(80, 80, 20)
    alpha = feather(mask.astype(np.float32), 6)
    assert (alpha[mask] == 1.0).all()
    dist = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    assert (alpha[dist > 6] == 0).all()
    near = (dist > 0) & (dist <= 2)
    assert (alpha[near] > 0.5).all() and (alpha[near] < 1).all()
    profile = alpha[40, 60:70]
    assert (np.diff(profile) <= 0).all()
    assert np.array_equal(feather(mask.astype(np.float32), 0), mask.astype(np.float32))


def test_feather_in_refine_keeps_core():
    image, truth = red_disc_on_white()
    plain = refine_mask(truth, image, RefineOptions())
    soft = refine_mask(truth, image, RefineOptions(feather_px=5))
    assert (soft >= plain).all()
    assert (soft[plain == 1] == 1).all()
    assert (soft[grow(truth, 8) & ~grow(truth, 7)] == 0).all()


# --- decontaminate -------------------------------------------------------------------------------------

def test_decontaminate_keeps_opaque_pixels_bit_exact():
    image, truth = red_disc_on_white()
    image = image + np.float32(1e-7)  # values that a careless recomputation would change
    alpha = refine_mask(grow(truth, 1), image)
    before = image.copy()
    out = decontaminate(image, alpha)
    assert out.dtype == image.dtype and np.array_equal(image, before)
    opaque = alpha == 1
    assert opaque.any() and np.array_equal(out[opaque], image[opaque])
    assert np.array_equal(out[alpha == 0], image[alpha == 0])
    edge = (alpha > 0) & (alpha < 1)
    assert edge.any()
    before_err = np.abs(image[edge] - RED).sum(axis=1)
    after_err = np.abs(out[edge] - RED).sum(axis=1)
    assert after_err.mean() < 0.25 * before_err.mean()


def test_decontaminate_without_edges_is_a_copy():
    image = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    for alpha in (np.zeros((8, 8), np.float32), np.ones((8, 8), np.float32)):
        out = decontaminate(image, alpha)
        assert np.array_equal(out, image) and out is not image


def test_nan_in_image_gives_no_nan_alpha():
    image, truth = red_disc_on_white()
    image[60, 80 + 35] = np.nan  # on the disc edge (centre x=80, radius 35), inside the band
    alpha = refine_mask(truth, image)
    assert np.isfinite(alpha).all() and alpha.min() >= 0 and alpha.max() <= 1
