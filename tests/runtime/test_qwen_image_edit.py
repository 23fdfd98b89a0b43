"""Qwen-Image-Edit inpainting on a tiny pipeline saved as a diffusers folder, loaded through load_pipeline."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from comfyui_backdrop.runtime.errors import InvalidInputError, InvalidModelError
from comfyui_backdrop.runtime.inpainting.generate import InpaintSettings, inpaint_backgrounds
from comfyui_backdrop.runtime.inpainting.loader import default_cfg, load_pipeline
from comfyui_backdrop.runtime.inpainting.loras import activated, add_lora
from comfyui_backdrop.runtime.inpainting.qwen_edit import run_qwen_edit
from tests.fixtures.images import studio_product_photo
from tests.fixtures.inpaint_checks import assert_product_exact, assert_run_outputs_product_exact, odd_float_photo

QWEN = "diffusers/tiny-qwen-image-edit"
FAST = {"prompt": "a marble table, soft light", "steps": 2, "resolution": 128, "cfg": 4.0}


@pytest.fixture(scope="module")
def odd_photo() -> tuple[np.ndarray, np.ndarray]:
    return odd_float_photo()


def run(handle, images, masks, **overrides):
    return inpaint_backgrounds(handle, images, masks, InpaintSettings(**{**FAST, **overrides}))


def test_a_qwen_edit_folder_loads_as_the_edit_inpaint_pipeline(qwen_models):
    from diffusers import QwenImageEditInpaintPipeline

    index = json.loads((qwen_models / "diffusers" / "tiny-qwen-image-edit" / "model_index.json").read_text())
    assert index["_class_name"] == "QwenImageEditPipeline"  # as Qwen/Qwen-Image-Edit is saved
    handle = load_pipeline(QWEN)
    assert handle.family == "qwen-image-edit" and isinstance(handle.pipe, QwenImageEditInpaintPipeline)
    assert handle.is_transformer and not handle.is_flux
    assert "64-channel transformer" in handle.describe()
    assert default_cfg(QWEN) == 4.0  # the model card's true_cfg_scale


def test_product_pixels_exact_at_an_odd_size_in_a_batch_with_variations(qwen_models, odd_photo):
    image, mask = odd_photo
    flipped_image, flipped_mask = image[::-1].copy(), mask[::-1].copy()
    result = run(load_pipeline(QWEN), [image, flipped_image], [mask, flipped_mask], variations=2)
    assert len(result.images) == 4
    for out, (img, m) in zip(result.images, [(image, mask)] * 2 + [(flipped_image, flipped_mask)] * 2,
                             strict=True):
        assert out.shape == (77, 101, 3) and out.dtype == np.float32
        assert_product_exact(out, img, m)
    assert not np.array_equal(result.images[0], result.images[1])  # variations differ


def test_outpaint_rgba_with_seam_settings_keeps_the_product_exact(qwen_models, odd_photo):
    image, mask = odd_photo
    rgba = np.concatenate([image, np.where(mask >= 0.5, 1.0, 0.0).astype(np.float32)[..., None]], axis=2)
    result = run(load_pipeline(QWEN), [rgba], [mask], outpaint="1:1", seam_feather=3, color_match=0.5)
    out, canvas_mask = result.images[0], result.product_masks[0]
    assert out.shape == (101, 101, 4)
    oy = (101 - 77) // 2
    assert np.array_equal(canvas_mask[oy:oy + 77], mask)
    assert np.array_equal(out[oy:oy + 77][mask >= 0.5], rgba[mask >= 0.5])
    assert np.isfinite(out).all() and out[:oy].std() > 0.01  # the new margin was generated


def test_same_seed_same_output_and_batch_independence(qwen_models, odd_photo):
    image, mask = odd_photo
    handle = load_pipeline(QWEN)
    alone = run(handle, [image], [mask], seed=9).images[0]
    again = run(handle, [image], [mask], seed=9).images[0]
    in_batch = run(handle, [image[::-1].copy(), image], [mask[::-1].copy(), mask], seed=9).images[1]
    other = run(handle, [image], [mask], seed=10).images[0]
    assert np.array_equal(alone, again) and np.array_equal(alone, in_batch)
    assert not np.array_equal(alone, other)


def test_the_negative_prompt_counts_with_true_cfg_only(qwen_models, odd_photo):
    image, mask = odd_photo
    handle = load_pipeline(QWEN)
    default = run(handle, [image], [mask], seed=4).images[0]  # negative " " (the model card's)
    explicit = run(handle, [image], [mask], seed=4, negative_prompt=" ").images[0]
    steered = run(handle, [image], [mask], seed=4, negative_prompt="blurry, text").images[0]
    assert np.array_equal(default, explicit) and not np.array_equal(default, steered)
    no_cfg = run(handle, [image], [mask], seed=4, cfg=1.0).images[0]  # one pass a step: no negative prompt
    no_cfg_steered = run(handle, [image], [mask], seed=4, cfg=1.0, negative_prompt="blurry, text").images[0]
    assert np.array_equal(no_cfg, no_cfg_steered) and not np.array_equal(no_cfg, default)


def test_it_works_at_the_planned_size_not_diffusers_megapixel(qwen_models):
    """diffusers' QwenImageEditInpaintPipeline alone would work at ~1024x1024 whatever height/width say."""
    handle = load_pipeline(QWEN)
    seen: list[tuple[int, ...]] = []

    def callback(_pipe, _index, _t, kwargs):
        seen.append(tuple(kwargs["latents"].shape))
        return kwargs

    image = np.random.default_rng(0).random((48, 80, 3), dtype=np.float32)
    regenerate = np.ones((48, 80), bool)
    regenerate[16:32, 24:56] = False
    with activated(handle) as pipe:
        images = run_qwen_edit(pipe, image, regenerate, prompt="a table", negative_prompt="", cfg=4.0, steps=2,
                               strength=1.0, generators=[torch.Generator().manual_seed(0)], callback=callback)
    assert [img.shape for img in images] == [(48, 80, 3)]
    assert seen == [(1, (48 // 16) * (80 // 16), 64)] * 2  # packed 2x2 patches of the 8x latents


def test_partial_strength_and_progress_count_up_to_the_total(qwen_models, odd_photo):
    image, mask = odd_photo
    seen: list[tuple[int, int]] = []
    result = inpaint_backgrounds(load_pipeline(QWEN), [image, image], [mask, mask],
                                 InpaintSettings(**{**FAST, "steps": 3, "strength": 0.5}),
                                 progress=lambda d, t: seen.append((d, t)))
    for out in result.images:
        assert_product_exact(out, image, mask)
    done = [d for d, _ in seen]
    assert done == sorted(done) and seen[-1] == (2, 2) and all(t == 2 for _, t in seen)


def test_sd_only_settings_training_and_engines_are_refused_naming_the_family(qwen_models, odd_photo):
    from comfyui_backdrop.runtime.inpainting.loader import require_unet
    from comfyui_backdrop.runtime.training.trainer import training_unet

    image, mask = odd_photo
    handle = load_pipeline(QWEN)
    with pytest.raises(InvalidInputError, match="Qwen-Image-Edit samples with its own flow-match Euler"):
        run(handle, [image], [mask], scheduler="dpmpp_2m")
    with pytest.raises(InvalidInputError, match="feature_cache.*for Qwen-Image-Edit"):
        run(handle, [image], [mask], feature_cache=2)
    for what in ("LoRA training", "an engine UNet"):
        with pytest.raises(InvalidInputError, match=f"{what} needs an SD1.5 or SDXL UNet.*qwen-image-edit "
                                                    r"\(a Qwen-Image transformer\)"):
            require_unet(handle, what)
    with pytest.raises(InvalidInputError, match="qwen-image-edit"):
        handle.with_unet(None)
    with pytest.raises(InvalidInputError, match="LoRA training.*qwen-image-edit"):
        training_unet(handle)


# ------------------------------------------------------------------------------------------------- LoRAs

def transformer_output(handle) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    hidden, context = torch.randn(1, 16, 64, generator=generator), torch.randn(1, 6, 16, generator=generator)
    with activated(handle) as pipe, torch.no_grad():
        return pipe.transformer(hidden_states=hidden, encoder_hidden_states=context,
                                encoder_hidden_states_mask=torch.ones(1, 6, dtype=torch.long),
                                timestep=torch.tensor([0.5]), img_shapes=[[(1, 4, 4)]], return_dict=False)[0]


def test_a_lora_changes_the_background_and_strength_zero_is_the_base_exactly(qwen_models, odd_photo):
    image, mask = odd_photo
    base = load_pipeline(QWEN)
    before = run(base, [image], [mask], seed=3).images[0]
    with_lora = run(add_lora(base, "qwen_style.safetensors", 1.0), [image], [mask], seed=3).images[0]
    at_zero = run(add_lora(base, "qwen_style.safetensors", 0.0), [image], [mask], seed=3).images[0]
    after = run(base, [image], [mask], seed=3).images[0]
    background = mask < 0.5
    assert np.abs(with_lora[background] - before[background]).max() > 1e-3
    assert_product_exact(with_lora, image, mask)
    assert np.array_equal(at_zero, before) and np.array_equal(after, before)


def test_kohya_and_comfyui_qwen_loras_load_with_their_alpha(qwen_models):
    from safetensors.torch import load_file

    base = load_pipeline(QWEN)
    kohya = add_lora(base, "qwen_kohya.safetensors", 1.0, fuse=True)
    kohya_out = transformer_output(kohya)
    comfy_out = transformer_output(add_lora(base, "qwen_comfy.safetensors", 1.0))
    assert torch.allclose(kohya_out, comfy_out, atol=1e-5)
    assert (kohya_out - transformer_output(base)).abs().max() > 1e-3
    state = load_file(str(qwen_models / "loras" / "qwen_kohya.safetensors"))
    flat = "lora_unet_transformer_blocks_0_attn_to_q"
    down, up = state[f"{flat}.lora_down.weight"], state[f"{flat}.lora_up.weight"]
    scale = float(state[f"{flat}.alpha"]) / down.shape[0]
    key = "transformer_blocks.0.attn.to_q"
    with activated(kohya) as pipe:
        fused = pipe.transformer.get_submodule(key).base_layer.weight.detach().clone()
    with activated(base) as pipe:
        plain = pipe.transformer.get_submodule(key).base_layer.weight.detach().clone()
    assert torch.allclose(fused - plain, scale * up @ down, atol=1e-5)


def test_a_lora_for_another_model_lists_the_keys(qwen_models):
    from safetensors.torch import load_file, save_file

    state = load_file(str(qwen_models / "loras" / "qwen_style.safetensors"))
    wide = {k: torch.cat([v, v], dim=1) if k.endswith("lora_A.weight") else v for k, v in state.items()}
    path = qwen_models / "loras" / "qwen_wide.safetensors"
    save_file(wide, str(path))
    try:
        base = load_pipeline(QWEN)
        with pytest.raises(InvalidModelError, match=r"does not fit this base model.*\n  - transformer\.transformer_"
                                                    r"blocks\.0\.attn\..*input size 64, the layer has 32"):
            transformer_output(add_lora(base, "qwen_wide.safetensors", 1.0))
        assert torch.equal(transformer_output(base), transformer_output(base))  # the base still works
    finally:
        path.unlink()


# ------------------------------------------------------------------------------------------- bad folders

def test_other_qwen_image_pipelines_and_broken_folders_are_refused(qwen_models):
    folder = qwen_models / "diffusers" / "tiny-qwen-image-edit"
    t2i = qwen_models / "diffusers" / "qwen-image-t2i"
    broken = qwen_models / "diffusers" / "qwen-edit-no-transformer"
    t2i.mkdir()
    (t2i / "model_index.json").write_text(json.dumps({"_class_name": "QwenImagePipeline"}))
    shutil.copytree(folder, broken, ignore=shutil.ignore_patterns("transformer"))
    try:
        with pytest.raises(InvalidModelError, match="qwen-image-t2i is a QwenImagePipeline folder.*Qwen-Image-Edit"):
            load_pipeline("diffusers/qwen-image-t2i")
        with pytest.raises(InvalidModelError, match="qwen-edit-no-transformer could not be loaded as a diffusers "
                                                    "inpainting pipeline.*transformer"):
            load_pipeline("diffusers/qwen-edit-no-transformer")
    finally:
        shutil.rmtree(t2i)
        shutil.rmtree(broken)


# ----------------------------------------------------------------------------------------------------- CLI

def test_backdrop_run_with_a_qwen_edit_folder_keeps_the_product_exact(tmp_path, qwen_models):
    from comfyui_backdrop.cli.main import main

    photo, _ = studio_product_photo(77, 101, seed=5)
    cv2.imwrite(str(tmp_path / "bottle.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    args = ["run", str(tmp_path / "bottle.png"), "--out", str(tmp_path / "out"), "--models-dir", str(qwen_models),
            "--checkpoint", QWEN, "--lora", "qwen_kohya.safetensors:0.8", "--steps", "2", "--resolution", "128",
            "--variations", "2", "--seed", "7", "--save-mask", "--quiet"]
    assert main(args) == 0
    assert_run_outputs_product_exact(tmp_path / "out", photo, 2)
