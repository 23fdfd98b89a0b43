"""Ranking candidates by measured defects, on candidates with planted defects (tests/fixtures/ranking_set.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.ranking import DEFECTS, measure_defects, rank_candidates
from tests.fixtures.ranking_set import DEFECT_KINDS, planted_case

SMALL_SIZES = ((256, 320), (389, 517), (480, 360))


@pytest.fixture(scope="module")
def small_set():
    """15 cases at small sizes (seeds apart from the benchmark's 0..119), every texture and style turn."""
    return [planted_case(seed, size=SMALL_SIZES[seed % 3]) for seed in range(500, 515)]


def test_the_clean_candidate_ranks_first_in_at_least_90_percent(small_set):
    firsts = []
    for case in small_set:
        names = list(case.candidates)
        ranked = rank_candidates([case.candidates[n] for n in names], case.alpha, case.palette)
        assert sorted(r.index for r in ranked) == list(range(len(names)))
        assert [r.rank for r in ranked] == list(range(len(names)))
        assert all(a.score <= b.score for a, b in itertools.pairwise(ranked))
        firsts.append(names[ranked[0].index] == "clean")
    assert np.mean(firsts) >= 0.9, f"clean first in {sum(firsts)}/{len(firsts)}"


def test_each_planted_defect_raises_its_own_score(small_set):
    """Over the set, each defect's own measure is higher on its candidate than on the clean one (most cases)."""
    for kind in DEFECT_KINDS:
        higher = []
        for case in small_set[:9]:
            clean, _ = measure_defects(case.candidates["clean"], case.alpha, case.palette)
            bad, _ = measure_defects(case.candidates[kind], case.alpha, case.palette)
            higher.append(bad[kind] > clean[kind])
        assert np.mean(higher) >= 0.8, f"{kind}: higher in {sum(higher)}/{len(higher)}"


def test_without_a_palette_the_odd_cast_is_measured_against_the_others(small_set):
    case = small_set[0]
    names = ["clean", "seam", "clutter", "cast"]
    ranked = rank_candidates([case.candidates[n] for n in names], case.alpha)
    cast = next(r for r in ranked if names[r.index] == "cast")
    assert cast.raw["cast"] == max(r.raw["cast"] for r in ranked) and cast.raw["cast"] > 3.0


def test_scores_are_deterministic_and_json_ready(small_set):
    case = small_set[1]
    images = list(case.candidates.values())
    first = [r.as_dict() for r in rank_candidates(images, case.alpha, case.palette)]
    again = [r.as_dict() for r in rank_candidates(images, [case.alpha] * len(images), case.palette)]
    assert first == again
    assert set(first[0]["defects"]) == set(DEFECTS) and set(first[0]["raw"]) == set(DEFECTS)


def test_no_product_or_all_product_is_a_defined_result():
    image = np.full((64, 80, 3), 0.5, np.float32)
    for alpha in (np.zeros((64, 80), np.float32), np.ones((64, 80), np.float32)):
        raw, _ = measure_defects(image, alpha, [(0.5, 0.5, 0.5)])
        assert raw["seam"] == raw["leakage"] == raw["clutter"] == 0.0 and raw["cast"] < 1e-3
    assert rank_candidates([], np.zeros((4, 4))) == []


def test_bad_inputs_are_clear_errors():
    image = np.zeros((32, 32, 3), np.float32)
    with pytest.raises(InvalidInputError, match="product alpha"):
        measure_defects(image, np.zeros((16, 16), np.float32))
    with pytest.raises(InvalidInputError, match="2 product masks"):
        rank_candidates([image], [np.zeros((32, 32))] * 2)
    with pytest.raises(InvalidInputError, match="unknown defect"):
        rank_candidates([image], np.zeros((32, 32)), weights={"beauty": 1.0})
