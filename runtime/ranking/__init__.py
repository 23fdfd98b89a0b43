"""Ranking generated candidates by measurable defects: seam, colour leakage, colour cast, clutter.

No learned aesthetic scorer is included: none can be built or checked offline here (see docs/upscale-and-ranking.md).
"""

from .defects import background_chroma, cast_distance, palette_chroma
from .rank import DEFECTS, SCALES, WEIGHTS, RankedCandidate, measure_defects, rank_candidates

__all__ = ["DEFECTS", "SCALES", "WEIGHTS", "RankedCandidate", "background_chroma", "cast_distance",
           "measure_defects", "palette_chroma", "rank_candidates"]
