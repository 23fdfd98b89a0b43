"""Public API of the watermark codec: ``embed``, ``detect``, ``is_marked``.

A keyed, blind, periodic spread-spectrum mark (Kutter 1998). A PERIOD px tile carrying a sync pattern and
the error-corrected 64-bit payload is repeated over the image's luminance, shaped by local texture. The
detector recovers scale/aspect/rotation from the residual's autocorrelation lattice, folds all periods onto
one tile, finds the crop offset with the sync pattern and decodes the payload with soft Viterbi + CRC.

Re-marking policy (same key): ``embed`` first looks for a mark on the embedding grid, i.e. in a previous
output of ``embed`` that may since have been cropped or recompressed but not resized. If that mark carries
the *same* payload, the image is returned unchanged (as a copy): embedding is idempotent. If it carries a
*different* payload, ``AlreadyWatermarkedError`` is raised, because two marks under one key would garble
each other; mark the unmarked original instead. Marks under other keys are invisible to this check and are
left alone (both stay readable, each with its own key). A resized mark is not looked for (that would cost a
full detection); call ``detect`` first where that matters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from . import payload as coding
from .arrays import ImageTooSmallError, add_to_colour, check_size, extremes, split
from .folding import Alignment, align, fold
from .lattice import IDENTITY, Lattice, estimate_lattices
from .pattern import PERIOD, keyed_layout
from .perceptual import amplitude_map, headroom_shift, luma
from .residual import whitened_residual
from .scoring import log10_false_positive

PAYLOAD_BITS: int = coding.PAYLOAD_BITS
MIN_SIDE: int = 2 * PERIOD          # 128 px: smallest width/height embed() accepts (two periods)
MIN_DETECT_SIDE: int = PERIOD       # 64 px: smallest width/height detect() accepts
MIN_KEY_BYTES: int = 16
MAX_STRENGTH: float = 4.0
DEFAULT_FPR: float = 1e-6
EXISTING_WINDOW: int = 8 * PERIOD   # px (per side) that embed's re-marking check looks at
STRIPE: int = 2 * PERIOD            # rows embedded at a time

__all__ = [
    "MIN_DETECT_SIDE", "MIN_SIDE", "PAYLOAD_BITS", "AlreadyWatermarkedError", "Analysis", "Detection",
    "ImageTooSmallError", "analyse", "detect", "embed", "is_marked",
]


class AlreadyWatermarkedError(InvalidInputError):
    """The image already carries a different payload under the same key (see the re-marking policy)."""

    def __init__(self, message: str, existing_payload: int):
        super().__init__(message)
        self.existing_payload = existing_payload


@dataclass(frozen=True)
class Detection:
    """Result of ``detect``. ``payload`` is None whenever ``found`` is False."""

    found: bool
    payload: int | None
    false_positive_probability: float
    score: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Analysis:
    """Everything the detector worked out, for diagnostics and benchmarks (``detect`` is the API).

    ``bits`` are the 64 decoded payload bits even when the CRC failed: never report them as an ID.
    """

    lattice: Lattice
    alignment: Alignment
    payload: int | None
    bits: np.ndarray
    hypotheses: int
    log10_fpp: float


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise InvalidInputError(f"the watermark key must be bytes, got {type(key).__name__}")
    key = bytes(key)
    if len(key) < MIN_KEY_BYTES:
        raise InvalidInputError(
            f"the watermark key is {len(key)} bytes; use at least {MIN_KEY_BYTES} random bytes (e.g. os.urandom(32))"
        )
    return key


def _check_payload(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"the payload must be an integer, got {type(value).__name__}")
    value = int(value)
    if not 0 <= value < 1 << PAYLOAD_BITS:
        raise InvalidInputError(f"the payload must be in 0 .. 2**{PAYLOAD_BITS} - 1, got {value}")
    return value


# ---------------------------------------------------------------------------------------------------- detect


def _align(residual: np.ndarray, lattice: Lattice, key: bytes) -> Alignment:
    """Fold ``residual`` on ``lattice`` and find the sync pattern's cyclic shift."""
    tile, periods = fold(residual, lattice)
    return align(tile, keyed_layout(key), periods)


def _could_pass(z: float, hypotheses: int, fpr_threshold: float) -> bool:
    """Whether a CRC pass at sync ``z`` would meet ``fpr_threshold`` (else decoding cannot matter)."""
    return log10_false_positive(z, hypotheses, True) <= math.log10(fpr_threshold)


def analyse(image: np.ndarray, key: bytes, fpr_threshold: float = DEFAULT_FPR,
            lattices: list[Lattice] | None = None) -> Analysis:
    """Run the detector and return its working: the best hypothesis, CRC-valid ones first, then by sync z.

    Each lattice hypothesis is folded and aligned; those whose sync is strong enough for a CRC pass to meet
    ``fpr_threshold`` are Viterbi-decoded. If none passes, the one with the best sync is list-decoded.
    (``bits`` of a hypothesis too weak to decode come from its Viterbi path all the same, for diagnostics.)
    """
    key = _check_key(key)
    _, colour = split(image, "detect")
    check_size(colour, MIN_DETECT_SIDE, "detect")
    residual = whitened_residual(luma(colour))
    if lattices is None:
        lattices = estimate_lattices(residual)
    layout = keyed_layout(key)
    reads = []
    for lattice in lattices:
        alignment = _align(residual, lattice, key)
        soft = layout.soft_bits(alignment.chips)
        value, bits = coding.decode(soft) if _could_pass(alignment.z, len(lattices), fpr_threshold) else (None, None)
        reads.append((lattice, alignment, value, bits, soft))
    lattice, alignment, value, bits, soft = max(reads, key=lambda r: (r[2] is not None, r[1].z))
    if value is None and _could_pass(alignment.z, len(lattices), fpr_threshold):
        value = coding.list_decode(soft)
    if value is not None:
        bits = coding.int_to_bits(value, PAYLOAD_BITS)
    elif bits is None:
        bits = coding.decode(soft)[1]
    log_fpp = log10_false_positive(alignment.z, len(lattices), value is not None)
    return Analysis(lattice, alignment, value, bits, len(lattices), log_fpp)


def detect(image: np.ndarray, key: bytes, fpr_threshold: float = DEFAULT_FPR) -> Detection:
    """Look for a mark made with ``key`` (blind: no original needed).

    ``image``: HxW, HxWx1, HxWx3 or HxWx4 (alpha ignored), uint8/uint16 or float in 0..1, at least
    ``MIN_DETECT_SIDE`` px a side. ``found`` is True only when the payload passed its CRC *and* the
    calibrated false-positive probability (the chance that an unmarked image scores this high, corrected for
    every lattice/shift hypothesis tried) is at most ``fpr_threshold``. ``score`` is -log10 of that
    probability. ``details``: scale_x, scale_y, rotation_deg, shear_deg (the geometry found), offset_px
    (where the tile origin lies in the image), sync_z, periods (tiles folded), hypotheses, crc_ok.
    """
    if not 0.0 < fpr_threshold < 1.0:
        raise InvalidInputError(f"fpr_threshold must be in (0, 1), got {fpr_threshold}")
    analysis = analyse(image, key, fpr_threshold)
    found = analysis.payload is not None and analysis.log10_fpp <= math.log10(fpr_threshold)
    lattice, alignment = analysis.lattice, analysis.alignment
    offset = lattice.matrix() @ np.array(alignment.shift)
    details = {
        **lattice.describe(),
        "offset_px": (float(offset[0]), float(offset[1])),
        "sync_z": float(alignment.z),
        "periods": float(alignment.periods),
        "hypotheses": analysis.hypotheses,
        "crc_ok": analysis.payload is not None,
    }
    return Detection(found=found, payload=analysis.payload if found else None,
                     false_positive_probability=10.0**analysis.log10_fpp, score=-analysis.log10_fpp,
                     details=details)


def is_marked(image: np.ndarray, key: bytes) -> bool:
    """True when ``detect`` finds a mark made with ``key`` at the default threshold."""
    return detect(image, key).found


# ---------------------------------------------------------------------------------------------------- embed


def _existing_payload(y: np.ndarray, key: bytes) -> int | None:
    """Payload of a same-key mark on the embedding grid (a previous output of ``embed``), if any.

    Looks at a central, period-aligned window of EXISTING_WINDOW px only: plenty of periods, constant cost.
    """
    h, w = y.shape
    top = max(0, (h - EXISTING_WINDOW) // 2) // PERIOD * PERIOD
    left = max(0, (w - EXISTING_WINDOW) // 2) // PERIOD * PERIOD
    residual = whitened_residual(y[top:top + EXISTING_WINDOW, left:left + EXISTING_WINDOW])
    alignment = _align(residual, IDENTITY, key)
    if not _could_pass(alignment.z, 1, DEFAULT_FPR):
        return None
    return coding.decode(keyed_layout(key).soft_bits(alignment.chips))[0]


def embed(image: np.ndarray, payload: int, key: bytes, strength: float = 1.0) -> np.ndarray:
    """Return a new array like ``image`` carrying ``payload`` (0 .. 2**64-1) under ``key``.

    ``image``: HxW gray, HxWx3 RGB or HxWx4 RGBA (alpha copied untouched), uint8/uint16 or float32/64 in
    0..1 (floats outside 0..1 are clipped), width and height at least ``MIN_SIDE`` px (else
    ``ImageTooSmallError``). The input is never modified. ``strength`` scales the mark (1.0 keeps PSNR >= 40
    dB; up to ``MAX_STRENGTH``). ``key``: at least 16 secret bytes. Re-marking policy: see the module
    docstring (same payload: unchanged copy; different payload: ``AlreadyWatermarkedError``).
    """
    payload = _check_payload(payload)
    key = _check_key(key)
    if not 0.0 < float(strength) <= MAX_STRENGTH:
        raise InvalidInputError(f"strength must be in (0, {MAX_STRENGTH}], got {strength}")
    arr, colour = split(image, "embed")
    check_size(colour, MIN_SIDE, "embed")
    y = luma(colour)
    existing = _existing_payload(y, key)
    if existing == payload:
        return arr.copy()
    if existing is not None:
        raise AlreadyWatermarkedError(
            f"the image already carries watermark ID {existing} under this key; a second mark would make "
            f"both unreadable. Embed ID {payload} into the unmarked original instead.",
            existing_payload=existing,
        )
    h, w = y.shape
    tile = keyed_layout(key).tile(coding.encode(payload))
    pattern = np.tile(tile, (STRIPE // PERIOD, -(-w // PERIOD)))[:, :w]
    amplitude = amplitude_map(y, float(strength))
    out = np.empty_like(arr)
    for top in range(0, h, STRIPE):  # stripes keep every temporary in cache
        rows = slice(top, min(h, top + STRIPE))
        delta = pattern[: rows.stop - top] * amplitude[rows]
        high, low = extremes(colour[rows])
        delta += headroom_shift(high, low, delta)
        out[rows] = add_to_colour(arr[rows], colour[rows], delta)
    return out
