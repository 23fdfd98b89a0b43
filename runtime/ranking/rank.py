"""Rank generated candidates by the defects we can measure; the best first.

Each raw defect (see ``defects``) is divided by its SCALE, the value at which that defect is plainly visible, so a
normalised 1.0 means "clearly there" and the four are comparable; the combined score is their WEIGHTS-weighted
sum (lower is better). The weights are all 1: no defect is assumed worse than another, and the planted-defect
benchmark (benchmarks/bench_ranking.py) is what the scales were set against.

With a learned aesthetic score per candidate (``aesthetic``: see ``aesthetic.py``), a fifth term joins the sum: the
candidate's shortfall from the best-rated one, in AESTHETIC_SCALE rating points.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidInputError
from .defects import (
    background_chroma,
    cast_distance,
    clutter,
    colour_leakage,
    lab_gradients,
    palette_chroma,
    seam_visibility,
)
from .regions import analysis_size, product_regions, to_analysis, to_lab

DEFECTS = ("seam", "leakage", "cast", "clutter")
SCALES = {"seam": 1.5, "leakage": 0.08, "cast": 4.0, "clutter": 0.02}  # raw value at which each is plainly visible
WEIGHTS = {"seam": 1.0, "leakage": 1.0, "cast": 1.0, "clutter": 1.0, "aesthetic": 1.0}
AESTHETIC_SCALE = 1.0  # a rating point on the LAION 1..10 scale: a difference people plainly see

Palette = Mapping[str, Sequence[float]] | Sequence[Sequence[float]]


@dataclass(frozen=True)
class RankedCandidate:
    """One candidate's place: ``index`` into the candidates given, ``rank`` (0 = best) and its scores."""

    index: int
    rank: int
    score: float  # weighted sum of ``defects``; lower is better
    defects: dict[str, float]  # normalised: raw / SCALES (1.0 = plainly visible)
    raw: dict[str, float] = field(default_factory=dict)  # seam ΔE/px, leakage share, cast ΔE, clutter density

    def as_dict(self) -> dict:
        """JSON-ready: rank, index, score and both sets of defect values (rounded)."""
        return {"rank": self.rank, "index": self.index, "score": round(self.score, 4),
                "defects": {k: round(v, 4) for k, v in self.defects.items()},
                "raw": {k: round(v, 5) for k, v in self.raw.items()}}


def measure_defects(image: np.ndarray, product_alpha: np.ndarray, palette: Palette | None = None,
                    chroma_reference: np.ndarray | None = None) -> tuple[dict[str, float], np.ndarray]:
    """Raw defect values of one picture (float [H,W,C] in 0..1; alpha 1 = product) and its background chroma.

    The cast is measured against ``palette`` (a style's {name: RGB} or a list of RGB colours, 0..1), else against
    ``chroma_reference`` (a*, b* points), else not at all (0).
    """
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InvalidInputError(f"expected an [H,W,3] or [H,W,4] candidate, got {image.shape}")
    if product_alpha.shape != image.shape[:2]:
        raise InvalidInputError(f"the product alpha is {product_alpha.shape[1]}x{product_alpha.shape[0]}, the "
                                f"candidate {image.shape[1]}x{image.shape[0]}")
    size = analysis_size(*image.shape[:2])
    lab = to_lab(to_analysis(image, size))
    regions = product_regions(product_alpha, size)
    gradients = lab_gradients(lab)
    chroma = background_chroma(lab, regions)
    reference = palette_chroma(palette) if palette is not None else chroma_reference
    raw = {"seam": seam_visibility(gradients, regions), "leakage": colour_leakage(lab, regions),
           "cast": 0.0 if reference is None else cast_distance(chroma, reference),
           "clutter": clutter(gradients, regions)}
    return raw, chroma


def rank_candidates(candidates: Sequence[np.ndarray], product_alpha: np.ndarray | Sequence[np.ndarray],
                    palette: Palette | None = None, weights: Mapping[str, float] | None = None,
                    aesthetic: Sequence[float] | None = None) -> list[RankedCandidate]:
    """The candidates ordered best first (ties keep the given order), each with its defect scores.

    ``product_alpha`` is one mask for every candidate or one per candidate (1 = product). Without a ``palette``
    the colour cast is measured against the candidates' median background chroma (the odd one out is cast).
    ``aesthetic`` (one learned rating per candidate, higher is better) adds the shortfall from the best rating.
    """
    if not len(candidates):
        return []
    alphas = list(product_alpha) if isinstance(product_alpha, Sequence) else [product_alpha] * len(candidates)
    if len(alphas) != len(candidates):
        raise InvalidInputError(f"{len(candidates)} candidates but {len(alphas)} product masks")
    chosen = {**WEIGHTS, **(weights or {})}
    unknown = set(chosen) - {*DEFECTS, "aesthetic"}
    if unknown:
        raise InvalidInputError(f"unknown defect weight(s) {sorted(unknown)}; known: {', '.join(DEFECTS)}")
    if aesthetic is not None and len(aesthetic) != len(candidates):
        raise InvalidInputError(f"{len(candidates)} candidates but {len(aesthetic)} aesthetic scores")
    measured = [measure_defects(image, alpha, palette) for image, alpha in zip(candidates, alphas, strict=True)]
    if palette is None and len(candidates) > 1:
        median = np.median(np.stack([chroma for _, chroma in measured]), axis=0)
        for raw, chroma in measured:
            raw["cast"] = cast_distance(chroma, median[None])
    scored = []
    for index, (raw, _) in enumerate(measured):
        defects = {name: raw[name] / SCALES[name] for name in DEFECTS}
        if aesthetic is not None:
            raw["aesthetic"] = float(aesthetic[index])
            defects["aesthetic"] = (max(aesthetic) - raw["aesthetic"]) / AESTHETIC_SCALE
        scored.append((sum(chosen[name] * value for name, value in defects.items()), index, defects, raw))
    scored.sort(key=lambda item: (item[0], item[1]))
    return [RankedCandidate(index=index, rank=rank, score=float(score), defects=defects, raw=raw)
            for rank, (score, index, defects, raw) in enumerate(scored)]
