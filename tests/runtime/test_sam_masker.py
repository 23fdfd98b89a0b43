"""SamMasker: prompts, automatic product choice, the embedding cache and candidate ranking."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.masking.sam_loader import (
    LoadedSam,
    detect_architecture,
    load_sam,
    state_dict_shapes,
)
from comfyui_backdrop.runtime.masking.sam_masker import SamMasker, rank_candidates
from comfyui_backdrop.runtime.masking.types import Prompt
from comfyui_backdrop.runtime.models import ModelLocator
from tests.fixtures.sam_fixtures import build_tiny_sam, save_sam

H, W = 96, 128


@pytest.fixture(scope="session")
def sam(tmp_path_factory) -> LoadedSam:
    root = tmp_path_factory.mktemp("models")
    save_sam(build_tiny_sam(seed=0), root / "sams" / "tiny.safetensors")
    return load_sam("tiny.safetensors", locator=ModelLocator.from_models_dir(root))


@pytest.fixture(scope="session")
def images():
    rng = np.random.default_rng(2)
    return [rng.random((H, W, 3), dtype=np.float32) for _ in range(4)]


@pytest.fixture(scope="session")
def hint():
    mask = np.zeros((H, W), dtype=bool)
    mask[30:70, 45:95] = True
    return mask


@pytest.fixture()
def encoder_calls(sam):
    calls = []
    handle = sam.model.image_encoder.register_forward_hook(lambda *_: calls.append(1))
    yield calls
    handle.remove()


def _reference(sam, image, **predict_kwargs):
    """SAM's own SamPredictor on the same uint8 image: masks and predicted IoU."""
    predictor = SamPredictor(sam.model)
    predictor.set_image((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
    masks, iou, _ = predictor.predict(**predict_kwargs)
    return masks, iou


def _read_only(array):
    array = array.copy()
    array.setflags(write=False)
    return array


# ----------------------------------------------------------------------------- embedding cache
def test_same_image_runs_the_encoder_once_for_many_prompts(sam, images, hint, encoder_calls):
    masker = SamMasker(sam)
    first = masker.segment(images[0], Prompt(box=(30, 20, 80, 70)))
    masker.segment(images[0], Prompt(points=((60, 45, 1),)))
    masker.segment(images[0].copy(), hint=hint)  # equal content, another array: still cached
    assert len(encoder_calls) == 1
    assert (masker.encoder_runs, masker.cache_hits) == (1, 2)
    masker.segment(images[1], Prompt(box=(30, 20, 80, 70)))
    assert len(encoder_calls) == 2
    again = masker.segment(images[0], Prompt(box=(30, 20, 80, 70)))  # restored from the LRU
    assert len(encoder_calls) == 2 and masker.cache_hits == 3
    assert np.array_equal(first, again)


def test_lru_evicts_the_least_recently_used_image(sam, images, encoder_calls):
    masker = SamMasker(sam, cache_size=2)
    box = Prompt(box=(20, 15, 100, 80))
    fresh = [SamMasker(sam, cache_size=0).segment(im, box) for im in images[:3]]
    a, b, c = images[:3]
    for image in (a, b, c):  # cache: b, c
        masker.segment(image, box)
    assert masker.encoder_runs == 3 and masker.cached_images == 2
    assert np.array_equal(masker.segment(b, box), fresh[1])  # hit; cache: c, b
    assert np.array_equal(masker.segment(c, box), fresh[2])  # hit; cache: b, c
    assert masker.encoder_runs == 3 and masker.cache_hits == 2
    assert np.array_equal(masker.segment(a, box), fresh[0])  # evicted: runs again; cache: c, a
    assert masker.encoder_runs == 4
    masker.segment(c, box)
    assert masker.encoder_runs == 4
    masker.segment(b, box)
    assert masker.encoder_runs == 5
    masker.clear_cache()
    assert masker.cached_images == 0
    masker.segment(b, box)
    assert masker.encoder_runs == 6
    assert len(encoder_calls) == 3 + 6


def test_one_masker_from_two_threads_matches_sequential_results(sam, images):
    jobs = [(images[i % 3], Prompt(box=(10 + 2 * i, 10, 90, 80))) for i in range(24)]
    expected = [SamMasker(sam).segment(image, prompt) for image, prompt in jobs]
    shared = SamMasker(sam, cache_size=1)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    # Slow encoder and prompt encoder: wide windows in which an unlocked masker would mix images up.
    handles = [sam.model.image_encoder.register_forward_hook(lambda *_: time.sleep(0.003)),
               sam.model.prompt_encoder.register_forward_hook(lambda *_: time.sleep(0.002))]

    def work(indices):
        try:
            for i in indices:
                results[i] = shared.segment(*jobs[i])
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=work, args=(range(k, len(jobs), 2),)) for k in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for handle in handles:
            handle.remove()
    assert not errors
    for i, mask in enumerate(expected):
        assert np.array_equal(results[i], mask)


# ------------------------------------------------------------------------------------ prompts
def test_user_box_bounds_the_mask(sam, images):
    box = (30, 20, 80, 70)
    raw, _ = _reference(sam, images[0], box=np.array(box), multimask_output=False)
    margin = math.ceil(0.02 * max(H, W))
    inside = np.zeros((H, W), dtype=bool)
    inside[box[1] - margin:box[3] + margin + 1, box[0] - margin:box[2] + margin + 1] = True
    assert (raw[0] & ~inside).any(), "precondition: SAM alone spills outside the box"
    mask = SamMasker(sam).segment(images[0], Prompt(box=box))
    assert mask.any()
    assert not (mask & ~inside).any()
    assert np.array_equal(mask, raw[0] & inside)


def test_single_point_takes_the_best_of_the_multimask_outputs(sam, images):
    masks, iou = _reference(sam, images[1], point_coords=np.array([[64.0, 40.0]]), point_labels=np.array([1]),
                            multimask_output=True)
    mask = SamMasker(sam).segment(images[1], Prompt(points=((64, 40, 1),)))
    assert np.array_equal(mask, masks[int(np.argmax(iou))])


def test_prompt_overrides_the_hint_and_is_clipped(sam, images, hint):
    masker = SamMasker(sam)
    prompt = Prompt(box=(-50, -10, 70, 60), points=((10, 10, 1), (200, 5, 0)))
    with_hint = masker.segment(images[2], prompt, hint=hint)
    assert np.array_equal(with_hint, masker.segment(images[2], prompt))
    assert np.array_equal(with_hint, masker.segment(images[2], prompt.clipped(W, H)))
    with pytest.raises(InvalidInputError):
        masker.segment(images[2], Prompt(box=(200, 200, 300, 300)))


@pytest.mark.parametrize("prompt", [None, Prompt(box=(20, 20, 90, 70)), Prompt(points=((50, 50, 1),))])
def test_output_is_bool_hw_deterministic_and_inputs_untouched(sam, images, hint, prompt):
    image, hint_in = _read_only(images[3]), _read_only(hint)
    image_before, hint_before = image.copy(), hint_in.copy()
    first = SamMasker(sam).segment(image, prompt, hint=hint_in)
    second = SamMasker(sam).segment(image, prompt, hint=hint_in)
    assert first.dtype == np.bool_ and first.shape == (H, W)
    assert np.array_equal(first, second)
    assert np.array_equal(image, image_before) and np.array_equal(hint_in, hint_before)


def test_bad_inputs_are_clear_errors(sam, images):
    masker = SamMasker(sam)
    with pytest.raises(InvalidInputError, match="RGB"):
        masker.segment(images[0][..., :2])
    with pytest.raises(InvalidInputError, match="hint"):
        masker.segment(images[0], hint=np.zeros((H + 1, W), dtype=bool))


# ---------------------------------------------------------------------------------- automatic
def test_automatic_choice_never_returns_the_whole_frame(sam, images, hint):
    results = [SamMasker(sam).segment(image, hint=h) for image in images for h in (None, hint)]
    assert any(mask.any() for mask in results)
    for mask in results:
        assert mask.mean() <= 0.95
        assert _touched_sides(mask) < 4


def _touched_sides(mask):
    return sum(side.mean() >= 0.05 for side in (mask[0], mask[-1], mask[:, 0], mask[:, -1]))


def test_all_rejected_candidates_give_an_empty_mask(sam, images, hint):
    blank = build_tiny_sam(seed=0)
    with torch.no_grad():  # mask logits become exactly 0 everywhere: every candidate is empty
        for mlp in blank.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.zero_()
            mlp.layers[-1].bias.zero_()
    arch = detect_architecture(state_dict_shapes(blank.state_dict()))
    masker = SamMasker(LoadedSam(model=blank, architecture=arch, name="blank", device="cpu"))
    for h in (None, hint):
        mask = masker.segment(images[0], hint=h)
        assert mask.shape == (H, W) and mask.dtype == np.bool_ and not mask.any()


# ------------------------------------------------------------------------------------ ranking
def _rect(y0, y1, x0, x1, shape=(100, 100)):
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_border_touching_background_loses_to_a_central_object():
    obj = _rect(35, 65, 35, 65)
    background = ~_rect(0, 80, 20, 80)  # left, right and bottom borders: what is around the product
    frame = ~obj  # all four borders
    scores = rank_candidates(np.stack([background, obj, frame]), np.array([1.0, 0.5, 1.0]),
                             np.array([1.0, 0.5, 1.0]))
    assert int(np.argmax(scores)) == 1
    assert scores[0] < scores[1] and scores[2] == -np.inf


def test_hint_agreement_breaks_ties():
    left, right = _rect(40, 60, 10, 40), _rect(40, 60, 60, 90)
    masks, iou, stab = np.stack([left, right]), np.array([0.8, 0.8]), np.array([0.9, 0.9])
    plain = rank_candidates(masks, iou, stab)
    assert plain[0] == pytest.approx(plain[1])
    assert int(np.argmax(rank_candidates(masks, iou, stab, hint=_rect(38, 62, 58, 92)))) == 1
    assert int(np.argmax(rank_candidates(masks, iou, stab, hint=_rect(38, 62, 8, 42)))) == 0
    empty_hint = rank_candidates(masks, iou, stab, hint=np.zeros((100, 100), dtype=bool))
    assert np.allclose(empty_hint, plain)


def test_specks_lose_and_tiny_specks_are_rejected():
    obj = _rect(30, 70, 30, 60)
    speck = _rect(48, 53, 48, 53)  # 0.25% of the frame
    dust = _rect(50, 52, 50, 52)  # 0.04%: rejected
    quality = np.array([1.0, 1.0, 0.6])
    scores = rank_candidates(np.stack([speck, dust, obj]), quality, quality)
    assert int(np.argmax(scores)) == 2
    assert scores[1] == -np.inf and np.isfinite(scores[0])
    order = np.argsort(-scores, kind="stable")
    assert order.tolist() == [2, 0, 1]


def test_centrality_and_area_prior_order_otherwise_equal_candidates():
    centre, corner = _rect(40, 60, 40, 60), _rect(5, 25, 5, 25)
    huge = ~_rect(0, 15, 0, 100)  # 85% of the frame, 3 borders
    scores = rank_candidates(np.stack([corner, centre, huge]), np.ones(3), np.ones(3))
    assert scores[1] > scores[0] > scores[2]


def test_rank_candidates_edge_cases():
    assert rank_candidates(np.zeros((0, 10, 10), dtype=bool), np.zeros(0), np.zeros(0)).shape == (0,)
    empty = rank_candidates(np.zeros((2, 10, 10), dtype=bool), np.ones(2), np.ones(2))
    assert np.all(empty == -np.inf)
    nan_stability = rank_candidates(_rect(3, 7, 3, 7, (10, 10))[None], np.ones(1), np.array([np.nan]))
    assert np.isfinite(nan_stability).all()
    with pytest.raises(InvalidInputError):
        rank_candidates(np.zeros((1, 10, 10), bool), np.ones(1), np.ones(1), hint=np.zeros((5, 5), bool))
