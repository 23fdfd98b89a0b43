"""The residual's autocorrelation, as a z-map in which the mark's tile lattice shows as compact peaks.

Computed through the power spectrum (Wiener-Khinchin) with zero padding (no wrap-around), the spectrum
flattened by its local average so every frequency counts equally (the average taken over the periodic
spectrum, half of which is stored: real single-precision transforms), each lag normalised by its overlap, and
a radial high-pass that removes the ridges straight edges and image borders draw through the origin. The
result is scaled to a robust z-map (median 0, MAD-based unit spread) so comb sums over lattice points are
comparable between images.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
import scipy.fft as sp_fft

from .pattern import PERIOD

MAX_LAG = 6 * PERIOD  # px: the longest lag any lattice search asks for (lattice.estimate_lattices)
WINDOW = 1024        # px: the autocorrelation uses at most the central WINDOW x WINDOW px
RADIAL_STEP = 3.0    # px: the radial high-pass compares each lag with lags this much further in and out
FLATTEN_SIGMA = 4.0  # frequency bins: the power spectrum is divided by its Gaussian local mean of this width


def central_window(r: np.ndarray) -> np.ndarray:
    """The central WINDOW x WINDOW px of ``r`` (all of it when smaller)."""
    h, w = r.shape
    top, left = max(0, (h - WINDOW) // 2), max(0, (w - WINDOW) // 2)
    return r[top:top + min(h, WINDOW), left:left + min(w, WINDOW)]


def autocorrelation(r: np.ndarray, max_lag: int) -> np.ndarray:
    """Normalised autocorrelation z-map, shape [2*max_lag+1, 2*max_lag+1], centre = lag (0, 0)."""
    h, w = r.shape
    ph, pw = cv2.getOptimalDFTSize(h + max_lag), cv2.getOptimalDFTSize(w + max_lag)
    workers = max(1, cv2.getNumThreads())  # one setting for the whole detector (cv2.setNumThreads)
    centred = (r - r.mean()).astype(np.float32, copy=False)
    # real single-precision transforms on half spectra; rows past h are zero padding, and only lags up to
    # max_lag are transformed back
    spectrum = sp_fft.fft(sp_fft.rfft(centred, n=pw, axis=1, workers=workers), n=ph, axis=0, workers=workers)
    power = np.square(spectrum.real)
    power += np.square(spectrum.imag)
    columns = sp_fft.ifft(_flattened(power, pw), axis=0, workers=workers)
    columns = np.concatenate([columns[ph - max_lag:], columns[:max_lag + 1]])
    lags = sp_fft.irfft(columns, n=pw, axis=1, workers=workers)
    acf = np.concatenate([lags[:, pw - max_lag:], lags[:, :max_lag + 1]], axis=1).astype(np.float32, copy=False)
    acf *= _inverse_overlap(h, w, max_lag)
    acf = _radial_highpass(acf)
    ring = acf[::3, ::3][_far_from_origin(max_lag)]  # a subsample is plenty
    centre = float(np.median(ring))
    spread = 1.4826 * float(np.median(np.abs(ring - centre))) + 1e-12
    acf -= np.float32(centre)
    acf /= np.float32(spread)
    return acf


def _flattened(power: np.ndarray, width: int) -> np.ndarray:
    """A real power spectrum's half [rows, width // 2 + 1] divided by its Gaussian local mean (FLATTEN_SIGMA bins),
    the mean taken over the whole spectrum (the half and its mirror image, P(-ky, -kx) = P(ky, kx)), then made
    symmetric again: what the inverse transform of the whole flattened spectrum reads."""
    half = power.shape[1]
    whole = np.empty((power.shape[0], width), np.float32)
    whole[:, :half] = power
    _mirror(power[:, width - half:0:-1], out=whole[:, half:])  # kx = half .. width - 1 is -(width - kx)
    whole /= cv2.GaussianBlur(whole, (0, 0), FLATTEN_SIGMA) + 1e-12 * float(whole.mean() + 1e-30)
    mirrored = np.empty_like(power)
    mirrored[:, :1] = _mirror(whole[:, :1])
    _mirror(whole[:, width - 1:width - half:-1], out=mirrored[:, 1:])
    mirrored += whole[:, :half]
    mirrored *= np.float32(0.5)
    return mirrored


def _mirror(columns: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``columns`` at the negated row frequency (row -ky mod rows), into ``out`` (a new array when None)."""
    if out is None:
        out = np.empty_like(columns)
    out[:1] = columns[:1]
    out[1:] = columns[:0:-1]
    return out


def _radial_highpass(acf: np.ndarray) -> np.ndarray:
    """acf minus the mean of its values RADIAL_STEP px further in and out along the radius.

    Straight edges and borders make ridges through the origin, constant along the radius; lattice peaks
    are compact, so this removes the first and keeps the second.
    """
    (inner_x, inner_y), (outer_x, outer_y) = _radial_maps(acf.shape[0])
    inner = cv2.remap(acf, inner_x, inner_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    outer = cv2.remap(acf, outer_x, outer_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return acf - 0.5 * (inner + outer)


@lru_cache(maxsize=8)
def _radial_maps(size: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The remap coordinates RADIAL_STEP px in and out along the radius of a ``size`` x ``size`` lag map
    (one per size: every image of a size shares them; read-only)."""
    c = (size - 1) / 2.0
    in_x, in_y, out_x, out_y = _offsets(size)
    return ((_read_only(in_x + c), _read_only(in_y + c)), (_read_only(out_x + c), _read_only(out_y + c)))


_largest_offsets: tuple[np.ndarray, ...] = ()


def _offsets(size: int) -> tuple[np.ndarray, ...]:
    """(lag - step) x, y and (lag + step) x, y of a ``size`` x ``size`` lag map, centred on lag 0.

    The values depend only on the lag, so an odd-sized map's are the centre of any larger odd-sized map's: those
    of the largest map a search uses (2 * MAX_LAG + 1) are computed once and cropped (bit for bit what computing
    them anew gives), and a picture of a new size costs an addition instead of a hypot and two divisions per lag
    (below 1,280 px every picture size has lag maps of its own).
    """
    global _largest_offsets
    offsets = _largest_offsets  # one snapshot: another thread may replace the global meanwhile
    big = offsets[0].shape[0] if offsets else 0
    if big < size or (big - size) % 2:
        full = max(size, 2 * MAX_LAG + 1) if size % 2 else size
        lags = np.arange(full, dtype=np.float32) - np.float32((full - 1) / 2.0)
        ly, lx = np.meshgrid(lags, lags, indexing="ij")
        radius = np.maximum(np.hypot(lx, ly), 1.0)
        ux, uy = lx / radius * RADIAL_STEP, ly / radius * RADIAL_STEP
        offsets, big = tuple(_read_only(a) for a in (lx - ux, ly - uy, lx + ux, ly + uy)), full
        if full % 2 == 0:  # an even size (no search asks for one) has no centre lag to share: used once
            return offsets
        _largest_offsets = offsets
    top = (big - size) // 2
    return tuple(a[top:top + size, top:top + size] for a in offsets)


@lru_cache(maxsize=32)
def _inverse_overlap(h: int, w: int, max_lag: int) -> np.ndarray:
    """1 / sqrt(pixels overlapping at each lag) of an h x w residual (read-only, cached per size)."""
    lags = np.abs(np.arange(-max_lag, max_lag + 1))
    overlap = np.outer(np.float64(h) - lags, np.float64(w) - lags)  # whole numbers, exact in float64
    np.sqrt(overlap, out=overlap)
    np.divide(1.0, overlap, out=overlap)
    return _read_only(overlap.astype(np.float32))


@lru_cache(maxsize=8)
def _far_from_origin(max_lag: int) -> np.ndarray:
    """Which lags of every third row and column lie more than 12 px from the origin (the z-map's ring)."""
    squares = np.square(np.arange(-max_lag, max_lag + 1)[::3])
    return _read_only(squares[:, None] + squares[None, :] > 12 * 12)  # whole lags: the same as hypot > 12


def _read_only(array: np.ndarray) -> np.ndarray:
    """``array``, marked read-only (the cached geometry is shared by every call)."""
    array.setflags(write=False)
    return array


def sample(acf: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``acf`` at lag points [..., 2] (x, y); zero outside. Shape points.shape[:-1]."""
    c = np.float32((acf.shape[0] - 1) / 2.0)
    n = points.size // 2
    cols = 1024
    rows = -(-n // cols)
    maps = np.empty((rows * cols, 2), dtype=np.float32)  # one two-channel map (CV_32FC2): no split copies
    maps[:n] = points.reshape(-1, 2)
    maps[:n] += c
    maps[n:] = -10.0
    out = cv2.remap(acf, maps.reshape(rows, cols, 2), None, cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return out.reshape(-1)[:n].reshape(points.shape[:-1])
