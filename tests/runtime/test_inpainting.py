"""Inpainting on tiny SD1.5/SDXL models loaded through the same loaders users hit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_backdrop.runtime.errors import Interrupted, InvalidInputError, InvalidModelError, MissingModelError
from comfyui_backdrop.runtime.inpainting.generate import InpaintSettings, inpaint_backgrounds
from comfyui_backdrop.runtime.inpainting.loader import load_pipeline
from comfyui_backdrop.runtime.inpainting.loras import activated, add_lora
from comfyui_backdrop.runtime.models import MODEL_CACHE, free_models

FAST = {"prompt": "a marble table, soft light", "steps": 2, "resolution": 128}


@pytest.fixture()
def photo(product_photo):
    image, mask = product_photo
    return image.astype(np.float32) / 255.0, mask.astype(np.float32)


def run(handle, images, masks, **overrides):
    return inpaint_backgrounds(handle, images, masks, InpaintSettings(**{**FAST, **overrides}))


def assert_product_exact(out: np.ndarray, image: np.ndarray, mask: np.ndarray) -> None:
    product = mask >= 0.5
    assert np.array_equal(out[product], image[product])
    assert np.abs(out[~product][..., :3] - image[~product][..., :3]).mean() > 0.02  # the background is new


@pytest.mark.parametrize("model", ["checkpoints/tiny-sd15-inpaint.safetensors",
                                   "checkpoints/tiny-sdxl-inpaint.safetensors",
                                   "checkpoints/tiny-sd15-base.safetensors"])
def test_product_pixels_exact_at_odd_size_in_a_batch(inpaint_models, photo, model):
    image, mask = photo
    flipped_image, flipped_mask = image[::-1].copy(), mask[::-1].copy()
    handle = load_pipeline(model)
    result = run(handle, [image, flipped_image], [mask, flipped_mask], variations=2)
    assert len(result.images) == 4
    for out, (img, m) in zip(result.images, [(image, mask)] * 2 + [(flipped_image, flipped_mask)] * 2,
                             strict=True):
        assert out.shape == (389, 517, 3) and out.dtype == np.float32
        assert_product_exact(out, img, m)
    assert not np.array_equal(result.images[0], result.images[1])  # variations differ


def test_rgba_input_keeps_product_pixels_and_alpha(inpaint_models, photo):
    image, mask = photo
    alpha = np.where(mask >= 0.5, 1.0, 0.0).astype(np.float32)
    alpha[:5, :5] = 0.3
    rgba = np.concatenate([image, alpha[..., None]], axis=2)
    out = run(load_pipeline("checkpoints/tiny-sd15-inpaint.safetensors"), [rgba], [mask]).images[0]
    assert out.shape == (389, 517, 4)
    assert_product_exact(out, rgba, mask)
    assert np.all(out[mask < 0.5][:, 3] >= alpha[mask < 0.5])  # the new background is opaque


def test_single_file_and_diffusers_folder_give_the_same_output(inpaint_models, photo):
    image, mask = photo
    folder = run(load_pipeline("diffusers/tiny-sd15-inpaint"), [image], [mask], seed=4).images[0]
    single = run(load_pipeline("checkpoints/tiny-sd15-inpaint.safetensors"), [image], [mask], seed=4).images[0]
    assert np.array_equal(folder, single)


def test_same_seed_same_output_and_batch_independence(inpaint_models, photo):
    image, mask = photo
    handle = load_pipeline("checkpoints/tiny-sd15-inpaint.safetensors")
    alone = run(handle, [image], [mask], seed=9).images[0]
    again = run(handle, [image], [mask], seed=9).images[0]
    in_batch = run(handle, [image[::-1].copy(), image], [mask[::-1].copy(), mask], seed=9).images[1]
    other = run(handle, [image], [mask], seed=10).images[0]
    assert np.array_equal(alone, again)
    assert np.array_equal(alone, in_batch)
    assert not np.array_equal(alone, other)


def test_outpaint_to_a_new_aspect_keeps_the_product_exact(inpaint_models, photo):
    image, mask = photo
    result = run(load_pipeline("checkpoints/tiny-sd15-inpaint.safetensors"), [image], [mask], outpaint="1:1")
    out, canvas_mask = result.images[0], result.product_masks[0]
    assert out.shape == (517, 517, 3)
    oy = (517 - 389) // 2
    assert np.array_equal(canvas_mask[oy:oy + 389], mask)
    assert np.array_equal(out[oy:oy + 389][mask >= 0.5], image[mask >= 0.5])
    assert out[:oy].std() > 0.01  # the new margin was generated


def test_inputs_are_not_mutated_and_progress_counts_every_step(inpaint_models, photo):
    image, mask = photo
    image_copy, mask_copy = image.copy(), mask.copy()
    seen = []
    inpaint_backgrounds(load_pipeline("checkpoints/tiny-sd15-inpaint.safetensors"), [image, image], [mask, mask],
                        InpaintSettings(**{**FAST, "steps": 3}), progress=lambda d, t: seen.append((d, t)))
    assert np.array_equal(image, image_copy) and np.array_equal(mask, mask_copy)
    assert seen[-1] == (6, 6) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_interruption_stops_the_run(inpaint_models, photo):
    image, mask = photo

    def interrupt(done, total):
        if done >= 1:
            raise Interrupted("stop")

    with pytest.raises(Interrupted):
        inpaint_backgrounds(load_pipeline("checkpoints/tiny-sd15-inpaint.safetensors"), [image], [mask],
                            InpaintSettings(**FAST), progress=interrupt)


# ------------------------------------------------------------------------------------------------- LoRAs

def unet_output(handle) -> torch.Tensor:
    torch.manual_seed(0)
    x, context = torch.randn(1, 9, 8, 8), torch.randn(1, 77, 32)
    with activated(handle) as pipe, torch.no_grad():
        return pipe.unet(x, 10, context).sample


def test_lora_load_then_unload_returns_the_base_output_exactly(inpaint_models):
    base = load_pipeline("checkpoints/tiny-sd15-inpaint.safetensors")
    before = unet_output(base)
    with_lora = unet_output(add_lora(base, "style_a.safetensors", 1.0))
    after = unet_output(base)
    assert (with_lora - before).abs().max() > 1e-3
    assert torch.equal(before, after)


def test_kohya_and_peft_formats_load_the_same_lora(inpaint_models):
    base = load_pipeline("checkpoints/tiny-sd15-inpaint.safetensors")
    peft_out = unet_output(add_lora(base, "style_a.safetensors", 0.8))
    kohya_out = unet_output(add_lora(base, "style_a_kohya.safetensors", 0.8))
    assert torch.allclose(peft_out, kohya_out, atol=1e-5)


def test_two_loras_with_strengths_compose_and_fuse_matches(inpaint_models):
    from safetensors.torch import load_file

    base = load_pipeline("checkpoints/tiny-sd15-inpaint.safetensors")
    stack = add_lora(add_lora(base, "style_a.safetensors", 0.7), "style_b.safetensors", -0.4)
    unfused = unet_output(stack)
    fused_handle = stack.with_loras(stack.loras, fuse=True)
    fused = unet_output(fused_handle)
    assert torch.allclose(unfused, fused, atol=1e-4)
    # The fused weight is W + 0.7*B_a@A_a + (-0.4)*B_b@A_b, computed independently from the files.
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    a, b = (load_file(str(inpaint_models / "loras" / n)) for n in ("style_a.safetensors", "style_b.safetensors"))
    delta = sum(s * (f[f"unet.{key}.lora_B.weight"] @ f[f"unet.{key}.lora_A.weight"]) for s, f in ((0.7, a), (-0.4, b)))
    with activated(fused_handle) as pipe:
        fused_weight = pipe.unet.get_submodule(key).base_layer.weight.detach().clone()
    with activated(base) as pipe:
        base_weight = pipe.unet.get_submodule(key).base_layer.weight.detach().clone()
    assert torch.allclose(fused_weight - base_weight, delta, atol=1e-5)
    assert (unet_output(base) - unfused).abs().max() > 1e-3


def test_lora_for_another_base_model_lists_the_keys(inpaint_models):
    base = load_pipeline("checkpoints/tiny-sd15-inpaint.safetensors")
    with pytest.raises(InvalidModelError, match=r"does not fit this base model.*\n  - unet\.") as err:
        unet_output(add_lora(base, "sdxl_only.safetensors", 1.0))
    assert "trained for another base model" in str(err.value)
    assert torch.equal(unet_output(base), unet_output(base))  # the base pipeline still works


# --------------------------------------------------------------------------------------------- bad input

def test_mask_without_background_returns_the_image(inpaint_models, photo):
    image, _ = photo
    result = run(load_pipeline("checkpoints/tiny-sd15-inpaint.safetensors"), [image],
                 [np.ones(image.shape[:2], np.float32)], variations=2)
    assert len(result.images) == 2 and all(np.array_equal(o, image) for o in result.images)


def test_mask_without_product_generates_the_whole_image(inpaint_models, photo):
    image, _ = photo
    out = run(load_pipeline("checkpoints/tiny-sd15-inpaint.safetensors"), [image],
              [np.zeros(image.shape[:2], np.float32)]).images[0]
    assert out.shape == image.shape and np.abs(out - image).mean() > 0.05


def test_mask_size_mismatch(inpaint_models, photo):
    import cv2

    image, mask = photo
    handle = load_pipeline("checkpoints/tiny-sd15-inpaint.safetensors")
    half = cv2.resize(mask, (517 // 2 + 1, 389 // 2 + 1), interpolation=cv2.INTER_NEAREST)
    out = run(handle, [image], [half]).images[0]  # same aspect: resized, product still exact
    resized = cv2.resize(half, (517, 389), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(out[resized >= 0.5], image[resized >= 0.5])
    with pytest.raises(InvalidInputError, match="aspect ratio"):
        run(handle, [image], [np.ones((100, 300), np.float32)])


def test_corrupt_checkpoint_and_missing_model_errors(inpaint_models):
    (inpaint_models / "checkpoints" / "broken.safetensors").write_bytes(b"\x00not a safetensors file")
    try:
        with pytest.raises(InvalidModelError, match="broken.safetensors"):
            load_pipeline("checkpoints/broken.safetensors")
        with pytest.raises(MissingModelError, match="models/checkpoints"):
            load_pipeline("checkpoints/nope.safetensors")
    finally:
        (inpaint_models / "checkpoints" / "broken.safetensors").unlink()


def test_missing_tokenizer_says_where_it_looked(inpaint_models, monkeypatch, tmp_path):
    from comfyui_backdrop.runtime.models import ModelLocator, set_locator

    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "tiny-sdxl-inpaint.safetensors").symlink_to(
        inpaint_models / "checkpoints" / "tiny-sdxl-inpaint.safetensors")
    set_locator(ModelLocator.from_models_dir(models))  # no diffusers folder whose tokenizer could be borrowed
    empty = tmp_path / "no-tokenizer-here"
    monkeypatch.setenv("BACKDROP_CLIP_TOKENIZER", str(empty))
    free_models()
    with pytest.raises(MissingModelError, match="vocab.json and merges.txt") as err:
        load_pipeline("checkpoints/tiny-sdxl-inpaint.safetensors", tokenizer_dir=str(tmp_path / "explicit"))
    assert str(empty) in str(err.value) and str(tmp_path / "explicit") in str(err.value)


def test_models_are_cached_and_freed(inpaint_models):
    first = load_pipeline("checkpoints/tiny-sd15-inpaint.safetensors")
    assert load_pipeline("checkpoints/tiny-sd15-inpaint.safetensors") is first
    assert free_models() >= 1 and len(MODEL_CACHE) == 0
    assert load_pipeline("checkpoints/tiny-sd15-inpaint.safetensors") is not first


def test_bad_settings_are_refused(inpaint_models, photo):
    image, mask = photo
    handle = load_pipeline("checkpoints/tiny-sd15-inpaint.safetensors")
    for bad in ({"steps": 0}, {"strength": 0.0}, {"scheduler": "nope"}, {"outpaint": "wide"}):
        with pytest.raises(InvalidInputError):
            run(handle, [image], [mask], **bad)
