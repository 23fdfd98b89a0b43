"""The detector's fast paths against plain reference implementations of what they compute.

The autocorrelation works on half spectra in single precision, the coarse sync search takes each correlation's
spread from its spectrum, the lattice candidates are scored in batches and refined in lockstep: each must give
what the straightforward computation gives.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from comfyui_backdrop.runtime.watermark import carrier, codec_v2, embed
from comfyui_backdrop.runtime.watermark import lattice as lattice_module
from comfyui_backdrop.runtime.watermark.autocorrelation import (
    _far_from_origin,
    _inverse_overlap,
    _radial_highpass,
    autocorrelation,
)
from comfyui_backdrop.runtime.watermark.folding import band_correlation, whitened_spectrum
from comfyui_backdrop.runtime.watermark.perceptual import luma
from comfyui_backdrop.runtime.watermark.residual import whitened_residual
from tests.fixtures.watermark_images import resize, skimage_photo

KEY = b"search-internals-key-0123456789ab"


def _reference_autocorrelation(r: np.ndarray, max_lag: int) -> np.ndarray:
    """The z-map from the whole complex spectrum in double precision (what the half-spectrum path computes)."""
    h, w = r.shape
    ph, pw = cv2.getOptimalDFTSize(h + max_lag), cv2.getOptimalDFTSize(w + max_lag)
    padded = np.zeros((ph, pw))
    padded[:h, :w] = r - r.mean()
    power = np.abs(np.fft.fft2(padded)) ** 2
    power /= cv2.GaussianBlur(power, (0, 0), 4.0) + 1e-12 * power.mean()
    corr = np.fft.fft2(power).real
    rows, cols = np.r_[ph - max_lag:ph, 0:max_lag + 1], np.r_[pw - max_lag:pw, 0:max_lag + 1]
    acf = _radial_highpass((corr[np.ix_(rows, cols)] * _inverse_overlap(h, w, max_lag)).astype(np.float32))
    ring = acf[::3, ::3][_far_from_origin(max_lag)]
    centre = np.median(ring)
    return (acf - centre) / (1.4826 * np.median(np.abs(ring - centre)) + 1e-12)


@pytest.mark.parametrize(("shape", "max_lag"), [((300, 313), 180), ((230, 230), 140)])
def test_autocorrelation_matches_the_whole_spectrum(shape: tuple[int, int], max_lag: int):
    rng = np.random.default_rng(5)
    tile = rng.standard_normal((64, 64))
    r = (rng.standard_normal(shape) + 0.5 * np.tile(tile, (5, 5))[:shape[0], :shape[1]]).astype(np.float32)
    if shape == (230, 230):
        assert cv2.getOptimalDFTSize(shape[1] + max_lag) % 2 == 1  # an odd transform width is covered too
    out = autocorrelation(r.copy(), max_lag)
    reference = _reference_autocorrelation(r, max_lag)
    assert out.shape == reference.shape == (2 * max_lag + 1,) * 2 and out.dtype == np.float32
    assert np.abs(out - reference).max() < 2e-3  # z units; the lattice peaks stand at 10 and more
    assert out[max_lag, max_lag + 64] > 10


def test_coarse_spread_is_each_correlations_standard_deviation():
    rng = np.random.default_rng(6)
    spectrum = whitened_spectrum(rng.standard_normal((64, 64))).astype(np.complex64)
    product = spectrum.ravel()[codec_v2._band_of_each_dihedral()][:, None] * carrier.sync_bands(KEY)[None]
    correlations = band_correlation(product)
    direct = correlations.reshape(carrier.DIHEDRAL, carrier.VARIANTS, -1).std(axis=-1)
    assert np.allclose(codec_v2._spread(product), direct, rtol=1e-4)


@pytest.fixture(scope="module")
def marked_acf() -> np.ndarray:
    """The smoothed autocorrelation of a marked photo enlarged 1.3x (the lattice search's input)."""
    photo = cv2.resize(skimage_photo("coffee"), (512, 384), interpolation=cv2.INTER_AREA)
    attacked = resize(embed(photo, 11, KEY), 1.3)
    r = whitened_residual(luma(attacked), codec_v2.WEIGHTS)
    max_lag = int(lattice_module.LAG_FRACTION * min(r.shape))
    return cv2.GaussianBlur(autocorrelation(r, max_lag), (0, 0), 0.7)


def _reference_refine(acf: np.ndarray, v1: np.ndarray, v2: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """One basis's pattern search on its own (the search before it ran in lockstep)."""
    params = np.concatenate([v1, v2])
    max_lag = (acf.shape[0] - 1) / 2.0
    reach = int(max_lag / max(1.0, min(np.hypot(*v1), np.hypot(*v2)) - 2.0)) + 1
    moves = np.concatenate([np.eye(4), -np.eye(4)])
    best = float(lattice_module._batch_scores(acf, params[None, :2], params[None, 2:], reach)[0])
    step = 0.5
    while step >= 1 / 32:
        for _ in range(64):
            trials = params[None, :] + step * moves
            scores = lattice_module._batch_scores(acf, trials[:, :2], trials[:, 2:], reach)
            k = int(np.argmax(scores))
            if scores[k] <= best:
                break
            params, best = trials[k], float(scores[k])
        step /= 2
    return params[:2], params[2:], best


def test_lockstep_refinement_is_each_basis_refined_alone(marked_acf: np.ndarray):
    bases = [(np.array([82.7, 0.6]), np.array([-0.4, 83.6])), (np.array([84.0, -1.0]), np.array([0.5, 82.0])),
             (np.array([40.2, 0.3]), np.array([0.2, 42.9])), (np.array([166.0, 2.0]), np.array([1.0, 165.0])),
             (np.array([83.0, 0.0]), np.array([0.0, 83.5]))]
    refined = lattice_module._refine_all(marked_acf, bases)
    for (v1, v2), (r1, r2, score) in zip(bases, refined, strict=True):
        e1, e2, expected = _reference_refine(marked_acf, v1, v2)
        assert np.array_equal(r1, e1) and np.array_equal(r2, e2) and score == expected
    assert min(refined[0][2], refined[1][2], refined[4][2]) > 10  # the starts near the mark's lattice find it


def _reference_comb(acf: np.ndarray, v1: np.ndarray, v2: np.ndarray) -> float:
    """The comb of one lattice: the z-map summed over all its points inside the map, / sqrt(count)."""
    max_lag = (acf.shape[0] - 1) / 2.0
    n = int(max_lag / max(1.0, min(np.hypot(*v1), np.hypot(*v2)))) + 1
    k = np.arange(-n, n + 1)
    k1, k2 = (a.ravel() for a in np.meshgrid(k, k, indexing="ij"))
    half = (k1 > 0) | ((k1 == 0) & (k2 > 0))
    points = k1[half, None] * v1[None] + k2[half, None] * v2[None]
    points = points[(np.abs(points) <= max_lag - 1).all(axis=1)]
    centre = (acf.shape[0] - 1) / 2.0
    values = cv2.remap(acf, (points[:, 0] + centre).astype(np.float32)[None],
                       (points[:, 1] + centre).astype(np.float32)[None], cv2.INTER_LINEAR)
    return float(values.sum() / np.sqrt(len(points)))


def test_batched_comb_scores_are_each_lattices_comb(marked_acf: np.ndarray):
    rng = np.random.default_rng(7)
    pairs = [(np.array([p, rng.uniform(-3, 3)]), np.array([rng.uniform(-3, 3), p * rng.uniform(0.8, 1.2)]))
             for p in rng.uniform(26, 160, size=40)] + [(np.array([83.2, 0.0]), np.array([0.0, 83.2]))]  # the mark's
    scores = lattice_module.comb_scores(marked_acf, pairs)
    expected = np.array([_reference_comb(marked_acf, v1, v2) for v1, v2 in pairs])
    assert np.allclose(scores, expected, rtol=1e-4, atol=1e-4)  # coordinates rounded to float32 differently
    assert scores.max() > 5  # the mark's lattice is among them


def test_the_radial_maps_of_any_size_are_what_computing_them_anew_gives():
    """A lag map's remap coordinates are cropped from the largest computed so far (odd sizes share a centre)."""
    from comfyui_backdrop.runtime.watermark import autocorrelation as module

    def anew(size: int) -> list[np.ndarray]:
        c = (size - 1) / 2.0
        lags = np.arange(size, dtype=np.float32) - c
        ly, lx = np.meshgrid(lags, lags, indexing="ij")
        radius = np.maximum(np.hypot(lx, ly), 1.0)
        ux, uy = lx / radius * module.RADIAL_STEP, ly / radius * module.RADIAL_STEP
        return [lx - ux + c, ly - uy + c, lx + ux + c, ly + uy + c]

    saved = module._largest_offsets
    try:
        for order in ([257, 769, 601, 99], [769, 257, 305, 768, 431]):  # growing and shrinking; one even size
            module._radial_maps.cache_clear()
            module._largest_offsets = ()
            for size in order:
                (in_x, in_y), (out_x, out_y) = module._radial_maps(size)
                for got, want in zip((in_x, in_y, out_x, out_y), anew(size), strict=True):
                    assert got.dtype == np.float32 and got.shape == (size, size)
                    assert np.array_equal(got, want)  # bit for bit
                    assert not got.flags.writeable
    finally:
        module._radial_maps.cache_clear()
        module._largest_offsets = saved


@pytest.mark.parametrize("attack", ["none", "0.45x + JPEG 80", "0.3x", "small"])
def test_the_searches_never_return_more_lattices_than_the_bound_counts(monkeypatch, attack):
    """The false-positive bound counts RETURNED lattices (+ the grid) at full size and LEVEL1_LATTICES on the half
    level (codec_v2.hypothesis_count); the square lattices (stop 31, stop 37) must stay inside those counts, also on a
    small picture, where they are kept whatever their score. Each general search is made to return all it may (rotated
    lattices, never a square's), so any square beyond the count shows."""
    from comfyui_backdrop.runtime.watermark import codec_v2, embed, lattice
    from comfyui_backdrop.runtime.watermark.perceptual import luma
    from tests.fixtures.watermark_images import jpeg, resize, skimage_photo

    def full_search(acf, lo, hi, count):
        sides = np.linspace(lo, hi, count + 2)[1:-1]
        return [lattice.Lattice((s * 0.9, s * 0.3), (-s * 0.3, s * 0.9), 3.0) for s in sides]

    monkeypatch.setattr(lattice, "_search", full_search)
    marked = embed(skimage_photo("immunohistochemistry"), 0x5EED5, b"bound-test-key-0123456789abcdef0", version=3)
    picture = {"none": marked, "0.45x + JPEG 80": jpeg(resize(marked, 0.45), 80), "0.3x": resize(marked, 0.3),
               "small": jpeg(resize(marked[:300, :300], 0.6), 55)}[attack]
    pyramid = codec_v2.Pyramid(luma(picture.astype(np.float32) / 255.0))
    level0 = lattice.estimate_lattices(pyramid.residual(0))
    assert len(level0) <= lattice.RETURNED + 1
    assert len(codec_v2.hypotheses(pyramid, level0)) <= codec_v2.hypothesis_count(pyramid)
