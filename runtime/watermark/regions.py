"""Where a marked region of a composite can be: the windows ``detect(..., localise=True)`` reads one by one.

A whole-image read folds every period of the picture onto one tile, so a marked region pasted into unmarked
material is diluted by everything around it: measured on twelve 1024 px photos, a pasted marked region of a
tenth of the picture read in 4 of 12 composites, a twentieth in none. When the whole-image read finds nothing
and a map was asked for, the detector reads square windows instead, each folded on its own, on the unscaled grids
only (a region pasted without resizing keeps the embedding grid; a resized paste is not looked for).

Window sides are a multiple of the tile period, about REGION_FRACTION of the picture's short side (at least
MIN_WINDOW, at most MAX_WINDOW px); their corners step by a whole number of periods, so a cyclic shift read in
a window is the shift in the whole picture and the presence map can be drawn from it. A region whose side is at
least a window plus a step always holds one whole window: from about 14% of the area at 512 px, 10% at 1024 px
and 8% at 2048 px. The number of windows depends on the picture's size only and enters the false-positive bound
(codec.analyse_regions).
"""

from __future__ import annotations

from .pattern import PERIOD

REGION_FRACTION = 0.22      # window side / the picture's short side (rounded to whole periods)
MIN_WINDOW = 2 * PERIOD     # px: the smallest window that folds two periods per side
MAX_WINDOW = 8 * PERIOD     # px: larger windows add little to a region that large (the whole read finds it)
MAX_WINDOWS = 200           # per picture: the step grows in whole periods until the grid has at most this many


def window_side(height: int, width: int) -> int:
    """Side (px) of the square windows read in a ``height`` x ``width`` picture (0: too small for any)."""
    short = min(height, width)
    side = PERIOD * round(REGION_FRACTION * short / PERIOD)
    side = min(MAX_WINDOW, max(MIN_WINDOW, side))
    return side if side < short else 0


def windows(height: int, width: int) -> list[tuple[int, int, int]]:
    """(top, left, side) of every window, row by row: corners on multiples of the step (a whole number of
    periods, about a quarter of the side), the last row and column flush with the picture's edge rounded down
    to the step. Empty when the picture is too small to hold a window beside the whole."""
    side = window_side(height, width)
    if not side:
        return []
    step = PERIOD * max(1, round(side / (4 * PERIOD)))
    while ((height - side) // step + 1) * ((width - side) // step + 1) > MAX_WINDOWS:
        step += PERIOD
    return [(top, left, side) for top in range(0, height - side + 1, step) for left in range(0, width - side + 1, step)]
