"""TensorRT engines from tiny UNets: parity, profile checks, batch splitting, timing cache, refit.

These need the ``tensorrt`` package and a CUDA GPU; elsewhere they skip and say why.
"""

from __future__ import annotations

import pytest
import torch

from comfyui_backdrop.export.onnx_export import example_inputs, export_unet_onnx
from comfyui_backdrop.export.refit import effective_lora_weights, refit_weights
from comfyui_backdrop.runtime.engines.profile import OutOfProfileError, ShapeProfile
from comfyui_backdrop.runtime.engines.torch_backend import TorchUNetBackend
from tests.fixtures.tiny_unets import add_random_lora, tiny_sd15_unet, tiny_sdxl_unet

trt = pytest.importorskip("tensorrt", reason="the tensorrt package is not installed (GPU machines only)")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT needs a CUDA GPU; none is visible")

PROFILE = ShapeProfile(batch=(1, 2, 3), height=(8, 16, 16), width=(8, 16, 24), tokens=(7, 7, 77))


def build(unet, tmp_path, precision="fp32", refittable=False, profile=PROFILE):
    from comfyui_backdrop.export.tensorrt_build import BuildSettings, build_engine
    from comfyui_backdrop.runtime.engines.tensorrt_backend import TensorRTUNetBackend

    exported = export_unet_onnx(unet, tmp_path / "unet.onnx")
    settings = BuildSettings(precision=precision, refittable=refittable, optimization_level=2,
                             timing_cache_dir=tmp_path / "timing")
    engine = build_engine(exported.path, tmp_path / "unet.engine", exported.spec, profile, settings)
    return exported, TensorRTUNetBackend(engine, exported.spec)


def compare(unet, backend, spec, batch, h, w, tokens=7):
    feeds = example_inputs(spec, batch=batch, latent=(h, w), tokens=tokens, seed=batch)
    args = [feeds[n].cuda() if n in feeds else None
            for n in ("sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids")]
    ref = TorchUNetBackend(unet.cuda()).run(*args)
    out = backend.run(*args)
    return float((ref - out).abs().max()), float(ref.abs().max())


def test_fp32_engine_parity_across_shapes_and_timing_cache(tmp_path):
    unet = tiny_sd15_unet()
    exported, backend = build(unet, tmp_path)
    assert backend.profile == PROFILE
    for batch, h, w in [(1, 8, 8), (2, 16, 24), (3, 16, 8)]:
        err, scale = compare(unet, backend, exported.spec, batch, h, w)
        assert err <= 1e-3 * max(1.0, scale)
    caches = list((tmp_path / "timing").glob("timing_sm*_trt*.cache"))
    assert len(caches) == 1 and caches[0].stat().st_size > 0


def test_fp16_engine_and_batch_splitting(tmp_path):
    unet = tiny_sd15_unet(seed=2)
    exported, backend = build(unet, tmp_path, precision="fp16")
    err, scale = compare(unet, backend, exported.spec, 7, 16, 16)  # 7 rows: chunks of 3, 3 and 1 (padded)
    assert err <= 2e-2 * max(1.0, scale)


def test_out_of_profile_shape_names_the_profile(tmp_path):
    unet = tiny_sd15_unet()
    exported, backend = build(unet, tmp_path)
    feeds = example_inputs(exported.spec, batch=1, latent=(32, 8), tokens=7)
    with pytest.raises(OutOfProfileError, match="latent height 32"):
        backend.run(feeds["sample"].cuda(), feeds["timestep"].cuda(), feeds["encoder_hidden_states"].cuda())


def test_sdxl_engine(tmp_path):
    unet = tiny_sdxl_unet()
    exported, backend = build(unet, tmp_path)
    err, scale = compare(unet, backend, exported.spec, 2, 16, 8)
    assert err <= 1e-3 * max(1.0, scale)


def test_refittable_engine_takes_a_lora_by_name(tmp_path):
    from comfyui_backdrop.export.tensorrt_build import refit_engine

    unet = tiny_sd15_unet(seed=4)
    exported, backend = build(unet, tmp_path, refittable=True)
    styled = tiny_sd15_unet(seed=4)
    add_random_lora(styled, "style", seed=5)
    weights = refit_weights(exported.refit_map, effective_lora_weights(styled))
    assert refit_engine(backend.engine, weights) == len(weights)
    err, scale = compare(styled, backend, exported.spec, 2, 16, 16)
    assert err <= 1e-3 * max(1.0, scale)
