"""Undo the estimated geometry, fold the image onto one tile, and find the tile's cyclic translation.

Folding sums every period of the (re-gridded) residual into one PERIOD x PERIOD tile: the mark adds up
coherently while the picture averages out, which is where the detector's sensitivity comes from, and it
works for any crop that holds a couple of periods. The cyclic shift left by a crop is then the peak of the
FFT cross-correlation with the keyed sync pattern; its height over the correlation's spread is the score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from itertools import pairwise

import cv2
import numpy as np

from .lattice import MIN_SCALE, Lattice
from .pattern import GRID, PERIOD, KeyedLayout, spectrum_to_chips


@dataclass(frozen=True)
class Alignment:
    """Where the tile sits: sync z-score, cyclic shift (px on the embedding grid) and the aligned chips (read from
    ``spectrum``, the whitened tile spectrum, when first asked for: most alignments are never decoded)."""

    z: float
    shift: tuple[float, float]
    spectrum: np.ndarray = field(repr=False)
    periods: float

    @cached_property
    def chips(self) -> np.ndarray:
        """The matched-filter chip estimates [GRID, GRID] at ``shift``."""
        freq = np.fft.fftfreq(PERIOD)
        fx, fy = self.shift
        ramp = np.exp(2j * np.pi * freq * fy)[:, None] * np.exp(2j * np.pi * freq * fx)[None, :]  # separable
        return spectrum_to_chips(self.spectrum * ramp)


def fold(residual: np.ndarray, lattice: Lattice) -> tuple[np.ndarray, float]:
    """Sum of all periods of ``residual`` resampled onto the embedding grid, and how many periods it held.

    A lattice shorter than HALF_GRID_BELOW px (a thumbnail of a 64 px tile) is folded on a grid of half the
    tile's size and the tile interpolated back (exactly, in frequency: the pattern's band fits the half grid):
    resampling a 16-25 px period onto 64 px would enlarge the whole image 6-16 times."""
    h, w = residual.shape
    if np.allclose(lattice.matrix(), np.eye(2)):
        return _fold_grid(residual), h * w / PERIOD**2
    warped, (u0, v0), grid = _warp(residual, lattice)
    tile = np.roll(_fold_grid(warped, grid), (v0 % grid, u0 % grid), axis=(0, 1))
    return (tile if grid == PERIOD else _enlarged(tile)), _periods(residual, lattice)


def fold_stretched(residual: np.ndarray, lattice: Lattice,
                   stretches: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """The spectra [S, PERIOD, PERIOD] of ``fold(residual, lattice.stretched(f1, f2))`` for each of S stretches (f1, f2)
    close to 1, approximately, from one warp, and their periods [S].

    Stretching the lattice's axis 1 by f1 moves what the fold grid has at u to u / f1: a drift that grows across
    the image. The warped residual is cut into STRETCH_REGIONS x STRETCH_REGIONS regions of whole periods, each
    folded alone, and a stretched fold is the sum of the regions' folds, each shifted (in frequency) by the drift
    at its centre; inside a region the drift is left alone, at most (f1 - 1) x half its extent (0.5 px of the fold
    grid for a 0.3% stretch of a 512 px picture). Eight warps of a short lattice cost up to 16 ms on a 512 px
    picture; this costs one.
    """
    warped, (u0, v0), grid = _warp(residual, lattice)
    blocks = _padded(warped, grid)
    rows, columns = blocks.shape[0] // grid, blocks.shape[1] // grid
    blocks = blocks.reshape(rows, grid, columns, grid)
    cuts_v = np.linspace(0, rows, min(STRETCH_REGIONS, rows) + 1).astype(int)  # region edges, in periods
    cuts_u = np.linspace(0, columns, min(STRETCH_REGIONS, columns) + 1).astype(int)
    bands = [blocks[a:b].sum(axis=0, dtype=np.float64) for a, b in pairwise(cuts_v)]
    regions = np.array([[band_[:, a:b].sum(axis=1) for a, b in pairwise(cuts_u)]
                        for band_ in bands])  # [Rv, Ru, g, g]: each region's fold
    spectra = np.fft.fft2(regions)
    centre_v = v0 + grid * 0.5 * (cuts_v[:-1] + cuts_v[1:])  # fold-grid px from the image origin
    centre_u = u0 + grid * 0.5 * (cuts_u[:-1] + cuts_u[1:])
    frequency = np.fft.fftfreq(grid)
    roll = np.exp(-2j * np.pi * frequency * (v0 % grid))[:, None] * np.exp(-2j * np.pi * frequency * (u0 % grid))
    f1s, f2s = np.array([f[0] for f in stretches]), np.array([f[1] for f in stretches])
    along_v = np.exp(-2j * np.pi * (centre_v[None, :, None] * (1 / f2s - 1)[:, None, None]) * frequency)  # [S, Rv, g]
    along_u = np.exp(-2j * np.pi * (centre_u[None, :, None] * (1 / f1s - 1)[:, None, None]) * frequency)  # [S, Ru, g]
    shifted = np.einsum("svy,vuyx->suyx", along_v, spectra, optimize=True)  # each region's drift along v ...
    spectra = np.einsum("sux,suyx->syx", along_u, shifted, optimize=True) * roll  # ... and along u, summed
    return (spectra if grid == PERIOD else _enlarged_spectrum(spectra)), _periods(residual, lattice) / (f1s * f2s)


def _warp(residual: np.ndarray, lattice: Lattice) -> tuple[np.ndarray, tuple[int, int], int]:
    """``residual`` resampled so that ``lattice``'s period is ``grid`` px (PERIOD, or half of it for short
    lattices): (warped image, fold-grid position (u, v) of its first pixel, grid)."""
    h, w = residual.shape
    grid = PERIOD // 2 if lattice.period < HALF_GRID_BELOW else PERIOD
    to_image = lattice.matrix() * (PERIOD / grid)  # fold-grid px -> image px
    inverse = np.linalg.inv(to_image)
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], dtype=np.float64) @ inverse.T
    u0, v0 = np.floor(corners.min(axis=0))
    u1, v1 = np.ceil(corners.max(axis=0))
    out_w, out_h = int(u1 - u0), int(v1 - v0)
    affine = np.hstack([to_image, (to_image @ np.array([u0, v0]))[:, None]])
    warped = cv2.warpAffine(residual, affine, (out_w, out_h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return warped, (int(u0), int(v0)), grid


def _periods(residual: np.ndarray, lattice: Lattice) -> float:
    """How many periods of ``lattice`` ``residual`` holds."""
    return residual.shape[0] * residual.shape[1] / abs(np.linalg.det(lattice.matrix())) / PERIOD**2


def _enlarged(tile: np.ndarray) -> np.ndarray:
    """A periodic tile interpolated to PERIOD x PERIOD px by zero-padding its spectrum (``_enlarged_spectrum``)."""
    return np.fft.ifft2(_enlarged_spectrum(np.fft.fft2(tile))).real


def _enlarged_spectrum(spectrum: np.ndarray) -> np.ndarray:
    """The spectrum [..., n, n] of a periodic n px tile zero-padded to PERIOD x PERIOD (its Nyquist row and column,
    outside the pattern's band, are dropped), scaled so that a pixel sums as many periods as before."""
    n = spectrum.shape[-1]
    source = np.r_[0:n // 2, n // 2 + 1:n]                     # every frequency but Nyquist
    target = np.r_[0:n // 2, PERIOD - n // 2 + 1:PERIOD]       # ... at its place in the larger spectrum
    out = np.zeros((*spectrum.shape[:-2], PERIOD, PERIOD), np.complex128)
    out[..., target[:, None], target[None, :]] = spectrum[..., source[:, None], source[None, :]] * (PERIOD / n) ** 2
    return out


def _fold_grid(image: np.ndarray, grid: int = PERIOD) -> np.ndarray:
    """Sum of the ``grid`` x ``grid`` blocks of ``image`` (zero-padded at the bottom/right), float64."""
    padded = _padded(image, grid)
    return padded.reshape(padded.shape[0] // grid, grid, -1, grid).sum(axis=(0, 2), dtype=np.float64)


def _padded(image: np.ndarray, grid: int) -> np.ndarray:
    """``image`` zero-padded at the bottom/right to whole ``grid`` x ``grid`` blocks."""
    h, w = image.shape
    pad_h, pad_w = -(-h // grid) * grid, -(-w // grid) * grid
    if (pad_h, pad_w) == (h, w):
        return image
    return cv2.copyMakeBorder(image, 0, pad_h - h, 0, pad_w - w, cv2.BORDER_CONSTANT, value=0.0)


def _subpixel(c_minus: float, c0: float, c_plus: float) -> float:
    denom = c_minus - 2 * c0 + c_plus
    return 0.0 if denom >= 0 else float(np.clip(0.5 * (c_minus - c_plus) / denom, -0.5, 0.5))


HALF_GRID_BELOW = MIN_SCALE * PERIOD  # px: shorter lattices (the fine search's) fold on a half-size grid (``fold``)
STRETCH_REGIONS = 4  # regions per axis whose folds ``fold_stretched`` shifts against each other
UPSAMPLE = 2  # the cyclic correlation is searched on a grid UPSAMPLE times finer than the tile's pixels
SHIFTS = (UPSAMPLE * PERIOD) ** 2  # positions searched per lattice (the Bonferroni count)
BAND_HALF = GRID // 2  # the pattern's band: |f| < BAND_HALF cycles per tile on both axes (pattern.band_mask)
BAND_ROWS = np.r_[0:BAND_HALF, PERIOD - BAND_HALF + 1:PERIOD]  # f = 0..BAND_HALF-1, then -(BAND_HALF-1)..-1


def band(spectrum: np.ndarray) -> np.ndarray:
    """The band of a tile spectrum [..., PERIOD, PERIOD] that a real correlation with the pattern needs: rows
    f = 0..BAND_HALF-1 and their negatives, non-negative x frequencies only (the others are their conjugates)."""
    return spectrum[..., BAND_ROWS, :BAND_HALF]


def band_correlation(product: np.ndarray, size: int = PERIOD) -> np.ndarray:
    """The real cyclic correlation on a ``size`` x ``size`` grid of shifts from the band (``band``) of its
    Hermitian cross-spectrum, [..., size, size]; a ``size`` over PERIOD interpolates it (zero padding).

    The same values as ``np.fft.irfft2`` of the zero-padded half spectrum (up to rounding), as two matrix
    products with the band's few synthesis vectors instead of transforms over the zeros: the FFTs of such small
    tiles cost more per call than per value, and there are 64 of them per search.
    """
    rows, columns = _synthesis(size, np.dtype(product.dtype).name)
    lead = product.shape[:-2]
    stacked = np.moveaxis(product, -2, 0).reshape(product.shape[-2], -1)  # [band rows, everything else]
    along_y = (rows @ stacked).reshape((size, *lead, BAND_HALF))  # [y, ..., band columns]
    interleaved = along_y.view(columns.dtype)  # [y, ..., 2 * BAND_HALF]: re, im, re, im, ...
    return np.moveaxis(interleaved @ columns, 0, -2)


@lru_cache(maxsize=8)
def _synthesis(size: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """The inverse transform of the band onto a ``size`` grid: complex [size, band rows] along y, then real
    [2 * BAND_HALF, size] along x for interleaved (re, im) columns, with the half spectrum's weights (the first
    column counts once, the others for their conjugates too) and the inverse FFT's 1 / PERIOD^2 (read-only)."""
    complex_type = np.dtype(dtype) if np.dtype(dtype).kind == "c" else np.dtype(np.complex128)
    grid = np.arange(size)
    frequencies = np.r_[0:BAND_HALF, 1 - BAND_HALF:0]
    rows = np.exp(2j * np.pi * np.outer(grid, frequencies) / size).astype(complex_type)
    angle = 2 * np.pi * np.outer(np.arange(BAND_HALF), grid) / size
    weight = np.where(np.arange(BAND_HALF) == 0, 1.0, 2.0)[:, None] / PERIOD**2
    columns = np.stack([weight * np.cos(angle), -weight * np.sin(angle)], axis=1).reshape(2 * BAND_HALF, size)
    columns = columns.astype(rows.real.dtype)
    rows.setflags(write=False)
    columns.setflags(write=False)
    return rows, columns


def whitened_spectrum(tile: np.ndarray) -> np.ndarray:
    """The FFT of a folded tile, whitened (``whiten``): what the sync correlations and the chips are read from."""
    return whiten(np.fft.fft2(tile))


def whiten(spectrum: np.ndarray) -> np.ndarray:
    """Divide the tile spectrum (or spectra [..., PERIOD, PERIOD]) by its local RMS (5x5 bins): what is left of the
    picture after folding (edges, gradients, textures that happen to repeat) is concentrated in a few
    frequencies; flattening them keeps those frequencies from dominating the correlation."""
    power = np.fft.fftshift(np.abs(spectrum) ** 2, axes=(-2, -1)).astype(np.float32)
    flat = power.reshape(-1, *power.shape[-2:])
    local = np.stack([cv2.blur(p, (5, 5), borderType=cv2.BORDER_WRAP) for p in flat]).reshape(power.shape)
    local = np.fft.ifftshift(local, axes=(-2, -1)).astype(np.float64)
    mean = local.mean(axis=(-2, -1), keepdims=True)
    return spectrum / np.sqrt(local + 1e-9 * mean + 1e-30)


def align_spectrum(spectrum: np.ndarray, layout: KeyedLayout, periods: float) -> Alignment:
    """Cyclic shift of a folded tile, given as its ``whitened_spectrum``, that best matches the sync pattern, and
    the chips read there.

    The correlation is searched on a half-pixel grid (a peak between pixels would otherwise lose up to a
    third of its height), refined by a parabola, and the chips are read at that sub-pixel shift.
    """
    return align_spectra(spectrum[None], layout, [periods])[0]


def align_spectra(spectra: np.ndarray, layout: KeyedLayout, periods: list[float]) -> list[Alignment]:
    """``align_spectrum`` of each of ``spectra`` [S, PERIOD, PERIOD] against one sync pattern, in one batch."""
    corrs = band_correlation(band(spectra * layout.sync_spectrum_conj), UPSAMPLE * PERIOD)
    n = corrs.shape[-1]
    near = np.arange(-2 * UPSAMPLE, 2 * UPSAMPLE + 1)
    out = []
    for spectrum, corr, count in zip(spectra, corrs, periods, strict=True):
        dy, dx = np.unravel_index(int(np.argmax(corr)), corr.shape)
        away = np.ones_like(corr, dtype=bool)
        away[np.ix_((dy + near) % n, (dx + near) % n)] = False
        spread = float(corr[away].std()) + 1e-12
        fy = (dy + _subpixel(corr[dy - 1, dx], corr[dy, dx], corr[(dy + 1) % n, dx])) / UPSAMPLE
        fx = (dx + _subpixel(corr[dy, dx - 1], corr[dy, dx], corr[dy, (dx + 1) % n])) / UPSAMPLE
        out.append(Alignment(z=float(corr[dy, dx]) / spread, shift=(float(fx), float(fy)), spectrum=spectrum,
                             periods=count))
    return out
