"""w8a8 OpenVINO engines (static int8 weights and activations): the int8 units run the convolutions and linear
layers, the output stays in w8a8's error class (1e-1 max relative error against fp32 torch), the calibration is
captured from real pipeline runs (and is part of the cache key), and a whole pipeline on w8a8 engines keeps the
product pixels exact."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from comfyui_backdrop.export.calibration import (
    RANDOM_LABEL,
    Calibration,
    CapturePlan,
    capture_unet_inputs,
    random_unet_inputs,
)
from comfyui_backdrop.export.engine_export import BaseIdentity, EngineRequest, export_engine, export_pipeline_engine
from comfyui_backdrop.export.onnx_export import example_inputs
from comfyui_backdrop.runtime.engines.load import open_backend
from comfyui_backdrop.runtime.engines.manifest import read_manifest
from comfyui_backdrop.runtime.engines.openvino_backend import DEEP_FEATURES, OpenVinoUNetBackend
from comfyui_backdrop.runtime.engines.precision import ERROR_CLASS, float_part
from comfyui_backdrop.runtime.engines.spec import CONTEXT, SAMPLE, TIMESTEP, UNetSpec
from comfyui_backdrop.runtime.engines.torch_backend import TorchUNetBackend
from comfyui_backdrop.runtime.errors import InvalidInputError
from tests.fixtures.tiny_unets import tiny_sd15_unet, tiny_sdxl_unet

pytest.importorskip("openvino", reason="the cpu-engines extra (openvino) is not installed")
pytest.importorskip("nncf", reason="w8a8 engines need NNCF (the cpu-engines extra)")
BASE = BaseIdentity(name="checkpoints/tiny.safetensors", fingerprint="tinyfp")
CALL = ("sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids")
SD15 = "checkpoints/tiny-sd15-inpaint.safetensors"


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


def int8_layers(report: dict) -> list[str]:
    """Convolution / FullyConnected primitives that ran on int8 kernels (oneDNN names them ..._I8 / ..._i8)."""
    return [k for k in report["primitives"] if k.startswith(("Convolution:", "FullyConnected:"))
            and k.lower().endswith(("_i8", "i8"))]


@pytest.fixture(scope="module")
def unet():
    return tiny_sd15_unet()


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_w8a8_unet_runs_int8_kernels_within_its_class(unet, tmp_path, family):
    if family == "sdxl":  # text_time embeddings: text_embeds and time ids are inputs too
        unet = tiny_sdxl_unet()
    result = export_engine(unet, BASE, EngineRequest(format="openvino", precision="w8a8"), tmp_path)
    backend = open_backend(result.path)
    assert isinstance(backend, OpenVinoUNetBackend) and backend.name == "openvino-w8a8"
    feeds = example_inputs(backend.spec, batch=2, seed=5)
    call = [feeds.get(n) for n in CALL]
    original = {n: t.clone() for n, t in feeds.items()}
    out, ref = backend.run(*call), TorchUNetBackend(unet).run(*call)
    err = rel_error(out, ref)
    print(f"w8a8 {family}: max rel err {err:.2e}")
    assert 1e-3 < err <= ERROR_CLASS["w8a8"], err  # really quantized, and inside its class
    assert all(torch.equal(feeds[n], original[n]) for n in feeds)  # inputs untouched
    report = backend.kernels()
    assert int8_layers(report), report["primitives"]  # the int8 dot-product units ran
    assert report["applied_precision"] == {"bf16": "bf16", "fp32": "f32"}[float_part("w8a8")]
    extra = result.manifest.extra
    assert extra["calibration"] == RANDOM_LABEL and extra["calibration_inputs"] == 6
    shallow = read_manifest(result.path.with_name(extra["shallow"]))  # the feature cache's graph is w8a8 too
    assert shallow.precision == "w8a8" and shallow.extra["calibration_inputs"] == 6


def test_calibration_is_part_of_the_cache_key_and_only_captured_when_building(unet, tmp_path):
    spec = UNetSpec.from_unet(unet)
    calls = []

    def source():
        calls.append(1)
        return random_unet_inputs(spec, count=2, latent=(8, 8), first_seed=40)

    request = EngineRequest(format="openvino", precision="w8a8")
    first = export_engine(unet, BASE, request, tmp_path, calibration=Calibration("two sets", source))
    again = export_engine(unet, BASE, request, tmp_path, calibration=Calibration("two sets", source))
    other = export_engine(unet, BASE, request, tmp_path, calibration=Calibration("other", source))
    assert not first.cached and again.cached and again.path == first.path and calls == [1, 1]
    assert not other.cached and other.path != first.path and other.manifest.key != first.manifest.key
    with pytest.raises(InvalidInputError, match="calibration inputs"):
        export_engine(unet, BASE, request, tmp_path, calibration=Calibration("none", list))


def test_capture_records_the_unet_inputs_of_real_runs(inpaint_models):
    from comfyui_backdrop.runtime.inpainting.loader import load_pipeline

    handle = load_pipeline(SD15)
    plan = CapturePlan(styles=2, steps=3, max_resolution=128)
    seen = []
    sets = capture_unet_inputs(handle, plan, progress=lambda done, total: seen.append((done, total)))
    assert len(sets) == plan.styles * plan.steps
    assert seen[-1] == (6, 6) and [d for d, _ in seen] == sorted(d for d, _ in seen)  # one bar over both runs
    spec = UNetSpec.from_unet(handle.denoiser)
    for inputs in sets:
        assert list(inputs) == [*spec.input_names, DEEP_FEATURES]
        assert inputs[SAMPLE].shape == (2, 9, 16, 16)  # CFG batch, latents + mask + masked image, 128 px
        assert inputs[DEEP_FEATURES].shape[0] == 2  # the hidden state entering the last up block, same call
        assert inputs[TIMESTEP].shape == (2,) and inputs[CONTEXT].shape[:2] == (2, 77)
    assert len({float(s[TIMESTEP][0]) for s in sets}) == plan.steps  # spread over the schedule
    assert not torch.equal(sets[0][CONTEXT], sets[plan.steps][CONTEXT])  # each style its own prompt
    assert not handle.denoiser._forward_pre_hooks and not handle.denoiser.up_blocks[-2]._forward_hooks


def test_a_flux_transformer_is_refused_w8a8_with_a_reason_and_auto_gives_it_int8_weights():
    from comfyui_backdrop.cli.run_plan import flux_engine_request
    from comfyui_backdrop.export.engine_export import check_flux_request

    with pytest.raises(InvalidInputError, match="SD1.5/SDXL UNets"):
        check_flux_request(EngineRequest(format="openvino", precision="w8a8"))
    # `backdrop run --engine auto` with a bench choice of w8a8 (measured on the SD UNet) and a FLUX checkpoint
    assert flux_engine_request(EngineRequest(format="openvino", precision="w8a8")).precision == "int8"
    check_flux_request(flux_engine_request(EngineRequest(format="openvino", precision="w8a8")))


def test_whole_pipeline_on_w8a8_engines_keeps_the_product_exact(inpaint_models, product_photo):
    from comfyui_backdrop.export.attach import attach_engine
    from comfyui_backdrop.runtime.inpainting.generate import InpaintSettings, inpaint_backgrounds
    from comfyui_backdrop.runtime.inpainting.loader import load_pipeline

    handle = load_pipeline(SD15)
    plan = CapturePlan(styles=2, steps=2, max_resolution=128)  # the default's 3 x 4 runs at 512 px, scaled down
    result = export_pipeline_engine(handle, EngineRequest(format="openvino", precision="w8a8"), components=True,
                                    plan=plan)
    assert result.manifest.extra["calibration"] == plan.label
    assert result.manifest.extra["calibration_inputs"] == plan.styles * plan.steps
    parts = {p.name.split("_sd15")[0]: read_manifest(p) for p in result.path.parent.glob("*_sd15_inpaint_w8a8_*.xml")}
    assert parts["vae_decoder"].precision == float_part("w8a8")  # the parts run in the float layers' precision
    on_engines = attach_engine(handle, result.path, threads=1, components=True)
    assert on_engines.pipe.unet.backend.name == "openvino-w8a8"
    image, mask = product_photo
    image, mask = image.astype(np.float32) / 255.0, mask.astype(np.float32)
    settings = InpaintSettings(prompt="a marble table, soft light", steps=2, resolution=128, seed=3)
    reference = inpaint_backgrounds(handle, [image], [mask], settings).images[0]
    ours = inpaint_backgrounds(on_engines, [image], [mask], settings).images[0]
    other_seed = inpaint_backgrounds(handle, [image], [mask], dataclasses.replace(settings, seed=4)).images[0]
    background = mask < 0.5
    ours_off, seed_off = (np.abs(x - reference)[background].mean() for x in (ours, other_seed))
    print(f"w8a8 {ours_off:.4f} {np.abs(ours - reference).max():.4f}, other seed {seed_off:.4f}")
    assert 0 < ours_off <= seed_off / 3  # the same picture, not another one
    product = mask >= 0.5
    assert np.array_equal(ours[product], image[product])
