"""Ranking generated candidates by measurable defects: seam, colour leakage, colour cast, clutter.

An optional learned aesthetic score (``aesthetic``: the LAION predictor on CLIP embeddings, weights from
models/aesthetic and models/clip_vision) joins the ranking when its weights are there.
"""

from .defects import background_chroma, cast_distance, palette_chroma
from .rank import AESTHETIC_SCALE, DEFECTS, SCALES, WEIGHTS, RankedCandidate, measure_defects, rank_candidates

__all__ = ["AESTHETIC_SCALE", "DEFECTS", "SCALES", "WEIGHTS", "RankedCandidate", "background_chroma", "cast_distance",
           "measure_defects", "palette_chroma", "rank_candidates"]
