"""BackdropRankCandidates and BackdropUpscale: the best candidate first, and the product exact after upscaling."""

from __future__ import annotations

import json

import numpy as np
import torch

from comfyui_backdrop.nodes.finishing import BackdropRankCandidates, BackdropUpscale, upscale_choices
from tests.fixtures.images import studio_product_photo, to_float
from tests.fixtures.ranking_set import planted_case


def test_rank_node_puts_the_clean_candidate_first_and_reports_every_score():
    case = planted_case(7, size=(256, 320), style="Minimal Studio")
    names = ["seam", "clean", "cast", "clutter", "leakage"]
    batch = torch.from_numpy(np.stack([case.candidates[n] for n in names]))
    mask = torch.from_numpy(case.alpha[None])
    best, masks, scores = BackdropRankCandidates().rank(batch, mask, "Minimal Studio", 2)
    ranking = json.loads(scores)
    assert [r["rank"] for r in ranking] == list(range(5))
    assert names[ranking[0]["index"]] == "clean"
    assert best.shape == (2, 256, 320, 3) and masks.shape == (2, 256, 320)
    assert torch.equal(best[0], batch[1])


def test_upscale_node_delivers_the_originals_size_with_the_product_exact(models_dir):
    from safetensors.torch import save_file

    from tests.runtime.test_upscaling import tiny_compact_state

    save_file(tiny_compact_state(2), str(models_dir / "upscale_models" / "tiny_x2.safetensors"))
    assert upscale_choices() == ["lanczos", "tiny_x2.safetensors"]
    photos = [studio_product_photo(201, 263, seed=s) for s in (1, 2)]
    originals = torch.from_numpy(np.stack([to_float(p) for p, _ in photos]))
    masks = torch.from_numpy(np.stack([m for _, m in photos]).astype(np.float32))
    # two variations per original, generated at about half size (image-major), with a new background
    small = torch.nn.functional.interpolate(originals.permute(0, 3, 1, 2), size=(100, 131), mode="area")
    generated = (small.permute(0, 2, 3, 1).repeat_interleave(2, dim=0) * 0.6 + 0.3).contiguous()
    for method in upscale_choices():
        (out,) = BackdropUpscale().upscale(generated, originals, masks, method, 6)
        assert out.shape == (4, 201, 263, 3)
        for k in range(4):
            product = masks[k // 2] >= 0.5
            assert torch.equal(out[k][product], originals[k // 2][product])
            assert not torch.allclose(out[k][~product], originals[k // 2][~product], atol=0.05)


def test_rank_node_with_an_aesthetic_predictor_puts_the_preferred_backdrop_first(models_dir):
    from comfyui_backdrop.nodes.finishing import aesthetic_choices
    from tests.fixtures.aesthetic_fixtures import cool_colour, studio_shot, warm_colour, write_aesthetic_models

    write_aesthetic_models(models_dir)
    assert aesthetic_choices() == ["none", "tiny-aesthetic.safetensors"]
    encoders = BackdropRankCandidates.INPUT_TYPES()["required"]["clip_vision"][0]
    assert encoders == ["auto", "tiny-clip-vision.safetensors"]
    rng = np.random.default_rng(11)
    shots = [studio_shot(cool_colour(rng), seed=1), studio_shot(warm_colour(rng), seed=2)]
    batch = torch.from_numpy(np.stack(shots))
    mask = torch.zeros(1, *shots[0].shape[:2])
    mask[:, 24:72, 43:85] = 1.0
    best, _, scores = BackdropRankCandidates().rank(batch, mask, "Minimal Studio", 1, "tiny-aesthetic.safetensors",
                                                    "auto")
    ranking = json.loads(scores)
    assert ranking[0]["index"] == 1 and ranking[0]["raw"]["aesthetic"] > ranking[1]["raw"]["aesthetic"]
    assert torch.equal(best[0], batch[1])
