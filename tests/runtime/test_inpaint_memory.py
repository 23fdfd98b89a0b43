"""Memory options of the inpainting loader: an int8 large text encoder (torchao) and offload (GPU only), on the tiny
FLUX.1 Fill pipeline loaded through load_pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.inpainting.generate import InpaintSettings, inpaint_backgrounds
from comfyui_backdrop.runtime.inpainting.loader import load_pipeline
from comfyui_backdrop.runtime.inpainting.memory import MemoryOptions
from tests.fixtures.images import studio_product_photo

FLUX = "diffusers/tiny-flux-fill"
INT8 = MemoryOptions(text_encoder_quant="int8")
PROMPT = "a marble table, soft light"


def _t5_embeddings(handle) -> torch.Tensor:
    with torch.no_grad():
        return handle.pipe.encode_prompt(prompt=PROMPT, prompt_2=PROMPT, device="cpu")[0]


def _param_bytes(module) -> int:
    from torchao.quantization import Int8Tensor

    total = 0
    for p in module.parameters():
        total += p.qdata.numel() + p.scale.numel() * p.scale.element_size() if isinstance(p, Int8Tensor) \
            else p.numel() * p.element_size()
    return total


def test_int8_t5_is_quantised_close_to_fp32_and_kept_apart_in_the_cache(flux_models):
    pytest.importorskip("torchao", reason="the memory extra (torchao) is not installed")
    from torchao.quantization import Int8Tensor

    plain, quantised = load_pipeline(FLUX, device="cpu"), load_pipeline(FLUX, device="cpu", memory=INT8)
    assert plain.pipe is not quantised.pipe and load_pipeline(FLUX, device="cpu", memory=INT8).pipe is quantised.pipe
    t5 = quantised.pipe.text_encoder_2
    linears = [m for m in t5.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m.weight, Int8Tensor) for m in linears)
    assert not any(isinstance(m.weight, Int8Tensor) for m in plain.pipe.text_encoder_2.modules()
                   if isinstance(m, torch.nn.Linear))
    assert not any(isinstance(m.weight, Int8Tensor) for m in quantised.pipe.transformer.modules()
                   if isinstance(m, torch.nn.Linear))  # only the text encoder
    linear_fp32 = sum(m.weight.numel() * 4 for m in plain.pipe.text_encoder_2.modules()
                      if isinstance(m, torch.nn.Linear))
    assert _param_bytes(plain.pipe.text_encoder_2) - _param_bytes(t5) > 0.7 * linear_fp32  # ~1 byte a weight
    reference, approx = _t5_embeddings(plain), _t5_embeddings(quantised)
    error = (approx - reference).abs().max() / reference.abs().max()
    assert 0 < error < 2e-2, f"int8 T5 embeddings differ by {error:.2e} of their range"


def test_inpainting_with_the_int8_t5_keeps_the_product_exact(flux_models):
    pytest.importorskip("torchao", reason="the memory extra (torchao) is not installed")
    image, mask = studio_product_photo(77, 101, seed=5)
    image = image.astype(np.float32) / 255.0
    settings = InpaintSettings(prompt=PROMPT, steps=2, resolution=128, cfg=30.0)
    out = inpaint_backgrounds(load_pipeline(FLUX, device="cpu", memory=INT8), [image], [mask], settings).images[0]
    product = mask >= 0.5
    assert np.array_equal(out[product], image[product]) and np.abs(out[~product] - image[~product]).mean() > 0.02


def test_offload_without_a_gpu_and_int8_on_sd_are_refused(flux_models):
    with pytest.raises(InvalidInputError, match="--offload model moves models between CPU memory and a GPU"):
        load_pipeline(FLUX, device="cpu", memory=MemoryOptions(offload="model"))
    with pytest.raises(InvalidInputError, match="unknown offload 'disk'"):
        MemoryOptions(offload="disk").check()
    with pytest.raises(InvalidInputError, match="sd15's CLIP encoders are small"):
        MemoryOptions(text_encoder_quant="int8").check("sd15", "cpu")


def test_backdrop_run_refuses_offload_on_the_cpu_before_any_photo(flux_models, tmp_path, capsys):
    from comfyui_backdrop.cli.main import main
    from comfyui_backdrop.runtime.imaging import write_image

    photo, _ = studio_product_photo(64, 80, seed=1)
    write_image(tmp_path / "p.png", photo.astype(np.float32) / 255.0)
    code = main(["run", str(tmp_path / "p.png"), "--out", str(tmp_path / "out"), "--models-dir", str(flux_models),
                 "--checkpoint", FLUX, "--device", "cpu", "--offload", "sequential", "--quiet"])
    assert code == 2 and "--offload sequential moves models" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.png"))
