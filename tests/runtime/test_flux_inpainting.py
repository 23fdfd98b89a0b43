"""FLUX.1 Fill and Kontext inpainting on tiny pipelines saved as diffusers folders, loaded through load_pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_backdrop.runtime.errors import InvalidInputError, InvalidModelError
from comfyui_backdrop.runtime.inpainting.generate import InpaintSettings, inpaint_backgrounds
from comfyui_backdrop.runtime.inpainting.geometry import FAMILY_SIZE_STEP, SIZE_STEP, plan_canvas
from comfyui_backdrop.runtime.inpainting.loader import load_pipeline
from comfyui_backdrop.runtime.inpainting.loras import activated, add_lora
from tests.fixtures.inpaint_checks import assert_product_exact, odd_float_photo

FLUX = "diffusers/tiny-flux-fill"
KONTEXT = "diffusers/tiny-flux-kontext"
BOTH = pytest.mark.parametrize("model", [FLUX, KONTEXT])
FAST = {"prompt": "a marble table, soft light", "steps": 2, "resolution": 128, "cfg": 30.0}


@pytest.fixture(scope="module")
def odd_photo() -> tuple[np.ndarray, np.ndarray]:
    return odd_float_photo()


def run(handle, images, masks, **overrides):
    return inpaint_backgrounds(handle, images, masks, InpaintSettings(**{**FAST, **overrides}))


def test_a_flux_fill_folder_loads_as_its_own_family(flux_models):
    from diffusers import FluxFillPipeline

    handle = load_pipeline(FLUX)
    assert handle.family == "flux-fill" and isinstance(handle.pipe, FluxFillPipeline)
    assert handle.unet_in_channels == 384
    assert "384-channel transformer" in handle.describe()


def test_a_kontext_folder_loads_as_the_kontext_inpaint_pipeline(flux_models):
    from diffusers import FluxKontextInpaintPipeline

    handle = load_pipeline(KONTEXT)  # saved as FluxKontextPipeline, like FLUX.1-Kontext-dev
    assert handle.family == "flux-kontext" and isinstance(handle.pipe, FluxKontextInpaintPipeline)
    assert handle.unet_in_channels == 64


@BOTH
def test_product_pixels_exact_at_an_odd_size_in_a_batch_with_variations(flux_models, odd_photo, model):
    image, mask = odd_photo
    flipped_image, flipped_mask = image[::-1].copy(), mask[::-1].copy()
    result = run(load_pipeline(model), [image, flipped_image], [mask, flipped_mask], variations=2,
                 negative_prompt="ignored by FLUX")
    assert len(result.images) == 4
    for out, (img, m) in zip(result.images, [(image, mask)] * 2 + [(flipped_image, flipped_mask)] * 2,
                             strict=True):
        assert out.shape == (77, 101, 3) and out.dtype == np.float32
        assert_product_exact(out, img, m)
    assert not np.array_equal(result.images[0], result.images[1])  # variations differ


@BOTH
def test_outpaint_rgba_with_seam_settings_keeps_the_product_exact(flux_models, odd_photo, model):
    image, mask = odd_photo
    rgba = np.concatenate([image, np.where(mask >= 0.5, 1.0, 0.0).astype(np.float32)[..., None]], axis=2)
    result = run(load_pipeline(model), [rgba], [mask], outpaint="1:1", seam_feather=3, color_match=0.5)
    out, canvas_mask = result.images[0], result.product_masks[0]
    assert out.shape == (101, 101, 4)
    oy = (101 - 77) // 2
    assert np.array_equal(canvas_mask[oy:oy + 77], mask)
    assert np.array_equal(out[oy:oy + 77][mask >= 0.5], rgba[mask >= 0.5])
    assert np.isfinite(out).all() and out[:oy].std() > 0.01  # the new margin was generated


@BOTH
def test_same_seed_same_output_and_batch_independence(flux_models, odd_photo, model):
    image, mask = odd_photo
    handle = load_pipeline(model)
    alone = run(handle, [image], [mask], seed=9).images[0]
    again = run(handle, [image], [mask], seed=9).images[0]
    in_batch = run(handle, [image[::-1].copy(), image], [mask[::-1].copy(), mask], seed=9).images[1]
    other = run(handle, [image], [mask], seed=10).images[0]
    assert np.array_equal(alone, again) and np.array_equal(alone, in_batch)
    assert not np.array_equal(alone, other)


@BOTH
def test_partial_strength_and_progress_count_up_to_the_total(flux_models, odd_photo, model):
    image, mask = odd_photo
    seen: list[tuple[int, int]] = []
    result = inpaint_backgrounds(load_pipeline(model), [image, image], [mask, mask],
                                 InpaintSettings(**{**FAST, "steps": 3, "strength": 0.5}),
                                 progress=lambda d, t: seen.append((d, t)))
    for out in result.images:
        assert_product_exact(out, image, mask)
    done = [d for d, _ in seen]
    assert done == sorted(done) and seen[-1] == (2, 2) and all(t == 2 for _, t in seen)


def test_flux_works_at_multiples_of_16_not_64():
    regenerate = np.ones((77, 101), bool)
    regenerate[20:50, 30:70] = False
    flux = plan_canvas(regenerate, (0, 0), (77, 101), 128, FAMILY_SIZE_STEP["flux-fill"])
    sd = plan_canvas(regenerate, (0, 0), (77, 101), 128)
    assert flux.work_h % 16 == 0 and flux.work_w % 16 == 0
    assert (flux.work_h, flux.work_w) == (112, 160) and (sd.work_h, sd.work_w) == (128, 192)
    assert SIZE_STEP == 64


def test_sd_only_settings_are_refused_for_flux(flux_models, odd_photo):
    image, mask = odd_photo
    handle = load_pipeline(FLUX)
    with pytest.raises(InvalidInputError, match="flow-match Euler"):
        run(handle, [image], [mask], scheduler="dpmpp_2m")
    with pytest.raises(InvalidInputError, match="feature_cache"):
        run(handle, [image], [mask], feature_cache=2)


# ------------------------------------------------------------------------------------------------- LoRAs

def transformer_output(handle) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    hidden, context = torch.randn(1, 16, 384, generator=generator), torch.randn(1, 8, 32, generator=generator)
    pooled = torch.randn(1, 32, generator=generator)
    img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"),
                          dim=-1).reshape(16, 3)
    with activated(handle) as pipe, torch.no_grad():
        return pipe.transformer(hidden_states=hidden, encoder_hidden_states=context, pooled_projections=pooled,
                                timestep=torch.tensor([0.5]), img_ids=img_ids, txt_ids=torch.zeros(8, 3),
                                guidance=torch.tensor([30.0]), return_dict=False)[0]


def test_a_lora_changes_the_output_and_strength_zero_does_not(flux_models, odd_photo):
    image, mask = odd_photo
    base = load_pipeline(FLUX)
    before = run(base, [image], [mask], seed=3).images[0]
    with_lora = run(add_lora(base, "flux_style_a.safetensors", 1.0), [image], [mask], seed=3).images[0]
    at_zero = run(add_lora(base, "flux_style_a.safetensors", 0.0), [image], [mask], seed=3).images[0]
    after = run(base, [image], [mask], seed=3).images[0]
    assert np.abs(with_lora - before).max() > 1e-3
    assert_product_exact(with_lora, image, mask)
    assert np.array_equal(at_zero, before) and np.array_equal(after, before)


def test_a_kohya_lora_changes_kontext_and_strength_zero_does_not(flux_models, odd_photo):
    image, mask = odd_photo
    base = load_pipeline(KONTEXT)
    before = run(base, [image], [mask], seed=3, cfg=2.5).images[0]
    with_lora = run(add_lora(base, "flux_kohya.safetensors", 1.0), [image], [mask], seed=3, cfg=2.5).images[0]
    at_zero = run(add_lora(base, "flux_kohya.safetensors", 0.0), [image], [mask], seed=3, cfg=2.5).images[0]
    assert np.abs(with_lora - before).max() > 1e-3
    assert_product_exact(with_lora, image, mask)
    assert np.array_equal(at_zero, before)


def test_kohya_and_comfyui_flux_loras_load_with_their_alpha(flux_models):
    from safetensors.torch import load_file

    base = load_pipeline(FLUX)
    kohya = add_lora(base, "flux_kohya.safetensors", 1.0, fuse=True)
    kohya_out = transformer_output(kohya)
    comfy_out = transformer_output(add_lora(base, "flux_comfy.safetensors", 1.0))
    assert torch.allclose(kohya_out, comfy_out, atol=1e-5)
    assert (kohya_out - transformer_output(base)).abs().max() > 1e-3
    # The fused q projection is W + alpha/rank * up[:inner] @ down, read from the kohya file itself.
    state = load_file(str(flux_models / "loras" / "flux_kohya.safetensors"))
    down, up = state["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"], \
        state["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"]
    scale = float(state["lora_unet_double_blocks_0_img_attn_qkv.alpha"]) / down.shape[0]
    key = "transformer_blocks.0.attn.to_q"
    with activated(kohya) as pipe:
        fused = pipe.transformer.get_submodule(key).base_layer.weight.detach().clone()
    with activated(base) as pipe:
        plain = pipe.transformer.get_submodule(key).base_layer.weight.detach().clone()
    assert torch.allclose(fused - plain, scale * up[:32] @ down, atol=1e-5)


def test_two_flux_loras_stack_with_strengths(flux_models):
    from safetensors.torch import load_file

    base = load_pipeline(FLUX)
    stack = add_lora(add_lora(base, "flux_style_a.safetensors", 0.7), "flux_style_b.safetensors", -0.4)
    unfused = transformer_output(stack)
    fused_handle = stack.with_loras(stack.loras, fuse=True)
    assert torch.allclose(unfused, transformer_output(fused_handle), atol=1e-4)
    key = "single_transformer_blocks.0.attn.to_k"
    a, b = (load_file(str(flux_models / "loras" / n)) for n in ("flux_style_a.safetensors", "flux_style_b.safetensors"))
    delta = sum(s * (f[f"transformer.{key}.lora_B.weight"] @ f[f"transformer.{key}.lora_A.weight"])
                for s, f in ((0.7, a), (-0.4, b)))
    with activated(fused_handle) as pipe:
        fused_weight = pipe.transformer.get_submodule(key).base_layer.weight.detach().clone()
    with activated(base) as pipe:
        base_weight = pipe.transformer.get_submodule(key).base_layer.weight.detach().clone()
    assert torch.allclose(fused_weight - base_weight, delta, atol=1e-5)


def test_a_lora_of_another_width_lists_the_keys(flux_models):
    from safetensors.torch import load_file, save_file

    state = load_file(str(flux_models / "loras" / "flux_style_a.safetensors"))
    wide = {k: torch.cat([v, v], dim=1) if k.endswith("lora_A.weight") else v for k, v in state.items()}
    path = flux_models / "loras" / "flux_wide.safetensors"
    save_file(wide, str(path))
    try:
        base = load_pipeline(FLUX)
        with pytest.raises(InvalidModelError, match=r"does not fit this base model.*\n  - transformer\."):
            transformer_output(add_lora(base, "flux_wide.safetensors", 1.0))
        assert torch.equal(transformer_output(base), transformer_output(base))  # the base still works
    finally:
        path.unlink()


def test_an_sd_lora_on_flux_is_refused_before_it_loads(flux_models):
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(1)
    key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    path = flux_models / "loras" / "sd_only.safetensors"
    save_file({f"{key}.lora_A.weight": torch.randn(4, 32, generator=generator),
               f"{key}.lora_B.weight": torch.randn(32, 4, generator=generator)}, str(path))
    try:
        base = load_pipeline(FLUX)
        with pytest.raises(InvalidModelError, match=r"does not fit this base model.*\n  - unet\..*no such component"):
            transformer_output(add_lora(base, "sd_only.safetensors", 1.0))
    finally:
        path.unlink()
