"""Engines inside loaded pipelines: same images as torch, LoRA stacks refit by name, clear refusals.

Uses the tiny SD1.5/SDXL models and LoRAs the inpainting tests load through the real loaders, and the
two ComfyUI nodes exactly as ComfyUI calls them.
"""

from __future__ import annotations

import numpy as np
import pytest

from comfyui_backdrop.export.attach import attach_engine
from comfyui_backdrop.nodes.engines import BackdropExportEngine, BackdropLoadEngine, engine_choices
from comfyui_backdrop.runtime.engines.adapter import BackendUNet
from comfyui_backdrop.runtime.engines.manifest import read_manifest
from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.inpainting.generate import InpaintSettings, inpaint_backgrounds
from comfyui_backdrop.runtime.inpainting.loader import load_pipeline
from comfyui_backdrop.runtime.inpainting.loras import add_lora

SD15 = "checkpoints/tiny-sd15-inpaint.safetensors"
FAST = InpaintSettings(prompt="a marble table, soft light", steps=2, resolution=128, seed=3)
TOL = 2e-3  # image space, 0..1


@pytest.fixture()
def photo(product_photo):
    image, mask = product_photo
    return image.astype(np.float32) / 255.0, mask.astype(np.float32)


def generate(handle, photo):
    image, mask = photo
    return inpaint_backgrounds(handle, [image], [mask], FAST).images[0]


def export_node(handle, **widgets):
    defaults = {"format": "onnx", "precision": "auto", "resolutions": "128x128", "images_per_batch": 1,
                "onnx_target": "portable (refittable, TensorRT input)", "refittable": False,
                "optimization_level": 3}
    return BackdropExportEngine().export(handle, **{**defaults, **widgets})[0]


def load_node(handle, engine):
    return BackdropLoadEngine().load(handle, engine=engine, provider="auto", threads=1)[0]


def test_nodes_export_then_load_give_the_torch_image(inpaint_models, photo):
    handle = load_pipeline(SD15)
    engine = export_node(handle)
    assert engine.startswith("onnx/unet_sd15_inpaint_fp32_") and engine in engine_choices()
    assert export_node(handle) == engine  # same pipeline, stack and sizes: the cached engine
    on_engine = load_node(handle, engine)
    assert isinstance(on_engine.pipe.unet, BackendUNet) and on_engine.pipe is not handle.pipe
    assert handle.pipe.unet.__class__.__name__ == "UNet2DConditionModel"  # the input pipeline is untouched
    reference, ours = generate(handle, photo), generate(on_engine, photo)
    assert np.abs(ours - reference).max() <= TOL


def test_lora_stack_is_refit_into_a_base_engine(inpaint_models, photo):
    handle = load_pipeline(SD15)
    engine = export_node(handle)
    styled = add_lora(handle, "style_a.safetensors", 0.8)
    reference = generate(styled, photo)
    assert np.abs(reference - generate(handle, photo)).max() > 10 * TOL  # the LoRA is visible
    ours = generate(load_node(styled, engine), photo)
    assert np.abs(ours - reference).max() <= TOL


def test_engine_with_a_fused_lora_serves_its_stack_and_can_be_refit_back(inpaint_models, photo):
    handle = load_pipeline(SD15)
    styled = add_lora(handle, "style_b.safetensors", 1.0)
    engine = export_node(styled)
    manifest = read_manifest(inpaint_models / engine)
    assert [name for name, _, _ in manifest.loras] == ["style_b.safetensors"]
    assert np.abs(generate(load_node(styled, engine), photo) - generate(styled, photo)).max() <= TOL
    # the base pipeline on the same engine: every layer is refit back to the base weights
    assert np.abs(generate(load_node(handle, engine), photo) - generate(handle, photo)).max() <= TOL


def test_optimized_engine_refuses_another_lora_stack(inpaint_models):
    handle = load_pipeline(SD15)
    engine = export_node(handle, onnx_target="cpu (onnxruntime fused + Winograd)")
    assert not read_manifest(inpaint_models / engine).refit_map
    styled = add_lora(handle, "style_a.safetensors", 1.0)
    with pytest.raises(InvalidInputError, match=r"style_a.safetensors@1.*refittable"):
        load_node(styled, engine)


def test_engine_from_another_model_is_refused(inpaint_models):
    sd15 = load_pipeline(SD15)
    engine = export_node(sd15)
    sdxl = load_pipeline("checkpoints/tiny-sdxl-inpaint.safetensors")
    with pytest.raises(InvalidInputError, match="does not fit this pipeline"):
        attach_engine(sdxl, inpaint_models / engine)
    base4 = load_pipeline("checkpoints/tiny-sd15-base.safetensors")
    with pytest.raises(InvalidInputError, match="in_channels: engine 9, pipeline 4"):
        attach_engine(base4, inpaint_models / engine)

