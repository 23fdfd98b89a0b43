"""The v2 carrier: a keyed tile that differs from image to image, and the symmetries the detector searches.

v1 repeats one keyed tile (the same sync chips in every image, at the same origin), so averaging the noise
residuals of many marked images estimates it, and subtracting the estimate removes the mark. v2 draws a
*nonce* per image from a keyed hash of the payload, and the nonce picks:

* one of VARIANTS keyed chip layouts (sync chips, payload positions and signs all differ between them);
* one of the 8 dihedral transforms of the tile (mirrors, 90 degree turns);
* a cyclic shift of the tile against the image origin (any of period^2 positions).

The detector already searches every cyclic shift (the crop offset) and must search the 8 dihedral transforms
anyway (mirrored and rotated copies of the image); it adds a search over the VARIANTS layouts, and a decoded
payload only counts when its own nonce names the variant it was read with (a 1/VARIANTS check that exactly
pays for the variant search in the false-positive bound). The result: folded on the period and averaged
over a catalog, the marks of different images add up incoherently, so the average holds no usable tile.

The tile is rendered at 2 x PERIOD px from LARGE_SIDE px (geometric mean of width and height) up, so a
thumbnail at 0.25x still has a tile of 32 px whose band (<= 0.375 cycles/px) survives the downscale, and on
mostly flat images (studio shots) from SMALL_SIDE up, where the lower band is what survives JPEG and WebP;
at PERIOD px otherwise (small, busy pictures: a crop keeps more periods). The detector folds every period
onto the canonical PERIOD x PERIOD grid whatever its size in pixels, and does not need to know which.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from .pattern import PERIOD, KeyedLayout, domain_layout
from .perceptual import Shaping

V2_DOMAIN = b"backdrop-watermark-v2"
VARIANTS = 8                 # keyed chip layouts a v2 mark may use (searched by the detector)
DIHEDRAL = 8                 # mirrors and quarter turns
LARGE_SIDE = 768             # px (sqrt(width * height)) from which the tile is rendered at 2 x PERIOD
SMALL_SIDE = 384             # px: from here up, a mostly flat image gets the 2 x PERIOD tile too
FLAT_SHARE = 0.6             # ... when this share of it is flat
FLAT_LEVEL = 1.0             # 8-bit levels of band-pass detail under which a cell counts as flat
PERIODS = (PERIOD, 2 * PERIOD)
SHAPING = Shaping(floor=0.9, max_gain=2.0, ceiling=10.0, target_rms=2.4)  # texture masks more of v2's mark


@dataclass(frozen=True)
class Nonce:
    """What differs between the marks of two images (derived from the key and the payload)."""

    variant: int        # which keyed layout
    dihedral: int       # 0..7, see ``dihedral``
    shift: tuple[int, int]  # (dy, dx) cyclic shift of the tile, in units of 1/65536 of a period

    def shift_px(self, period: int) -> tuple[int, int]:
        return (self.shift[0] * period >> 16, self.shift[1] * period >> 16)


def nonce(key: bytes, payload: int) -> Nonce:
    """The per-image nonce of ``payload`` under ``key`` (deterministic: embedding stays reproducible)."""
    digest = hashlib.shake_256(V2_DOMAIN + b"\x00nonce\x00" + bytes(key) + int(payload).to_bytes(8, "big")).digest(8)
    return Nonce(variant=digest[0] % VARIANTS, dihedral=digest[1] % DIHEDRAL,
                 shift=(int.from_bytes(digest[2:4], "big"), int.from_bytes(digest[4:6], "big")))


def layout(key: bytes, variant: int) -> KeyedLayout:
    """The keyed chip layout of one variant."""
    return domain_layout(bytes(key), V2_DOMAIN + b"/variant-%d" % variant)


@lru_cache(maxsize=16)
def sync_spectra(key: bytes) -> np.ndarray:
    """conj(FFT) of every variant's sync pattern, [VARIANTS, PERIOD, PERIOD] complex64 (the coarse search)."""
    return np.stack([layout(key, v).sync_spectrum_conj for v in range(VARIANTS)]).astype(np.complex64)


def period_for(y: np.ndarray) -> int:
    """Tile period in px for luma ``y`` (8-bit scale): 2 x PERIOD for a large image (thumbnails stay readable)
    or a mostly flat one (its mark then sits at the low frequencies that JPEG and WebP keep on a flat sweep);
    PERIOD otherwise (a small, busy picture: more periods in a crop, less interference from the picture)."""
    h, w = y.shape
    side = (h * w) ** 0.5
    if side >= LARGE_SIDE:
        return 2 * PERIOD
    if side >= SMALL_SIDE and flat_fraction(y) >= FLAT_SHARE:
        return 2 * PERIOD
    return PERIOD


def flat_fraction(y: np.ndarray) -> float:
    """Share of 16 px cells whose band-pass detail (the band a 64 px tile uses) is under FLAT_LEVEL levels."""
    h, w = y.shape
    half = cv2.resize(y, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
    band = cv2.GaussianBlur(half, (0, 0), 0.75) - cv2.GaussianBlur(half, (0, 0), 3.0)
    cells = (max(1, half.shape[1] // 8), max(1, half.shape[0] // 8))
    energy = cv2.resize(band * band, cells, interpolation=cv2.INTER_AREA)
    return float(np.mean(energy < FLAT_LEVEL**2))


def _negate(a: np.ndarray, axis: int) -> np.ndarray:
    """``a[(-i) mod n]`` along ``axis``: a mirror that keeps a periodic tile periodic (and its spectrum's band)."""
    return np.roll(np.flip(a, axis), 1, axis)


def dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 symmetries of the square, on the last two axes of a periodic array (or of its FFT:
    index negation and transposition commute with the DFT). Bit 2: transpose, bit 0: mirror x, bit 1: mirror y.
    """
    if k & 4:
        a = np.swapaxes(a, -1, -2)
    if k & 1:
        a = _negate(a, -1)
    if k & 2:
        a = _negate(a, -2)
    return a


def tile(key: bytes, payload_coded: np.ndarray, mark: Nonce, period: int) -> np.ndarray:
    """The image's own tile: its variant's chips, rendered at ``period`` px, transformed and shifted (float32,
    unit RMS)."""
    base = layout(key, mark.variant).tile(payload_coded, period)
    return np.roll(dihedral(base, mark.dihedral), mark.shift_px(period), axis=(0, 1))
