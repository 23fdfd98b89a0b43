"""Qwen-Image-Edit through the node adapters: loader, LoRA, inpaint; products exact."""

from __future__ import annotations

import numpy as np
import torch

from comfyui_backdrop.nodes.inpainting import BackdropInpaint, BackdropInpaintLoader, BackdropLoRA
from tests.fixtures.images import studio_product_photo
from tests.fixtures.inpaint_checks import assert_product_exact

FAST = {"positive": "wooden table", "negative": "blurry", "variations": 2, "seed": 3, "steps": 2, "cfg": 4.0,
        "scheduler": "euler", "strength": 1.0, "resolution": 128}


def test_qwen_edit_through_the_nodes_keeps_products_exact(qwen_models):
    image, mask = studio_product_photo(77, 101, seed=5)
    images = torch.from_numpy(np.stack([image, image[:, ::-1]]).astype(np.float32) / 255.0)
    masks = torch.from_numpy(np.stack([mask, mask[:, ::-1]]).astype(np.float32))
    (base,) = BackdropInpaintLoader().load("diffusers/tiny-qwen-image-edit", "cpu", "auto")
    (pipeline,) = BackdropLoRA().apply(base, "qwen_comfy.safetensors", 0.7, enabled=True, fuse=False)
    out, out_masks = BackdropInpaint().inpaint(pipeline, images, masks, **FAST)
    assert base.family == "qwen-image-edit"
    assert out.shape == (4, 77, 101, 3) and out_masks.shape == (4, 77, 101)
    assert torch.isfinite(out).all()
    for k in range(4):  # bit for bit, float32, and a new background
        assert_product_exact(out[k].numpy(), images[k // 2].numpy(), masks[k // 2].numpy())
    assert not torch.equal(out[0], out[1])  # variations differ
