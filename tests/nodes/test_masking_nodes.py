"""BackdropProductMask / BackdropStudioBackdrop behaviour through the node adapters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_backdrop.nodes.backdrop import BackdropStudioBackdrop
from comfyui_backdrop.nodes.masking import BackdropProductMask, BackdropSAMLoader
from comfyui_backdrop.runtime.errors import Interrupted, MissingModelError
from tests.conftest import use_node_host
from tests.fixtures.images import image_batch, iou, studio_product_photo
from tests.fixtures.sam_fixtures import build_tiny_sam, save_sam

DEFAULTS = {"fill_holes": True, "keep": "main", "grow_px": 0, "edge_refine": True, "feather_px": 0.0}




def test_mixed_batch_gets_one_mask_each_with_explicit_polarity(progress_log):
    bottle, truth = studio_product_photo(120, 160, seed=1)
    other, other_truth = studio_product_photo(120, 160, seed=7, background="flat")
    flat = np.full_like(bottle, 200)
    images = image_batch(bottle, flat, other)
    product, background, preview = BackdropProductMask().mask(images, **DEFAULTS)
    assert product.shape == (3, 120, 160) and preview.shape == (3, 120, 160, 3)
    assert torch.equal(product + background, torch.ones_like(product))
    assert iou(product[0].numpy() > 0.5, truth) > 0.85
    assert iou(product[2].numpy() > 0.5, other_truth) > 0.85
    assert product[1].max() == 0, "a flat image has no product: an empty mask is the defined result"
    assert progress_log == [(1, 3), (2, 3), (3, 3)]


def test_grow_and_box_widgets_reach_the_runtime():
    bottle, truth = studio_product_photo(120, 160, seed=1)
    images = image_batch(bottle)
    base = BackdropProductMask().mask(images, **DEFAULTS)[0][0].numpy() > 0.5
    grown = BackdropProductMask().mask(images, **{**DEFAULTS, "grow_px": 4})[0][0].numpy() > 0.5
    assert grown.sum() > base.sum() and (grown | base).sum() == grown.sum()
    two = bottle.copy()
    two[20:50, 125:150] = (40, 60, 200)  # a second object on the right
    ys, xs = np.nonzero(truth)
    box = f"{xs.min() - 6},{ys.min() - 6},{xs.max() + 6},{ys.max() + 6}"
    boxed = BackdropProductMask().mask(image_batch(two), **DEFAULTS, box=box)[0][0].numpy() > 0.5
    assert iou(boxed, truth) > 0.85 and not boxed[:, 120:].any()


def test_interrupting_stops_theimage_batch(monkeypatch):
    def factory(total):
        def cb(done, total_):
            if done == 1:
                raise Interrupted("cancelled")
        return cb

    use_node_host(monkeypatch, progress_factory=factory)
    bottle, _ = studio_product_photo(64, 64, seed=1)
    with pytest.raises(Interrupted):
        BackdropProductMask().mask(image_batch(bottle, bottle), **DEFAULTS)


def test_sam_loader_node_and_mask_with_sam(models_dir):
    save_sam(build_tiny_sam(), models_dir / "sams" / "tiny.pth")
    assert BackdropSAMLoader.INPUT_TYPES()["required"]["sam_model"][0] == ["tiny.pth"]
    (sam,) = BackdropSAMLoader().load("tiny.pth", "cpu")
    bottle, _ = studio_product_photo(96, 128, seed=2)
    product, _, _ = BackdropProductMask().mask(image_batch(bottle, bottle), **DEFAULTS, sam=sam)
    assert product.shape == (2, 96, 128) and torch.equal(product[0], product[1])
    assert sam.encoder_runs == 1, "the same image twice must reuse the cached embedding"
    with pytest.raises(MissingModelError, match="models/sams"):
        BackdropSAMLoader().load("vit_h_missing.pth", "cpu")


def test_studio_node_keeps_product_exact_with_broadcast_and_resized_masks():
    bottle, truth = studio_product_photo(120, 160, seed=1)
    images = image_batch(bottle, bottle)
    mask = torch.from_numpy(truth[None].astype(np.float32))
    (out,) = BackdropStudioBackdrop().render(images, mask, "Glam", -1.0, -1.0, 0)
    assert out.shape == images.shape
    assert torch.equal(out[:, torch.from_numpy(truth)], images[:, torch.from_numpy(truth)])
    small = torch.nn.functional.interpolate(mask[None], size=(60, 80), mode="nearest")[0]
    (resized,) = BackdropStudioBackdrop().render(images, small, "Glam", 0.5, 0.2, 0)
    assert resized.shape == images.shape


def test_studio_node_empty_and_full_masks():
    bottle, _ = studio_product_photo(64, 80, seed=1)
    images = image_batch(bottle)
    (full,) = BackdropStudioBackdrop().render(images, torch.ones(1, 64, 80), "Glam", -1.0, -1.0, 0)
    assert torch.equal(full, images), "a full product mask leaves the image untouched"
    (empty,) = BackdropStudioBackdrop().render(images, torch.zeros(1, 64, 80), "Glam", -1.0, -1.0, 0)
    assert torch.isfinite(empty).all() and (empty - images).abs().mean() > 0.3
