"""The optional learned aesthetic rating: the LAION predictor on a CLIP vision encoder from the model folders, and
its place in the candidate ranking (tiny encoder + predictor fitted in code: tests/fixtures/aesthetic_fixtures.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_backdrop.runtime.errors import InvalidInputError, InvalidModelError, MissingModelError
from comfyui_backdrop.runtime.models import ModelLocator
from comfyui_backdrop.runtime.ranking import rank_candidates
from comfyui_backdrop.runtime.ranking.aesthetic import load_aesthetic_scorer, matching_encoder
from tests.fixtures.aesthetic_fixtures import (
    COOL,
    WARM,
    cool_colour,
    embed,
    laion_mlp,
    studio_shot,
    tiny_clip_vision,
    warm_colour,
    write_aesthetic_models,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("aesthetic-models")
    write_aesthetic_models(root)
    return root


@pytest.fixture(scope="module")
def locator(models):
    return ModelLocator.from_models_dir(models)


def _unseen(seed: int, count: int = 6) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Warm and cool shots with colours and textures the predictor was not fitted on, at another size."""
    rng = np.random.default_rng(seed)
    warm = [studio_shot(warm_colour(rng), size=(141, 97), seed=1000 + i) for i in range(count)]
    cool = [studio_shot(cool_colour(rng), size=(141, 97), seed=2000 + i) for i in range(count)]
    return warm, cool


def test_scores_equal_the_reference_clip_plus_laion_mlp(models, locator):
    """The encoder's config is read from the file's shapes correctly: the same numbers as the model built from its
    own config, then the LAION layer stack."""
    from safetensors.torch import load_file

    scorer = load_aesthetic_scorer("tiny-aesthetic.safetensors", device="cpu", locator=locator)
    mlp = laion_mlp()
    mlp.load_state_dict({k.removeprefix("layers."): v for k, v in
                         load_file(str(models / "aesthetic" / "tiny-aesthetic.safetensors")).items()})
    warm, cool = _unseen(1, 2)
    expected = mlp.eval()(embed(tiny_clip_vision(), warm + cool))[:, 0].tolist()
    assert scorer.score(warm + cool) == pytest.approx(expected, abs=1e-5)
    assert scorer.score([]) == []


def test_the_learned_preference_holds_on_unseen_pictures(locator):
    scorer = load_aesthetic_scorer("tiny-aesthetic.safetensors", device="cpu", locator=locator)
    warm, cool = _unseen(7)
    warm_scores, cool_scores = scorer.score(warm), scorer.score(cool)
    assert min(warm_scores) > max(cool_scores)
    assert np.mean(warm_scores) == pytest.approx(WARM, abs=1.5) and np.mean(cool_scores) == pytest.approx(COOL, abs=1.5)
    rgba = np.concatenate([warm[0], np.ones_like(warm[0][..., :1])], axis=-1)
    assert scorer.score([rgba]) == pytest.approx(scorer.score([warm[0]]), abs=1e-6)  # alpha is ignored


def test_the_rating_joins_the_defect_score_and_picks_the_preferred_backdrop(locator):
    """Two clean candidates (same product, plain backdrops, near-equal defects): the rating puts the warm one first
    in either order; each score is its defect sum plus its shortfall from the best rating, in rating points."""
    scorer = load_aesthetic_scorer("tiny-aesthetic.safetensors", device="cpu", locator=locator)
    rng = np.random.default_rng(3)
    cool, warm = studio_shot(cool_colour(rng), seed=5), studio_shot(warm_colour(rng), seed=6)
    alpha = np.zeros(cool.shape[:2], np.float32)
    alpha[24:72, 43:85] = 1.0
    for order in ([cool, warm], [warm, cool]):
        plain = {r.index: r for r in rank_candidates(order, alpha)}
        assert "aesthetic" not in plain[0].defects
        ratings = scorer.score(order)
        ranked = rank_candidates(order, alpha, aesthetic=ratings)
        assert order[ranked[0].index] is warm
        for r in ranked:
            shortfall = max(ratings) - ratings[r.index]
            assert r.defects["aesthetic"] == pytest.approx(shortfall, abs=1e-6)
            assert r.raw["aesthetic"] == pytest.approx(ratings[r.index])
            assert r.score == pytest.approx(plain[r.index].score + shortfall, abs=1e-6)
        unweighted = rank_candidates(order, alpha, aesthetic=ratings, weights={"aesthetic": 0})
        assert [r.index for r in unweighted] == sorted(plain, key=lambda i: (plain[i].score, i))
    with pytest.raises(InvalidInputError, match="2 candidates but 1 aesthetic scores"):
        rank_candidates([cool, warm], alpha, aesthetic=[5.0])


def test_a_pth_predictor_loads_like_the_safetensors_one(models, tmp_path):
    from safetensors.torch import load_file

    root = tmp_path / "models"
    (root / "aesthetic").mkdir(parents=True)
    (root / "clip_vision").mkdir()
    (root / "clip_vision" / "enc.safetensors").symlink_to(models / "clip_vision" / "tiny-clip-vision.safetensors")
    torch.save(load_file(str(models / "aesthetic" / "tiny-aesthetic.safetensors")), root / "aesthetic" / "p.pth")
    local = ModelLocator.from_models_dir(root)
    shots = _unseen(2, 1)[0]
    a = load_aesthetic_scorer("p.pth", device="cpu", locator=local).score(shots)
    b = load_aesthetic_scorer("tiny-aesthetic.safetensors", device="cpu",
                              locator=ModelLocator.from_models_dir(models)).score(shots)
    assert a == pytest.approx(b, abs=1e-6)


def test_the_encoder_is_the_one_whose_embeddings_fit(models, tmp_path):
    from safetensors.torch import save_file

    root = tmp_path / "models"
    (root / "clip_vision").mkdir(parents=True)
    (root / "aesthetic").symlink_to(models / "aesthetic", target_is_directory=True)
    wide = tiny_clip_vision(seed=1, projection=24)
    save_file({k: v.contiguous() for k, v in wide.state_dict().items()}, str(root / "clip_vision" / "wide.safetensors"))
    local = ModelLocator.from_models_dir(root)
    with pytest.raises(InvalidModelError, match=r"16-dim embeddings .*models/clip_vision.*found wide.safetensors"):
        load_aesthetic_scorer("tiny-aesthetic.safetensors", device="cpu", locator=local)
    (root / "clip_vision" / "a.safetensors").symlink_to(models / "clip_vision" / "tiny-clip-vision.safetensors")
    assert matching_encoder(16, local) == "a.safetensors"
    (root / "clip_vision" / "b.safetensors").symlink_to(models / "clip_vision" / "tiny-clip-vision.safetensors")
    with pytest.raises(InvalidInputError, match=r"several CLIP vision encoders .*a.safetensors, b.safetensors"):
        matching_encoder(16, local)
    with pytest.raises(InvalidModelError, match="wide.safetensors gives 24-dim embeddings"):
        load_aesthetic_scorer("tiny-aesthetic.safetensors", "wide.safetensors", device="cpu", locator=local)


def test_missing_and_wrong_files_are_clear_errors(models, tmp_path, locator):
    from safetensors.torch import save_file

    with pytest.raises(MissingModelError, match="aesthetic"):
        load_aesthetic_scorer("nope.safetensors", device="cpu", locator=locator)
    root = tmp_path / "models"
    (root / "aesthetic").mkdir(parents=True)
    (root / "clip_vision").symlink_to(models / "clip_vision", target_is_directory=True)
    save_file({"net.0.weight": torch.zeros(4, 16)}, str(root / "aesthetic" / "other.safetensors"))
    save_file({"layers.0.weight": torch.zeros(4, 16), "layers.1.weight": torch.zeros(3, 4)},
              str(root / "aesthetic" / "unchained.safetensors"))
    local = ModelLocator.from_models_dir(root)
    with pytest.raises(InvalidModelError, match="not an aesthetic predictor.*layers.N.weight"):
        load_aesthetic_scorer("other.safetensors", device="cpu", locator=local)
    with pytest.raises(InvalidModelError, match="do not chain into one rating"):
        load_aesthetic_scorer("unchained.safetensors", device="cpu", locator=local)
