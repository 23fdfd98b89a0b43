"""The keyed tile: a PERIOD x PERIOD band-limited pattern built from a GRID x GRID array of +/-1 chips.

Every chip is either a *sync* chip (a keyed sign, the same for every payload: it locates the tile) or a
*payload* chip (a keyed sign times one of the 528 coded bits, at a keyed, scattered position). All keyed
material comes from SHAKE-256 of the key, so without the key the chip positions and signs are unknown:
nobody can read the payload or make a tile that the detector accepts.

The chips are turned into a smooth tile by periodic Fourier interpolation limited to a band of
``LOW_CUTOFF`` .. ``GRID/2 - 1`` cycles per tile (0.03 .. 0.19 cycles per pixel at scale 1): no DC or very
low frequencies (the most visible, and drowned by the picture), nothing so fine that 0.5x downscaling,
mild blur or JPEG removes it. Reading is the adjoint (a matched filter): band-select and decimate.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .payload import CODED_BITS, ID64, RATE_INVERSE, STEPS, PayloadCode

PERIOD = 64          # tile side in pixels at embedding scale
GRID = 26            # chips per tile side (one chip ~2.5 px)
CHIPS_PER_BIT = 1
PAYLOAD_CHIPS = CODED_BITS * CHIPS_PER_BIT           # 528
SYNC_CHIPS = GRID * GRID - PAYLOAD_CHIPS             # 148
LOW_CUTOFF = 2.0     # cycles per tile: frequencies below are left out of the pattern


V1_DOMAIN = b"backdrop-watermark-v1"


def _keyed_bytes(key: bytes, label: str, n: int, domain: bytes = V1_DOMAIN) -> bytes:
    return hashlib.shake_256(domain + b"\x00" + label.encode() + b"\x00" + bytes(key)).digest(n)


@lru_cache(maxsize=8)
def band_mask(size: int = PERIOD) -> np.ndarray:
    """Bool [size, size] mask of the tile frequencies the pattern uses (numpy fft layout, cycles per tile)."""
    f = np.fft.fftfreq(size, 1.0 / size)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    limit = GRID // 2
    return (np.abs(fx) < limit) & (np.abs(fy) < limit) & (np.hypot(fx, fy) >= LOW_CUTOFF)


BAND = band_mask()


def chips_to_tile(chips: np.ndarray, size: int = PERIOD) -> np.ndarray:
    """[GRID, GRID] chip values -> [size, size] band-limited periodic pattern (float64).

    ``size`` is the tile's period in pixels: the same pattern (the same cycles per tile) rendered at any
    period by exact Fourier interpolation; PERIOD is the canonical grid the detector folds onto.
    """
    spectrum = np.zeros((size, size), dtype=np.complex128)
    small = np.fft.fft2(chips)
    half = GRID // 2
    idx = np.r_[0:half, size - half:size]
    spectrum[np.ix_(idx, idx)] = small
    spectrum *= band_mask(size)
    return np.fft.ifft2(spectrum).real * (size / GRID) ** 2


def spectrum_to_chips(tile_spectrum: np.ndarray) -> np.ndarray:
    """Matched-filter chip estimates [GRID, GRID] from the FFT of a tile (adjoint of ``chips_to_tile``)."""
    half = GRID // 2
    idx = np.r_[0:half, PERIOD - half:PERIOD]
    small = (tile_spectrum * BAND)[np.ix_(idx, idx)]
    return np.fft.ifft2(small).real


@dataclass(frozen=True)
class KeyedLayout:
    """Where the sync and payload chips sit in the tile, and their keyed signs."""

    sync_index: np.ndarray      # flat chip indices of the sync chips
    sync_signs: np.ndarray      # +/-1 per sync chip
    payload_index: np.ndarray   # flat chip indices of the payload chips
    payload_signs: np.ndarray   # +/-1 per payload chip (scrambling)
    payload_bit: np.ndarray     # coded-bit index carried by each payload chip
    sync_tile: np.ndarray       # [PERIOD, PERIOD] the sync part of the tile (unit chips)
    sync_spectrum_conj: np.ndarray  # conj(FFT(sync_tile)) for correlation
    coded_bits: int = CODED_BITS    # length of the code word the payload chips carry

    def chips(self, coded: np.ndarray) -> np.ndarray:
        """[GRID, GRID] chip values (+/-1) carrying the coded bits."""
        chips = np.zeros(GRID * GRID)
        chips[self.sync_index] = self.sync_signs
        chips[self.payload_index] = self.payload_signs * (1.0 - 2.0 * coded[self.payload_bit])
        return chips.reshape(GRID, GRID)

    def tile(self, coded: np.ndarray, size: int = PERIOD) -> np.ndarray:
        """Full float32 tile (unit RMS) carrying the coded bits, ``size`` px per period."""
        tile = chips_to_tile(self.chips(coded), size)
        return (tile / np.sqrt(np.mean(tile**2))).astype(np.float32)

    def soft_bits(self, chips: np.ndarray) -> np.ndarray:
        """Soft coded bits (positive = 0) from chip estimates, summing each bit's chips."""
        values = chips.reshape(-1)[self.payload_index] * self.payload_signs
        return np.bincount(self.payload_bit, weights=values, minlength=self.coded_bits)

    def sync_correlation(self, chips: np.ndarray) -> float:
        return float(np.dot(chips.reshape(-1)[self.sync_index], self.sync_signs))


@lru_cache(maxsize=16)
def keyed_layout(key: bytes) -> KeyedLayout:
    """The v1 layout for ``key`` (cached: deriving it costs a few milliseconds)."""
    return domain_layout(key, V1_DOMAIN)


ALL_GENERATORS = tuple(range(RATE_INVERSE))


def kept_bits(generators: tuple[int, ...] = ALL_GENERATORS) -> np.ndarray:
    """Indices of the coded bits a layout carries when only ``generators`` of the code's outputs are sent
    (puncturing: the others are erasures, soft value 0, to the Viterbi decoder)."""
    return (np.arange(STEPS)[:, None] * RATE_INVERSE + np.asarray(generators)[None, :]).reshape(-1)


def spread_bits(chips: int, coded_bits: int) -> np.ndarray:
    """The coded bit each of ``chips`` payload chips carries when the word is shorter than the chips: every bit
    once, then the rest again, evenly over the word (a second chip for one bit in every coded_bits / rest)."""
    rest = chips - coded_bits
    return np.concatenate([np.arange(coded_bits), (np.arange(rest) * coded_bits) // max(rest, 1)])


@lru_cache(maxsize=256)
def domain_layout(key: bytes, domain: bytes, generators: tuple[int, ...] = ALL_GENERATORS,
                  code: PayloadCode = ID64) -> KeyedLayout:
    """The layout for ``key`` within ``domain`` (each codec version and carrier variant has its own).

    ``generators``: the outputs of the 64-bit ID's code carried (all of them for v1); the chips the others
    would take are sync chips instead (a punctured code: a stronger sync for a slightly weaker payload code).
    ``code``: the payload code. A shorter one than ``ID64`` (v3's ``ID40``) keeps the same sync chips and
    payload positions and sends its whole word over the payload chips, some bits twice (``spread_bits``).
    """
    n = GRID * GRID
    carried = kept_bits(generators)
    sync_chips = n - carried.size
    order = np.argsort(np.frombuffer(_keyed_bytes(key, "order", 8 * n, domain), dtype="<u8"), kind="stable")
    sign_bits = np.unpackbits(np.frombuffer(_keyed_bytes(key, "signs", -(-n // 8), domain), dtype=np.uint8))[:n]
    signs = 1.0 - 2.0 * sign_bits.astype(np.float64)
    sync_index, payload_index = order[:sync_chips], order[sync_chips:]
    spread = np.argsort(np.frombuffer(_keyed_bytes(key, "spread", 8 * carried.size, domain), dtype="<u8"),
                        kind="stable")
    if code == ID64:
        payload_bit = carried[spread]  # v1 (every output carried): spread itself, as before
    elif code.coded_bits <= carried.size:
        payload_bit = spread_bits(carried.size, code.coded_bits)[spread]
    else:
        raise ValueError(f"a {code.coded_bits}-bit code word does not fit {carried.size} payload chips")
    chips = np.zeros(n)
    chips[sync_index] = signs[sync_index]
    sync_tile = chips_to_tile(chips.reshape(GRID, GRID))
    return KeyedLayout(
        sync_index=sync_index, sync_signs=signs[sync_index],
        payload_index=payload_index, payload_signs=signs[payload_index], payload_bit=payload_bit,
        sync_tile=sync_tile, sync_spectrum_conj=np.conj(np.fft.fft2(sync_tile)), coded_bits=code.coded_bits,
    )
