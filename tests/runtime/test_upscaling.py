"""Super-resolution and the second paste-back: a tiny spandrel-readable model built in code, loaded from a
models/upscale_models folder through the loader users hit; Lanczos without weights; product pixels exact."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from comfyui_backdrop.runtime.errors import InvalidInputError, InvalidModelError, MissingModelError
from comfyui_backdrop.runtime.upscaling import (
    load_upscaler,
    paste_back,
    restore_full_resolution,
    shrink_for_generation,
    upscale,
    working_size,
)
from tests.fixtures.images import studio_product_photo, to_float

pytest.importorskip("spandrel", reason="the upscale extra (spandrel) is not installed")


def tiny_compact_state(scale: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """A Real-ESRGAN compact (SRVGGNetCompact) x``scale`` with 8 features and 2 body convolutions, random weights."""
    from spandrel.architectures.Compact import Compact as SRVGGNetCompact

    torch.manual_seed(seed)
    model = SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=scale, act_type="prelu")
    return {k: v.contiguous() for k, v in model.state_dict().items()}


@pytest.fixture()
def upscale_models(models_dir):
    """models/upscale_models with a tiny x2 model as .safetensors and a tiny x3 one as .pth (params_ema)."""
    from safetensors.torch import save_file

    folder = models_dir / "upscale_models"
    folder.mkdir(exist_ok=True)
    save_file(tiny_compact_state(2), str(folder / "tiny_x2.safetensors"))
    torch.save({"params_ema": tiny_compact_state(3, seed=1)}, folder / "tiny_x3.pth")
    return folder


def _shot(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    photo, mask = studio_product_photo(height, width, seed=seed)
    return to_float(photo), mask.astype(np.float32)


def test_model_loads_from_the_folder_and_runs_at_its_scale(upscale_models):
    x2 = load_upscaler("tiny_x2.safetensors")
    x3 = load_upscaler("tiny_x3.pth")
    assert (x2.scale, x3.scale) == (2, 3)
    assert x2.architecture == x3.architecture
    assert load_upscaler("tiny_x2.safetensors") is x2  # cached
    image, _ = _shot(37, 53)
    out = upscale(image, 2, x2)
    assert out.shape == (74, 106, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not np.allclose(out, upscale(image, 2), atol=1e-3), "the model's output equals plain Lanczos"


def test_tiles_meet_without_seams(upscale_models):
    model = load_upscaler("tiny_x2.safetensors")
    image, _ = _shot(97, 131)
    whole = upscale(image, 2, model, tile=512)
    tiled = upscale(image, 2, model, tile=32)  # 4 x 5 tiles, each with 16 px of context
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


@pytest.mark.parametrize(("size", "target"), [((61, 47), (183, 141)), ((101, 77), (257, 199))])
def test_model_upscale_then_paste_back_keeps_the_product_exact_at_odd_sizes(upscale_models, size, target):
    """Generated small, upscaled with the x3 model to an odd full size (not a multiple of 3), product pasted back."""
    original, alpha = _shot(*target, seed=5)
    small, _ = shrink_for_generation(original, alpha, size)
    generated = np.clip(small + 0.2, 0, 1)  # a "new background" (the product is moved too: it must come back)
    big = upscale(generated, target, load_upscaler("tiny_x3.pth"))
    assert big.shape[:2] == target
    out = paste_back(big, original, alpha)
    product = alpha >= 0.5
    assert np.array_equal(out[product], original[product])
    far = ~cv2.dilate(product.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
    assert np.allclose(out[far], big[far])  # the background is the upscaled picture


def test_lanczos_without_weights_and_rgba(models_dir):
    original, alpha = _shot(233, 311, seed=2)
    rgba = np.dstack([original, np.ones_like(alpha)])
    small, _ = shrink_for_generation(rgba, alpha, (78, 104))
    out = upscale(small, (233, 311))
    assert out.shape == (233, 311, 4)
    assert np.allclose(out[..., 3], 1.0, atol=1e-5)
    delivered = paste_back(out, rgba, alpha)
    product = alpha >= 0.5
    assert np.array_equal(delivered[product], rgba[product])
    assert upscale(small, 3).shape == (234, 312, 4)


def test_restore_full_resolution_on_an_outpaint_canvas(models_dir):
    original, alpha = _shot(160, 130, seed=4)
    size = working_size(160, 130, "2x", 512)
    assert size == (80, 65)
    # generation at half size with a 16:9 outpaint: an 80 x 142 canvas, the photo in its middle
    from comfyui_backdrop.runtime.inpainting.geometry import outpaint_canvas

    ch, cw, _, _ = outpaint_canvas(*size, "16:9")
    generated = np.full((ch, cw, 3), 0.3, np.float32)
    images, canvas_alpha = restore_full_resolution([generated], original, alpha, "16:9")
    full_h, full_w, foy, fox = outpaint_canvas(160, 130, "16:9")
    assert images[0].shape == (full_h, full_w, 3) and canvas_alpha.shape == (full_h, full_w)
    product = canvas_alpha >= 0.5
    placed = np.zeros_like(images[0])
    placed[foy:foy + 160, fox:fox + 130] = original
    assert product.sum() == (alpha >= 0.5).sum()
    assert np.array_equal(images[0][product], placed[product])


def test_working_size_choices():
    assert working_size(3000, 2000, "original", 1024) == (1254, 836)  # sqrt(1254*836) ~ 1024
    assert working_size(400, 300, "original", 1024) == (400, 300)  # already small: unchanged
    assert working_size(3000, 2001, "3x", 1024) == (1000, 667)
    with pytest.raises(InvalidInputError, match="upscale-to original"):
        working_size(150, 120, "3x", 512)


def test_missing_model_names_the_folder(upscale_models):
    with pytest.raises(MissingModelError) as err:
        load_upscaler("RealESRGAN_x4plus.pth")
    message = str(err.value)
    assert "models/upscale_models" in message and "tiny_x2.safetensors" in message and ".safetensors" in message
    with pytest.raises(MissingModelError):
        load_upscaler("../upscale_models/tiny_x2.safetensors")


def test_pickled_objects_are_refused_and_unknown_tensors_are_clear_errors(upscale_models):
    from safetensors.torch import save_file

    torch.save({"params": tiny_compact_state(2), "config": InvalidInputError("x")}, upscale_models / "pickled.pth")
    with pytest.raises(InvalidModelError, match="refused for safety"):
        load_upscaler("pickled.pth")
    save_file({"encoder.weight": torch.zeros(4, 4)}, str(upscale_models / "not_sr.safetensors"))
    with pytest.raises(InvalidModelError, match="not_sr.safetensors"):
        load_upscaler("not_sr.safetensors")


def test_bad_targets_are_clear_errors():
    image = np.zeros((10, 10, 3), np.float32)
    with pytest.raises(InvalidInputError):
        upscale(image, 0)
    with pytest.raises(InvalidInputError):
        upscale(image, (10,))
    with pytest.raises(InvalidInputError):
        upscale(np.zeros((10, 10), np.float32), 2)
