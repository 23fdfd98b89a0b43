"""v2 of the codec: per-image carriers (see carrier.py), a dihedral search, and a half-resolution level.

Embedding is v1's (luminance, texture-shaped amplitude, headroom shift), with the image's own tile
(carrier.image_tile: one or two layers, carrier.layers_for). Detection shares v1's residual,
autocorrelation lattice search and fold; what v2 adds for each lattice hypothesis:

* *Level.* A tile period of 96 px or more (a large image's 128 px tile, or any tile enlarged) is folded from
  the residual of the image downscaled 2x (area), where its band sits where v1's does at full size; a
  second lattice search on that level covers periods of 160..320 px (a large image enlarged up to 2.5x).
* *Search.* The folded tile is compared with every variant's sync pattern under each of the 8 dihedral
  transforms, at every cyclic shift: one batch of 64 small inverse FFTs (integer shifts), then the best
  two are refined on the half-pixel grid exactly as in v1.
* *Check.* A word that passes its CRC must also name, through its nonce, the variant it was read with.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from . import carrier
from .folding import Alignment, align_spectrum, band, band_correlation
from .lattice import IDENTITY, RETURNED, Lattice, estimate_lattices
from .pattern import PERIOD
from .perceptual import V1_SHAPING
from .residual import whitened_residual

WEIGHTS = V1_SHAPING          # the residual's per-pixel weights (residual.py), shared by v1 and v2 searches: v1's
                              # shaping served both better than v2's (rocket, crop + 0.8x + JPEG 60: v1 z 7.5
                              # unweighted, 8.2 with it, 7.3 and no payload with v2's)
HALF_LEVEL_PERIOD = 96.0     # px: lattices with a longer period are folded at the half-resolution level
LEVEL1_LO, LEVEL1_HI = 80.0, 160.0  # periods searched on the half-resolution level (its px)
LEVEL1_LATTICES = 3          # lattices kept from that search
LEVEL1_MIN_SIDE = 192        # its px: two periods of 96 (a 128 px tile enlarged 1.5x); smaller images skip it
LEVEL0_LATTICES = RETURNED   # lattices kept from the full-size searches
REFINED = 2                  # (dihedral, variant) pairs refined on the half-pixel grid per hypothesis...
CLOSE = 0.9                  # ... the runner-up only when its integer-shift peak is this close to the best
SEARCHED = carrier.DIHEDRAL * carrier.VARIANTS  # sync patterns compared per hypothesis
HYPOTHESES = LEVEL0_LATTICES + 1 + 1 + LEVEL1_LATTICES  # at most: level-0 lattices + grid, half level's grid +
                                                        # lattices (hypothesis_count: for a given size)


@dataclass(frozen=True)
class Hypothesis:
    """A lattice in the px of one pyramid level (0: the image, 1: downscaled 2x)."""

    lattice: Lattice
    level: int

    def native(self) -> Lattice:
        return self.lattice.scaled(2.0**self.level)


@dataclass(frozen=True)
class Match:
    """The best sync match of one folded tile: alignment, and the dihedral transform and variant it used."""

    alignment: Alignment
    dihedral: int
    variant: int


class Pyramid:
    """Luma and residuals at full and half resolution, computed when first needed (``texture``: the texture of
    ``y``, perceptual.texture_rms, where the caller has it already)."""

    def __init__(self, y: np.ndarray, r0: np.ndarray | None = None, texture: np.ndarray | None = None):
        self.y = y
        self._r = {0: r0} if r0 is not None else {}
        self._texture = texture

    def residual(self, level: int) -> np.ndarray:
        if level not in self._r:
            if level == 0:
                self._r[0] = whitened_residual(self.y, WEIGHTS, self._texture)
            else:
                h, w = self.y.shape
                half = cv2.resize(self.y, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
                self._r[1] = whitened_residual(half, WEIGHTS)
        return self._r[level]

    def window(self, top: int, left: int, side: int) -> Pyramid:
        """The pyramid of a ``side`` px square window at (``top``, ``left``), its residuals cropped from this one's
        (a window's own residual would differ only at its border and in scale); the half level only where the
        corner is on the half level's pixel grid, i.e. ``top`` and ``left`` even."""
        rows, cols = slice(top, top + side), slice(left, left + side)
        out = Pyramid(self.y[rows, cols], r0=self.residual(0)[rows, cols])
        if top % 2 == 0 and left % 2 == 0 and out.has_half_level():
            out._r[1] = self.residual(1)[top // 2:(top + side) // 2, left // 2:(left + side) // 2]
        return out

    def has_half_level(self) -> bool:
        return min(self.y.shape) >= 2 * PERIOD

    def has_level1_search(self) -> bool:
        """Whether the image is large enough for the half level's own lattice search (long periods)."""
        return min(self.y.shape) >= 2 * LEVEL1_MIN_SIDE


def hypotheses(pyramid: Pyramid, level0: list[Lattice]) -> list[Hypothesis]:
    """v2's hypotheses: the level-0 lattices (long ones moved to the half level), the half level's grid
    (a large image's 128 px tile, unscaled) and the half level's own lattice search (long periods)."""
    half = pyramid.has_half_level()
    out = [Hypothesis(lat.scaled(0.5), 1) if half and lat.period >= HALF_LEVEL_PERIOD else Hypothesis(lat, 0)
           for lat in level0]
    if half:
        out.append(Hypothesis(IDENTITY, 1))
        if pyramid.has_level1_search():
            r1 = pyramid.residual(1)
            out += [Hypothesis(lat, 1) for lat in estimate_lattices(r1, LEVEL1_LO, LEVEL1_HI, LEVEL1_LATTICES, fine=0,
                                                                     identity=False, main_square=False)]
    return out


def hypothesis_count(pyramid: Pyramid, level0: int = LEVEL0_LATTICES + 1) -> int:
    """The most hypotheses ``hypotheses`` can return for this image size, given ``level0`` full-size lattices
    (the false-positive bound's H)."""
    count = level0
    if pyramid.has_half_level():
        count += 1 + (LEVEL1_LATTICES if pyramid.has_level1_search() else 0)
    return count


def search(spectrum: np.ndarray, key: bytes, periods: float, refine: int = REFINED) -> Match:
    """Best (dihedral, variant, cyclic shift) of a folded tile, given as its ``whitened_spectrum``, against every
    variant's sync pattern; the ``refine`` best of the integer-shift search are refined on the half-pixel grid."""
    turned = spectrum.astype(np.complex64).ravel()[_band_of_each_dihedral()]  # single precision: ranking only
    product = turned[:, None] * carrier.sync_bands(bytes(key))[None]  # [8, VARIANTS, band rows, band columns]
    peaks = band_correlation(product).max(axis=-2).max(axis=-1).reshape(-1)  # [8 * VARIANTS]
    coarse = peaks / (_spread(product).reshape(-1) + 1e-12)
    best: Match | None = None
    order = np.argsort(-coarse)[:refine]
    order = [i for i in order if coarse[i] >= CLOSE * coarse[order[0]]]  # a clear winner is refined alone
    for index in order:
        k, v = divmod(int(index), carrier.VARIANTS)
        alignment = align_spectrum(carrier.dihedral(spectrum, k), carrier.layout(key, v), periods)
        if best is None or alignment.z > best.alignment.z:
            best = Match(alignment, k, v)
    assert best is not None
    return best


@lru_cache(maxsize=1)
def _band_of_each_dihedral() -> np.ndarray:
    """Flat indices into a PERIOD x PERIOD spectrum of ``band(dihedral(spectrum, k))`` for every k, [8, rows, cols]."""
    index = np.arange(PERIOD * PERIOD).reshape(PERIOD, PERIOD)
    out = np.stack([band(carrier.dihedral(index, k)) for k in range(carrier.DIHEDRAL)])
    out.setflags(write=False)
    return out


def _spread(product: np.ndarray) -> np.ndarray:
    """Standard deviation over all shifts of each correlation from its band alone (Parseval: the band holds no
    DC, so the mean is 0; every column but the first stands for its conjugate too)."""
    weights = np.full(product.shape[-1], 2.0, np.float32)
    weights[0] = 1.0
    energy = (np.square(product.real) + np.square(product.imag)).sum(axis=-2) @ weights
    return np.sqrt(energy) / PERIOD**2


def nonce_matches(key: bytes, payload: int, variant: int, version: int = 2) -> bool:
    """Whether a decoded payload's own nonce (under carrier ``version``) names the variant it was read with."""
    return carrier.nonce(key, payload, version).variant == variant
