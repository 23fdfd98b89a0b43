"""BackendUNet inside real (tiny) diffusers inpainting pipelines gives the torch UNet's images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_backdrop.export.onnx_export import export_unet_onnx
from comfyui_backdrop.runtime.engines.adapter import BackendUNet
from comfyui_backdrop.runtime.engines.ort_backend import OrtUNetBackend
from comfyui_backdrop.runtime.engines.torch_backend import TorchUNetBackend
from comfyui_backdrop.runtime.errors import InvalidInputError
from tests.fixtures.inpaint_fixtures import build_tiny_pipeline, write_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def inpaint(pipe, seed=0):
    image = torch.linspace(0, 1, 3 * 64 * 64).reshape(1, 3, 64, 64)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 8:40] = 1.0
    with torch.inference_mode():
        out = pipe(prompt="a marble table", negative_prompt="blurry", image=image, mask_image=mask, height=64,
                   width=64, num_inference_steps=2, guidance_scale=5.0, output_type="np",
                   generator=torch.Generator("cpu").manual_seed(seed))
    return np.asarray(out.images)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_engine_unet_gives_the_torch_image(family, tokenizer_dir, tmp_path):
    pipe = build_tiny_pipeline(family, tokenizer_dir, seed=1)
    pipe.set_progress_bar_config(disable=True)
    exported = export_unet_onnx(pipe.unet, tmp_path / "unet.onnx")
    backend = OrtUNetBackend(exported.path, exported.spec, threads=1)
    engine_pipe = type(pipe)(**{**pipe.components, "unet": BackendUNet(backend)})
    engine_pipe.set_progress_bar_config(disable=True)
    reference = inpaint(pipe)
    ours = inpaint(engine_pipe)
    assert ours.shape == reference.shape == (1, 64, 64, 3)
    assert np.abs(ours - reference).max() <= 1e-3
    assert np.abs(inpaint(engine_pipe, seed=1) - ours).max() > 1e-3  # another seed, another image
    if family == "sdxl":
        assert engine_pipe.unet.add_embedding.linear_1.in_features == pipe.unet.add_embedding.linear_1.in_features


def test_adapter_surface_matches_the_unet(tokenizer_dir):
    pipe = build_tiny_pipeline("sd15", tokenizer_dir, seed=2)
    unet = BackendUNet(TorchUNetBackend(pipe.unet))
    assert unet.config.in_channels == 9 and unet.config.sample_size == pipe.unet.config.sample_size
    assert unet.config.time_cond_proj_dim is None
    assert unet.dtype == torch.float32 and unet.device == torch.device("cpu")
    assert unet.to("cpu", torch.bfloat16) is unet and unet.dtype == torch.bfloat16
    unet.to(torch.float32)
    sample, context = torch.randn(2, 9, 8, 8), torch.randn(2, 77, 32)
    out = unet(sample, torch.tensor(7), encoder_hidden_states=context, return_dict=False)[0]
    with torch.inference_mode():
        ref = pipe.unet(sample, 7, context).sample
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.equal(unet(sample, 7, context).sample, out)


def test_features_an_engine_cannot_honour_are_refused(tokenizer_dir):
    unet = BackendUNet(TorchUNetBackend(build_tiny_pipeline("sd15", tokenizer_dir).unet))
    sample, context = torch.randn(1, 9, 8, 8), torch.randn(1, 77, 32)
    with pytest.raises(InvalidInputError, match="down_block_additional_residuals"):
        unet(sample, 1, context, down_block_additional_residuals=(sample,))
    with pytest.raises(InvalidInputError, match="LoRA strengths baked in"):
        unet(sample, 1, context, cross_attention_kwargs={"scale": 0.5})
    assert unet(sample, 1, context, cross_attention_kwargs={"scale": 1.0}, return_dict=False)[0].shape == (1, 4, 8, 8)
