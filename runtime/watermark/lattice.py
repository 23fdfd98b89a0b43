"""Finding the tile lattice (scale, aspect, rotation) from the residual's autocorrelation (Kutter 1998).

The mark repeats every PERIOD px, so the autocorrelation has a peak at every lattice vector
``k1*v1 + k2*v2``; a resize, aspect change or rotation just deforms the lattice, and (v1, v2) is the affine
map back to the embedding grid. A crop only moves the origin (the translation search finds it later).

A lattice is scored by a *comb*: the autocorrelation z-map summed over all its points, / sqrt(count),
far stronger than any single peak and about N(0,1) where there is no mark. Candidates come from three
searches: a dense grid of scale x rotation (plain resizes and turns), 1-D combs along each axis paired up
(any aspect), and each axis vector completed with its best perpendicular partner. The best candidates are
refined to 1/32 px by pattern search; the caller tries the few best (plus the untouched embedding grid)
and keeps the one whose keyed sync pattern correlates best. Periods of 0.25x-0.4x the tile (a 64 px tile in a
third- or quarter-size thumbnail: 16-25.6 px) get a search of their own that adds one lattice: searched
together with the longer periods, the sub-multiples of a long lattice crowd the long lattice out.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from .autocorrelation import MAX_LAG, autocorrelation, central_window, sample
from .pattern import PERIOD

MIN_SCALE = 0.4      # per-axis scale range of the main search (0.5x..2x with +/-20% aspect)
MAX_SCALE = 2.5
MAX_ANGLE = np.deg2rad(10.0)   # rotation (+ shear from anisotropic scaling) searched around each axis
MAX_ASPECT = 1.6     # |v1| / |v2| range
CANDIDATES = 8       # candidates kept per search
REFINED = 5          # best-scoring candidate lattices refined to sub-pixel precision
HYPOTHESES = 4       # refined lattices returned by the main search (besides the embedding grid)
FINE_SCALE = 0.25    # a search of its own covers FINE_SCALE..MIN_SCALE (a 64 px tile's 0.25x-0.4x thumbnails)...
FINE_HYPOTHESES = 1  # ... and adds this many lattices
FINE_LAG_PERIODS = 6  # ... from lags up to this many of its longest periods (short periods have points enough)
SQUARE_HYPOTHESES = 1  # ... and the best unrotated square lattice of that range (a plain thumbnail's)
SQUARE_STEP = 0.04   # px: spacing of that square lattice's scan, then refined to a tenth of it
SQUARE_MIN_SCORE = 1.2  # ... kept only from this comb score up: unmarked 512 px pictures' best squares score
#                         0.6-1.5 (median 1.0), the thumbnails it reads 1.4-17; a fold of a short lattice is costly
# The main range gets its square lattice too (stop 37): a picture downscaled to 0.4-1x and recompressed keeps a
# square lattice that the general search, drawn to the codec's blocks and the picture's own structure, often misses.
MAIN_SQUARE_HYPOTHESES = 1
MAIN_SQUARE_MAX = 2 * PERIOD  # px: its longest period (a 128 px layer unscaled, a 64 px one enlarged 2x)
MAIN_SQUARE_MIN_SCORE = 2.0   # comb score from which it is kept (see SQUARE_MIN_SCORE)
# Both squares are kept whatever their score on a residual of at most this many pixels: the bars above only save the
# fold of an unmarked picture, which costs little this small, and a small picture's comb has few points (a downscale
# of 0.01-0.03 MP: its comb score at the true period was 1.5-1.9).
SQUARE_ALWAYS_AREA = 300 * 300
CODEC_BLOCK = 8.0    # px: JPEG's block (WebP's macroblocks are multiples): periods within AVOID_BLOCK px of a
AVOID_BLOCK = 0.25   # multiple of it are left out of the main square scan (codec artifacts score there)
RETURNED = HYPOTHESES + FINE_HYPOTHESES + SQUARE_HYPOTHESES + MAIN_SQUARE_HYPOTHESES  # at most (and the grid)
GRID_STEP = 0.7      # px: spacing of the similarity search (radius, and arc at the longest radius)
LAG_FRACTION = 0.6   # autocorrelation lags up to this fraction of the window's short side
NEIGHBOUR_STEP = 0.003  # relative stretch of each axis in a lattice's neighbours (the detector's second look)


@dataclass(frozen=True)
class Lattice:
    """Image displacement of one tile step along the tile's x (``v1``) and y (``v2``) axes, in px."""

    v1: tuple[float, float]
    v2: tuple[float, float]
    score: float = 0.0

    def matrix(self) -> np.ndarray:
        """2x2 map from embedding-grid px (u, v) to image px (x, y)."""
        return np.array([[self.v1[0], self.v2[0]], [self.v1[1], self.v2[1]]], dtype=np.float64) / PERIOD

    def scaled(self, factor: float) -> Lattice:
        """The same lattice in an image resized by ``factor``."""
        return self.stretched(factor, factor)

    def stretched(self, f1: float, f2: float) -> Lattice:
        """The lattice with its axes ``v1`` and ``v2`` stretched by ``f1`` and ``f2``."""
        return Lattice((self.v1[0] * f1, self.v1[1] * f1), (self.v2[0] * f2, self.v2[1] * f2), self.score)

    @property
    def period(self) -> float:
        """Mean length of the two basis vectors (px)."""
        return 0.5 * float(np.hypot(*self.v1) + np.hypot(*self.v2))

    def describe(self) -> dict:
        m = self.matrix()
        sx, sy = float(np.hypot(*m[:, 0])), float(np.hypot(*m[:, 1]))
        return {"scale_x": sx, "scale_y": sy, "rotation_deg": float(np.degrees(np.arctan2(m[1, 0], m[0, 0]))),
                "shear_deg": float(np.degrees(np.arctan2(-m[0, 1], m[1, 1]) - np.arctan2(m[1, 0], m[0, 0])))}


IDENTITY = Lattice((float(PERIOD), 0.0), (0.0, float(PERIOD)))


def neighbour_stretches(step: float = NEIGHBOUR_STEP) -> list[tuple[float, float]]:
    """The stretches (f1, f2) of a lattice's axes that give its NEIGHBOURS neighbours: each axis by -``step``, 0 or
    +``step``, not both 0.

    The autocorrelation cannot pin a thumbnail's period down to the fraction of a pixel a fold of all its
    periods needs: resizing to whole pixels alone changes each axis's scale by up to 0.5 px over the new side
    (0.4% on a 120 px thumbnail), which the comb does not resolve; a read one step away often does.
    """
    return [(1.0 + a * step, 1.0 + b * step) for a in (-1, 0, 1) for b in (-1, 0, 1) if a or b]


NEIGHBOURS = len(neighbour_stretches())  # lattices ``neighbours`` returns (8)


def neighbours(lattice: Lattice, step: float = NEIGHBOUR_STEP) -> list[Lattice]:
    """The NEIGHBOURS lattices around ``lattice`` (``neighbour_stretches``)."""
    return [lattice.stretched(f1, f2) for f1, f2 in neighbour_stretches(step)]


@lru_cache(maxsize=64)
def _coefficients(n: int) -> np.ndarray:
    """Integer pairs (k1, k2) with |k| <= n from one half-plane (the autocorrelation is symmetric)."""
    k = np.arange(-n, n + 1)
    k1, k2 = np.meshgrid(k, k, indexing="ij")
    coeff = np.stack([k1.ravel(), k2.ravel()], axis=1).astype(np.float64)
    return coeff[(coeff[:, 0] > 0) | ((coeff[:, 0] == 0) & (coeff[:, 1] > 0))]


def _axis_candidates(acf: np.ndarray, axis: int, lo: float, hi: float) -> list[np.ndarray]:
    """Best basis vectors near the x (axis 0) or y (axis 1) direction, by a 1-D comb over their multiples.

    A single autocorrelation peak is often too weak to see; the sum over ``v, 2v, 3v, ...`` is not.
    Candidates lie on a half-pixel grid of the sector |angle| <= MAX_ANGLE, lo <= length <= hi.
    """
    max_lag = (acf.shape[0] - 1) / 2.0
    along = np.arange(lo, hi + 0.25, 0.5, dtype=np.float32)
    across = np.arange(-hi * np.tan(MAX_ANGLE), hi * np.tan(MAX_ANGLE) + 0.25, 0.5, dtype=np.float32)
    grid_a, grid_c = np.meshgrid(along, across, indexing="ij")
    inside = np.abs(grid_c) <= grid_a * np.tan(MAX_ANGLE)
    if axis == 0:
        vx, vy = grid_a, grid_c
    else:
        vx, vy = grid_c, grid_a
    multiples = np.arange(1, int(max_lag / lo) + 1, dtype=np.float32)
    px = vx[None] * multiples[:, None, None]
    py = vy[None] * multiples[:, None, None]
    valid = (np.abs(px) <= max_lag - 1) & (np.abs(py) <= max_lag - 1)
    sums = (sample(acf, np.stack([px, py], axis=-1)) * valid).sum(axis=0)
    counts = np.count_nonzero(valid, axis=0)
    comb = np.where(inside & (counts > 0), sums / np.sqrt(np.maximum(counts, 1)), -np.inf)
    comb = comb.astype(np.float32)
    finite = np.where(np.isfinite(comb), comb, -1e9).astype(np.float32)
    local_max = (finite >= cv2.dilate(finite, np.ones((5, 5), np.uint8))) & np.isfinite(comb)
    ia, ic = np.nonzero(local_max)
    order = np.argsort(-comb[ia, ic])[:CANDIDATES]
    return [np.array([vx[ia[i], ic[i]], vy[ia[i], ic[i]]], dtype=np.float64) for i in order]


def _refine_all(acf: np.ndarray,
                bases: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Pattern search of the comb score over the four basis coordinates of each basis, steps 0.5 px down to 1/32 px.

    Each round scores the eight +/- step moves at once and takes the best; the comb uses every lattice
    point inside the autocorrelation, so far points (long lever arms) pin the basis down precisely. Bases that
    use the same lattice points run in lockstep, one batch of comb scores per round (each basis's search is
    the same as alone).
    """
    max_lag = (acf.shape[0] - 1) / 2.0
    reaches = [int(max_lag / max(1.0, min(np.hypot(*v1), np.hypot(*v2)) - 2.0)) + 1 for v1, v2 in bases]
    out: list = [None] * len(bases)
    for reach in dict.fromkeys(reaches):
        members = [i for i, r in enumerate(reaches) if r == reach]
        params = np.array([np.concatenate(bases[i]) for i in members], dtype=np.float64)
        refined, scores = _pattern_search(acf, params, reach)
        for row, i in enumerate(members):
            out[i] = (refined[row, :2], refined[row, 2:], float(scores[row]))
    return out


_MOVES = np.concatenate([np.eye(4), -np.eye(4)])
_FIRST_STEP, _LAST_STEP, _ROUNDS = 0.5, 1 / 32, 64  # px; rounds at most per step size


def _pattern_search(acf: np.ndarray, params: np.ndarray, reach: int) -> tuple[np.ndarray, np.ndarray]:
    """``_refine_all``'s search for bases [M, 4] (v1, v2) sharing ``reach``: (refined bases, their scores)."""
    params = params.copy()
    best = _batch_scores(acf, params[:, :2], params[:, 2:], reach)
    step = np.full(len(params), _FIRST_STEP)
    rounds = np.zeros(len(params), dtype=int)
    active = np.arange(len(params))
    while active.size:
        trials = params[active, None, :] + step[active, None, None] * _MOVES[None]  # [A, 8, 4]
        flat = trials.reshape(-1, 4)
        scores = _batch_scores(acf, flat[:, :2], flat[:, 2:], reach).reshape(len(active), len(_MOVES))
        k = np.argmax(scores, axis=1)
        top = scores[np.arange(len(active)), k]
        improved = top > best[active]
        moved = active[improved]
        params[moved], best[moved] = trials[improved, k[improved]], top[improved]
        rounds[active] += 1
        finished = active[~improved | (rounds[active] == _ROUNDS)]  # this step size is done
        step[finished] /= 2
        rounds[finished] = 0
        active = active[step[active] >= _LAST_STEP]
    return params, best


def _batch_scores(acf: np.ndarray, v1: np.ndarray, v2: np.ndarray, reach: int = 2) -> np.ndarray:
    """Comb scores over the lattice points with |k| <= ``reach`` for many bases at once: v1, v2 [N, 2]."""
    limit = (acf.shape[0] - 1) / 2.0 - 1
    points = _coefficients(reach) @ np.stack([v1, v2], axis=1)  # [N, C, 2]: k1 * v1 + k2 * v2
    valid = np.maximum(np.abs(points[..., 0]), np.abs(points[..., 1])) <= limit
    counts = np.count_nonzero(valid, axis=1)
    sums = (sample(acf, points) * valid).sum(axis=1)
    return np.where(counts > 0, sums / np.sqrt(np.maximum(counts, 1)), -np.inf)


def _similarity_candidates(acf: np.ndarray, lo: float, hi: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Best lattices of the form scale x rotation (no aspect change), from a dense polar grid search.

    Plain resizes and rotations (the common case) are found this way even when neither axis alone shows.
    """
    radii = np.arange(lo, hi + 0.25, GRID_STEP)
    angles = np.arange(-MAX_ANGLE, MAX_ANGLE + 1e-9, GRID_STEP / hi)
    rr, aa = np.meshgrid(radii, angles, indexing="ij")
    v1 = np.stack([rr * np.cos(aa), rr * np.sin(aa)], axis=-1).reshape(-1, 2)
    v2 = np.stack([-v1[:, 1], v1[:, 0]], axis=1)
    scores = _batch_scores(acf, v1, v2).reshape(rr.shape).astype(np.float32)
    finite = np.where(np.isfinite(scores), scores, -1e9).astype(np.float32)
    peaks = (finite >= cv2.dilate(finite, np.ones((5, 5), np.uint8))) & np.isfinite(scores)
    ir, ia = np.nonzero(peaks)
    order = np.argsort(-scores[ir, ia])[:CANDIDATES]
    return [(v1[ir[i] * rr.shape[1] + ia[i]], v2[ir[i] * rr.shape[1] + ia[i]]) for i in order]


def _completions(acf: np.ndarray, axis_vectors: list[np.ndarray], axis: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """For basis vectors found on one axis, the best partner on the other axis (perpendicular, any aspect)."""
    if not axis_vectors:
        return []
    ratios = np.exp(np.linspace(-np.log(MAX_ASPECT), np.log(MAX_ASPECT), 161))
    base = np.repeat(np.array(axis_vectors, dtype=np.float64), len(ratios), axis=0)  # [V * ratios, 2]
    turned = np.stack([-base[:, 1], base[:, 0]], axis=1) if axis == 0 else np.stack([base[:, 1], -base[:, 0]], axis=1)
    partners = turned * np.tile(ratios, len(axis_vectors))[:, None]
    v1, v2 = (base, partners) if axis == 0 else (partners, base)
    best = np.argmax(_batch_scores(acf, v1, v2).reshape(len(axis_vectors), len(ratios)), axis=1)
    rows = np.arange(len(axis_vectors)) * len(ratios) + best
    return [(v1[i], v2[i]) for i in rows]


def comb_scores(acf: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The comb of each lattice (v1, v2): the autocorrelation z-map summed over all its points inside the map,
    / sqrt(count), ~N(0,1) without a mark (batched by the lattice points each uses)."""
    v1 = np.array([p[0] for p in pairs], dtype=np.float64).reshape(-1, 2)
    v2 = np.array([p[1] for p in pairs], dtype=np.float64).reshape(-1, 2)
    return basis_comb_scores(acf, v1, v2)


def basis_comb_scores(acf: np.ndarray, v1: np.ndarray, v2: np.ndarray) -> np.ndarray:
    """``comb_scores`` for bases given as arrays: v1, v2 [N, 2]."""
    max_lag = (acf.shape[0] - 1) / 2.0
    reach = (max_lag / np.maximum(1.0, np.minimum(np.hypot(*v1.T), np.hypot(*v2.T)))).astype(int) + 1
    scores = np.empty(len(v1))
    for r in np.unique(reach):
        rows = np.nonzero(reach == r)[0]
        scores[rows] = _batch_scores(acf, v1[rows], v2[rows], int(r))
    return scores


def estimate_lattices(r: np.ndarray, lo: float = MIN_SCALE * PERIOD, hi: float = MAX_SCALE * PERIOD,
                      count: int = HYPOTHESES, identity: bool = True, fine: int = FINE_HYPOTHESES,
                      main_square: bool = True) -> list[Lattice]:
    """The most likely tile lattices in residual ``r`` (best first), ending with the embedding grid.

    Candidate bases come from three searches (similarity transforms on a dense grid, 1-D combs along
    each axis paired up, and each axis vector completed with its best perpendicular partner); all are
    scored with the full comb, and the best are refined to sub-pixel precision. ``lo``..``hi``: the period
    range searched (px); at most ``count`` lattices are returned, then IDENTITY unless ``identity`` is False.
    ``fine``: lattices added from a search of its own over the short periods FINE_SCALE * PERIOD .. ``lo``
    (thumbnails of a 64 px tile; 0 for none). A search of its own, because in one search over both ranges the
    sub-multiples of a long lattice crowd out the long lattice itself. With it comes the best unrotated square
    lattice of that range (``square_lattice``): a thumbnail is a plain downscale, and on a picture of near-periodic
    texture (cells, weave) the texture's own lattice can outscore the mark's in the general search. It is kept
    when its comb score reaches SQUARE_MIN_SCORE (most unmarked pictures' do not, and their detection skips its fold).
    ``main_square``: add the best unrotated square lattice of ``lo``..``hi`` too (up to MAIN_SQUARE_MAX px, not at
    the codec's block multiples, kept from MAIN_SQUARE_MIN_SCORE): a downscaled, recompressed picture's. At most
    ``count`` + ``fine`` + 1 (with ``fine``) + 1 (with ``main_square``) lattices are returned before IDENTITY.
    """
    window = central_window(r)
    side = min(window.shape)
    max_lag = int(min(LAG_FRACTION * side, MAX_LAG))
    acf_smooth = None
    hypotheses: list[Lattice] = []
    for low, high, kept in ((lo, hi, count), (FINE_SCALE * PERIOD, lo, fine)):
        high = min(high, 0.5 * side)
        if kept <= 0 or high <= low:
            continue
        if acf_smooth is None:
            acf_smooth = cv2.GaussianBlur(autocorrelation(window, max_lag), (0, 0), 0.7)
        acf = _central_lags(acf_smooth, FINE_LAG_PERIODS * high) if low < lo else acf_smooth
        found = _search(acf, low, high, kept)
        square, least = None, SQUARE_MIN_SCORE
        if low < lo:
            square = square_lattice(acf, low, high)
        elif main_square and min(high, MAIN_SQUARE_MAX) > low:
            square = square_lattice(acf, low, min(high, MAIN_SQUARE_MAX), avoid=CODEC_BLOCK)
            least = MAIN_SQUARE_MIN_SCORE
        worth_a_fold = square is not None and (square.score >= least or r.size <= SQUARE_ALWAYS_AREA)
        if worth_a_fold and _distinct((square.v1, square.v2), found):
            found.append(square)
        hypotheses += found
    return [*hypotheses, IDENTITY] if identity else hypotheses


def square_lattice(acf: np.ndarray, lo: float, hi: float, step: float = SQUARE_STEP,
                   avoid: float | None = None) -> Lattice:
    """The unrotated square lattice ``(s, 0), (0, s)`` with the best comb score for ``lo <= s <= hi``: scanned
    every ``step`` px, then every ``step / 10`` around the best. ``avoid``: leave out periods within AVOID_BLOCK
    px of its multiples (a codec's block grid)."""
    def best(sides: np.ndarray) -> tuple[float, float]:
        if avoid is not None:
            sides = sides[np.abs(sides - avoid * np.round(sides / avoid)) > AVOID_BLOCK]
        zero = np.zeros_like(sides)
        scores = basis_comb_scores(acf, np.stack([sides, zero], axis=1), np.stack([zero, sides], axis=1))
        i = int(np.argmax(scores))
        return float(sides[i]), float(scores[i])

    side, _ = best(np.arange(lo, hi + step / 2, step))
    side, score = best(np.linspace(side - step, side + step, 21))
    return Lattice((side, 0.0), (0.0, side), score)


def _distinct(basis: tuple, lattices: list[Lattice]) -> bool:
    """Whether ``basis`` (v1, v2) differs from each of ``lattices`` by more than 1 px in v1 or in v2."""
    v1, v2 = basis
    return all(np.hypot(*np.subtract(v1, h.v1)) > 1 or np.hypot(*np.subtract(v2, h.v2)) > 1 for h in lattices)


def _central_lags(acf: np.ndarray, max_lag: float) -> np.ndarray:
    """The part of an autocorrelation map with lags up to ``max_lag`` px (all of it when it is smaller)."""
    centre, keep = (acf.shape[0] - 1) // 2, int(min(max_lag, (acf.shape[0] - 1) // 2))
    return acf[centre - keep:centre + keep + 1, centre - keep:centre + keep + 1]


def _search(acf_smooth: np.ndarray, lo: float, hi: float, count: int) -> list[Lattice]:
    """``estimate_lattices``'s search over periods ``lo``..``hi`` px: the ``count`` best lattices, best first."""
    axis1 = _axis_candidates(acf_smooth, 0, lo, hi)
    axis2 = _axis_candidates(acf_smooth, 1, lo, hi)
    pairs = [(v1, v2) for v1 in axis1 for v2 in axis2
             if 1 / MAX_ASPECT <= np.hypot(*v1) / np.hypot(*v2) <= MAX_ASPECT]
    pairs += _similarity_candidates(acf_smooth, lo, hi)
    pairs += _completions(acf_smooth, axis1[:4], 0) + _completions(acf_smooth, axis2[:4], 1)
    if not pairs:
        return []
    order = np.argsort(-comb_scores(acf_smooth, pairs), kind="stable")[:REFINED]
    hypotheses: list[Lattice] = []
    for r1, r2, score in _refine_all(acf_smooth, [pairs[i] for i in order]):
        if _distinct((r1, r2), hypotheses):
            hypotheses.append(Lattice(tuple(r1), tuple(r2), score))
    hypotheses.sort(key=lambda h: -h.score)
    return hypotheses[:count]
