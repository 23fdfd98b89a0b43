"""BackdropInpaintLoader / BackdropLoRA / BackdropInpaint / BackdropComposite through the node adapters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_backdrop.nodes.inpainting import BackdropComposite, BackdropInpaint, BackdropInpaintLoader, BackdropLoRA
from comfyui_backdrop.runtime.errors import InvalidInputError
from tests.conftest import use_node_host

FAST = {"positive": "wooden table", "negative": "", "variations": 2, "seed": 3, "steps": 2, "cfg": 5.0,
        "scheduler": "euler", "strength": 1.0, "resolution": 128}


@pytest.fixture()
def photo_batch(product_photo):
    image, mask = product_photo
    images = torch.from_numpy(np.stack([image, image[:, ::-1]]).astype(np.float32) / 255.0)
    masks = torch.from_numpy(np.stack([mask, mask[:, ::-1]]).astype(np.float32))
    return images, masks


def test_inpaint_node_returns_variations_with_exact_products(inpaint_models, photo_batch, monkeypatch):
    calls = []
    use_node_host(monkeypatch, progress_factory=lambda total: lambda d, t: calls.append((d, t)))
    images, masks = photo_batch
    before = images.clone()
    (pipeline,) = BackdropInpaintLoader().load("checkpoints/tiny-sd15-inpaint.safetensors", "cpu", "auto")
    out, out_masks = BackdropInpaint().inpaint(pipeline, images, masks, **FAST)
    assert out.shape == (4, 389, 517, 3) and out_masks.shape == (4, 389, 517)
    assert torch.equal(images, before)
    for k in range(4):
        product = masks[k // 2] >= 0.5
        assert torch.equal(out[k][product], images[k // 2][product])  # bit for bit, float32
    assert calls and calls[-1] == (4, 4)


def test_lora_node_stacks_and_disabled_passes_through(inpaint_models):
    (base,) = BackdropInpaintLoader().load("checkpoints/tiny-sd15-inpaint.safetensors", "cpu", "auto")
    (same,) = BackdropLoRA().apply(base, "style_a.safetensors", 0.5, enabled=False, fuse=False)
    (one,) = BackdropLoRA().apply(base, "style_a.safetensors", 0.5, enabled=True, fuse=False)
    (two,) = BackdropLoRA().apply(one, "style_b.safetensors", 1.5, enabled=True, fuse=True)
    assert same is base
    assert [(s.name, s.strength) for s in two.loras] == [("style_a.safetensors", 0.5), ("style_b.safetensors", 1.5)]
    assert two.fuse_loras and two.pipe is base.pipe  # one base model in memory


def test_composite_is_exact_on_an_image_from_another_source(photo_batch):
    images, masks = photo_batch
    rng = np.random.default_rng(0)
    # Like a KSampler graph: 3 variations per original, cropped to multiples of 8 by the VAE encoder.
    generated = torch.from_numpy(rng.random((6, 384, 512, 3), dtype=np.float32))
    (out,) = BackdropComposite().composite(generated, images, masks, seam_feather=4, color_match=0.5)
    assert out.shape == (6, 389, 517, 3)
    for k in range(6):
        product = masks[k // 3] >= 0.5
        assert torch.equal(out[k][product], images[k // 3][product])
        far = torch.from_numpy(np.asarray(masks[k // 3]) == 0)
        assert (out[k][far] - images[k // 3][far]).abs().mean() > 0.1  # the generated background is used


def test_composite_keeps_rgba_alpha_on_the_product(photo_batch):
    images, masks = photo_batch
    rgba = torch.cat([images[:1], masks[:1, ..., None]], dim=-1)
    generated = torch.rand(1, 389, 517, 3)
    (out,) = BackdropComposite().composite(generated, rgba, masks[:1], seam_feather=0, color_match=0.0)
    product = masks[0] >= 0.5
    assert out.shape[-1] == 4 and torch.equal(out[0][product], rgba[0][product])
    assert torch.all(out[0][~product][:, 3] == 1.0)


def test_composite_refuses_mismatched_batches_and_aspects(photo_batch):
    images, masks = photo_batch
    with pytest.raises(InvalidInputError, match="whole number"):
        BackdropComposite().composite(torch.rand(3, 389, 517, 3), images, masks, 4, 0.0)
    with pytest.raises(InvalidInputError, match="aspect"):
        BackdropComposite().composite(torch.rand(2, 389, 389, 3), images, masks, 4, 0.0)
