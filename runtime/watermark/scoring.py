"""Turning a sync correlation into a calibrated false-positive probability.

Without a mark, each value of the sync cross-correlation (a sum over hundreds of chips of noise) is close to
Gaussian with the spread measured on the correlation itself, so one position exceeds ``z`` with probability
``Q(z)``. The detector looks at SHIFTS cyclic shifts (a half-pixel grid over the tile) for each of
``hypotheses`` lattices, so by Bonferroni the best of them exceeds ``z`` with probability at most
``hypotheses * SHIFTS * Q(z)``. A detection also
needs a decoded word to pass its CRC-16, which a word decoded from noise does with probability 2^-16,
independently of the sync chips (they are disjoint from the payload chips). The detector checks at most
``WORDS_CHECKED`` words per hypothesis (the Viterbi path, then the list decoder's paths), so the factor
for a passed CRC is ``WORDS_CHECKED * 2^-16`` (union bound over every word and hypothesis).
"""

from __future__ import annotations

import math

from .folding import SHIFTS
from .payload import CRC_BITS, LIST_SIZE

WORDS_CHECKED = 1 + LIST_SIZE
LOG10_CRC = math.log10(WORDS_CHECKED) - CRC_BITS * math.log10(2.0)


def log10_gaussian_tail(z: float) -> float:
    """log10 of Q(z) = P(N(0,1) > z), accurate far into the tail."""
    if z < 30.0:
        return math.log10(max(0.5 * math.erfc(z / math.sqrt(2.0)), 1e-300))
    series = 1.0 - 1.0 / z**2 + 3.0 / z**4  # asymptotic expansion of the Mills ratio
    return (-0.5 * z * z - math.log(z * math.sqrt(2.0 * math.pi)) + math.log(series)) / math.log(10.0)


def log10_false_positive(z: float, hypotheses: int, crc_ok: bool, searched: int = 1, checked: int = 1,
                         codes: int = 1) -> float:
    """log10 of the probability that an unmarked image scores at least ``z`` (and passes the CRC if it did).

    ``searched``: sync patterns compared per hypothesis and shift (v2: dihedral transforms x variants, times
    the searches run: v1's, the carrier's). ``checked``: how many of them a passing word's own check tells
    apart (v2: the nonce names one variant, so a random word also has to hit it, with probability
    1 / ``checked``). ``codes``: payload codes each read is decoded with (v2 and v3 read the same chips with a
    64-bit and a 40-bit ID's code: twice the words checked).
    """
    log_p = math.log10(hypotheses * searched * SHIFTS) + log10_gaussian_tail(z)
    if crc_ok:
        log_p += LOG10_CRC + math.log10(codes) - math.log10(checked)
    return min(0.0, log_p)
