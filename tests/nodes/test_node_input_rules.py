"""Issue 14: one rule for masks and NaN, the same in every node that takes an IMAGE or a MASK.

Before: BackdropStudioBackdrop and BackdropWatermark stretched a mask of another aspect ratio (protecting the
wrong pixels) while BackdropComposite refused it; NaN passed through Composite, turned black in StudioBackdrop,
gave an empty mask in ProductMask, and only Watermark refused it. Now every node refuses both, naming itself, the
input and the image, resizes a mask of another size only at the same aspect ratio, and says so in its DESCRIPTION
(and so in docs/nodes.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_backdrop.nodes.backdrop import BackdropStudioBackdrop
from comfyui_backdrop.nodes.captioning import BackdropCaption
from comfyui_backdrop.nodes.finishing import BackdropRankCandidates, BackdropUpscale
from comfyui_backdrop.nodes.inpainting import BackdropComposite, BackdropInpaint
from comfyui_backdrop.nodes.masking import BackdropProductMask
from comfyui_backdrop.nodes.tensors import INPUT_RULES
from comfyui_backdrop.nodes.watermark import BackdropSave, BackdropVerify, BackdropWatermark
from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.watermark.service import get_service
from tests.conftest import use_node_host
from tests.fixtures.images import image_batch, studio_product_photo

H, W = 256, 320
NAN_IN_IMAGE = r"^{node} input '\w+': image 2 of 2 \(batch index 1\) contains 1 NaN value"
NAN_IN_MASK = r"^{node} input 'product_mask': mask 1 of 2 \(batch index 0\) contains 1 NaN value"


@pytest.fixture(scope="module")
def batch():
    """Two product photos (float IMAGE [2,H,W,3]) and their product masks (MASK [2,H,W])."""
    (a, ma), (b, mb) = studio_product_photo(H, W, seed=1), studio_product_photo(H, W, seed=2)
    return image_batch(a, b), torch.from_numpy(np.stack([ma, mb]).astype(np.float32))


@pytest.fixture()
def private(tmp_path, monkeypatch):
    """A private provenance home and output folder: nothing a refused call writes can hide in shared state."""
    monkeypatch.setenv("BACKDROP_HOME", str(tmp_path / "home"))
    use_node_host(monkeypatch, tmp_path / "input", tmp_path / "output")
    return tmp_path


# node id -> a call taking (images, masks); every node with IMAGE or MASK inputs is here.
CALLS = {
    "BackdropStudioBackdrop": lambda i, m: BackdropStudioBackdrop().render(i, m, "Minimal Studio", -1.0, -1.0, 0),
    "BackdropWatermark": lambda i, m: BackdropWatermark().mark(
        i, account="a", prompt="p", negative_prompt="", generation_seed=1, metadata="", if_already_marked="refuse",
        if_too_small="leave unmarked", strength=1.0, product_mask=m),
    "BackdropComposite": lambda i, m: BackdropComposite().composite(i, i, m, 4, 0.0),
    "BackdropInpaint": lambda i, m: BackdropInpaint().inpaint(None, i, m, "p", "n", 1, 0, 1, 1.0, "euler", 1.0),
    "BackdropCaption": lambda i, m: BackdropCaption().caption(i, "canvas_scene", "", 16, 1, False, 0.7, 0.9, 0,
                                                            product_mask=m),
    "BackdropRankCandidates": lambda i, m: BackdropRankCandidates().rank(i, m, "Minimal Studio", 1),
    "BackdropUpscale": lambda i, m: BackdropUpscale().upscale(i, i, m, "lanczos", 6),
}
IMAGE_ONLY = {
    "BackdropProductMask": lambda i: BackdropProductMask().mask(i, True, "main", 0, False, 0.0),
    "BackdropVerify": lambda i: BackdropVerify().verify(image=i),
    "BackdropSave": lambda i: BackdropSave().save(i, "rules", "png", 95, "original", False),
}
NODE_CLASSES = {"BackdropStudioBackdrop": BackdropStudioBackdrop, "BackdropWatermark": BackdropWatermark,
                "BackdropComposite": BackdropComposite, "BackdropInpaint": BackdropInpaint,
                "BackdropCaption": BackdropCaption, "BackdropProductMask": BackdropProductMask,
                "BackdropVerify": BackdropVerify, "BackdropSave": BackdropSave,
                "BackdropRankCandidates": BackdropRankCandidates, "BackdropUpscale": BackdropUpscale}


def _with_nan(tensor: torch.Tensor, index: int) -> torch.Tensor:
    bad = tensor.clone()
    bad[(index, 3, 5, 0) if bad.ndim == 4 else (index, 3, 5)] = float("nan")
    return bad


def _ledger_size() -> int:
    return len(get_service().ledger)


@pytest.mark.parametrize("node", sorted(CALLS))
def test_nan_in_an_image_is_an_error_naming_the_node_and_the_image(node, batch, private):
    images, masks = batch
    before = _ledger_size()
    with pytest.raises(InvalidInputError, match=NAN_IN_IMAGE.format(node=node)):
        CALLS[node](_with_nan(images, 1), masks)
    assert _ledger_size() == before and not any((private / "output").glob("**/*.png"))


@pytest.mark.parametrize("node", sorted(IMAGE_ONLY))
def test_nan_in_an_image_is_an_error_in_image_only_nodes(node, batch, private):
    images, _ = batch
    with pytest.raises(InvalidInputError, match=NAN_IN_IMAGE.format(node=node)):
        IMAGE_ONLY[node](_with_nan(images, 1))
    assert not any((private / "output").glob("**/*.png")), "nothing is saved from a batch holding NaN"


@pytest.mark.parametrize("node", sorted(CALLS))
def test_nan_in_a_mask_is_an_error_naming_the_node_and_the_mask(node, batch, private):
    images, masks = batch
    with pytest.raises(InvalidInputError, match=NAN_IN_MASK.format(node=node)):
        CALLS[node](images, _with_nan(masks, 0))


@pytest.mark.parametrize("node", sorted(CALLS))
def test_a_mask_of_another_aspect_ratio_is_refused(node, batch, private):
    images, _ = batch
    square = torch.ones(1, H, H)  # 256x256 for 320x256 images: stretching it would protect the wrong pixels
    before = _ledger_size()
    with pytest.raises(InvalidInputError, match=rf"^{node} input 'product_mask': the mask is {H}x{H} but the image is "
                                                rf"{W}x{H}; a mask of another size is resized only when its aspect"):
        CALLS[node](images, square)
    assert _ledger_size() == before


@pytest.mark.parametrize("node", sorted(set(CALLS) - {"BackdropInpaint"}))  # Inpaint: test_inpainting covers it
def test_a_mask_of_the_same_aspect_ratio_is_resized(node, batch, private):
    images, masks = batch
    half = torch.nn.functional.interpolate(masks[:1, None], size=(H // 2, W // 2), mode="nearest")[:, 0]
    result = CALLS[node](images, half)
    assert result is not None


def test_studio_backdrop_keeps_the_product_under_a_resized_mask(batch, private):
    images, masks = batch
    half = masks[:, ::2, ::2].contiguous()  # a mask made on a half-size copy of the photo
    (out,) = BackdropStudioBackdrop().render(images, half, "Minimal Studio", -1.0, -1.0, 0)
    assert out.shape == images.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("node", sorted(NODE_CLASSES))
def test_every_node_documents_the_rule(node):
    cls = NODE_CLASSES[node]
    assert "NaN in an image" in cls.DESCRIPTION and "naming the node" in cls.DESCRIPTION
    spec = cls.INPUT_TYPES()
    masks = [entry[1] for section in ("required", "optional") for entry in spec.get(section, {}).values()
             if entry[0] == "MASK"]
    assert bool(masks) == (node in CALLS)
    if masks:
        assert INPUT_RULES in cls.DESCRIPTION
        assert all("aspect ratio" in options["tooltip"] for options in masks), node


def test_the_reference_lists_the_rule():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "nodes.md").read_text(encoding="utf-8")
    assert text.count(INPUT_RULES) == len(CALLS), "every node with a MASK input states the rule in docs/nodes.md"
