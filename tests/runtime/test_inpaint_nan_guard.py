"""A model that overflows (NaN/inf) is an error that says what to change, never a silent black image.

The broken models are tiny SD1.5 inpainting pipelines built with the real diffusers classes, with one
weight set to NaN or -inf (what an fp16 overflow leaves behind), saved as diffusers folders and
loaded back through ``load_pipeline``. The session's shared tiny models are not touched.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from comfyui_backdrop.runtime.errors import InvalidModelError
from comfyui_backdrop.runtime.inpainting.generate import InpaintSettings, inpaint_backgrounds, non_finite_message
from comfyui_backdrop.runtime.inpainting.loader import load_pipeline
from comfyui_backdrop.runtime.models import MODEL_CACHE, ModelLocator, set_locator
from tests.fixtures.inpaint_fixtures import build_tiny_pipeline, write_tiny_tokenizer

FAST = InpaintSettings(prompt="a marble table", steps=2, resolution=128)


def _poison_vae_nan(pipe) -> None:
    pipe.vae.decoder.mid_block.resnets[0].conv1.weight[0, 0, 0, 0] = float("nan")


def _poison_vae_black(pipe) -> None:
    pipe.vae.decoder.conv_out.bias.fill_(float("-inf"))  # an overflow to -inf: clamped to 0 by diffusers


def _poison_unet_nan(pipe) -> None:
    pipe.unet.conv_out.bias[0] = float("nan")


BROKEN = {"nan-vae": _poison_vae_nan, "black-vae": _poison_vae_black, "nan-unet": _poison_unet_nan}


@pytest.fixture(scope="module")
def broken_models_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken") / "models"
    tokenizer = write_tiny_tokenizer(root.parent / "clip_tokenizer")
    for name, poison in (("healthy", None), *BROKEN.items()):
        pipe = build_tiny_pipeline("sd15", tokenizer, seed=0)
        if poison is not None:
            with torch.no_grad():
                poison(pipe)
        pipe.save_pretrained(root / "diffusers" / name)
    yield root
    MODEL_CACHE.free(lambda key: str(root) in str(key))


@pytest.fixture()
def broken_models(broken_models_root):
    set_locator(ModelLocator.from_models_dir(broken_models_root))
    yield broken_models_root
    set_locator(None)


@pytest.fixture()
def photo(product_photo):
    image, mask = product_photo
    return image.astype(np.float32) / 255.0, mask.astype(np.float32)


@pytest.mark.parametrize(("model", "stage"), [("nan-vae", "VAE decode (NaN"), ("black-vae", "all-black"),
                                              ("nan-unet", "UNet's latents at step 1")])
def test_overflow_is_an_error_naming_the_stage_and_the_dtype_fix(broken_models, photo, model, stage):
    image, mask = photo
    untouched = image.copy()
    handle = load_pipeline(f"diffusers/{model}")
    with pytest.raises(InvalidModelError) as caught:
        inpaint_backgrounds(handle, [image], [mask], FAST)
    message = str(caught.value)
    assert stage in message
    assert f"diffusers/{model}" in message and "fp32 on cpu" in message
    assert "dtype" in message and "--dtype" in message and "sdxl-vae-fp16-fix" in message
    assert np.array_equal(image, untouched)


def test_bf16_overflow_advises_fp32(broken_models, photo):
    image, mask = photo
    handle = load_pipeline("diffusers/nan-vae", device="cpu", dtype="bf16")
    with pytest.raises(InvalidModelError, match="running in bf16 on cpu; .*Set dtype to fp32"):
        inpaint_backgrounds(handle, [image], [mask], FAST)


def test_fp16_advice_names_bf16_fp32_and_a_fixed_vae(broken_models):
    handle = load_pipeline("diffusers/healthy")
    fp16 = dataclasses.replace(handle, dtype=torch.float16, device=torch.device("cuda"))  # as loaded on a GPU
    message = non_finite_message(fp16, "the VAE decode")
    assert "running in fp16 on cuda" in message
    assert "Set dtype to bf16 or fp32" in message and "Backdrop Inpaint Loader" in message
    assert "madebyollin's sdxl-vae-fp16-fix" in message


def test_a_healthy_model_still_generates(broken_models, photo):
    image, mask = photo
    out = inpaint_backgrounds(load_pipeline("diffusers/healthy"), [image], [mask], FAST).images[0]
    assert np.isfinite(out).all()
    product = mask >= 0.5
    assert np.array_equal(out[product], image[product])
    assert np.abs(out[~product] - image[~product]).mean() > 0.02


def test_overflow_inside_an_engine_names_the_engine(broken_models, photo):
    from comfyui_backdrop.export.attach import attach_engine
    from comfyui_backdrop.export.engine_export import EngineRequest, export_pipeline_engine
    from comfyui_backdrop.runtime.engines.profile import ShapeProfile
    from comfyui_backdrop.runtime.models import get_locator

    image, mask = photo
    handle = load_pipeline("diffusers/nan-unet")
    request = EngineRequest(format="onnx", precision="fp32",
                            profile=ShapeProfile.from_resolutions([(128, 128)], batch=(1, 2, 2)))
    engine = export_pipeline_engine(handle, request, get_locator())
    on_engine = attach_engine(handle, engine.path, provider="cpu", threads=1)
    with pytest.raises(InvalidModelError, match=r"UNet's latents at step 1 .* runs on the onnxruntime-cpu engine"):
        inpaint_backgrounds(on_engine, [image], [mask], FAST)
