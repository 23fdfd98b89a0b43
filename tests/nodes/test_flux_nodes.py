"""FLUX.1 Fill and Kontext through the node adapters: loader, LoRA, inpaint; products exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_backdrop.nodes.inpainting import BackdropInpaint, BackdropInpaintLoader, BackdropLoRA
from tests.fixtures.images import studio_product_photo
from tests.fixtures.inpaint_checks import assert_product_exact

FAST = {"positive": "wooden table", "negative": "ignored by FLUX", "variations": 2, "seed": 3, "steps": 2,
        "cfg": 30.0, "scheduler": "euler", "strength": 1.0, "resolution": 128}


@pytest.mark.parametrize("model", ["diffusers/tiny-flux-fill", "diffusers/tiny-flux-kontext"])
def test_flux_pipeline_through_the_nodes_keeps_products_exact(flux_models, model):
    image, mask = studio_product_photo(77, 101, seed=5)
    images = torch.from_numpy(np.stack([image, image[:, ::-1]]).astype(np.float32) / 255.0)
    masks = torch.from_numpy(np.stack([mask, mask[:, ::-1]]).astype(np.float32))
    (base,) = BackdropInpaintLoader().load(model, "cpu", "auto")
    (pipeline,) = BackdropLoRA().apply(base, "flux_comfy.safetensors", 0.7, enabled=True, fuse=False)
    out, out_masks = BackdropInpaint().inpaint(pipeline, images, masks, **FAST)
    assert out.shape == (4, 77, 101, 3) and out_masks.shape == (4, 77, 101)
    assert torch.isfinite(out).all()
    for k in range(4):  # bit for bit, float32, and a new background
        assert_product_exact(out[k].numpy(), images[k // 2].numpy(), masks[k // 2].numpy())
