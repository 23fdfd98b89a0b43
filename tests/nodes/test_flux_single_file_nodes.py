"""Backdrop Inpaint Loader with FLUX single files: the new names in the model combo, the optional part widgets."""

from __future__ import annotations

import pytest

from comfyui_backdrop.nodes.inpainting import BackdropInpaintLoader
from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.inpainting.loader import load_pipeline
from tests.fixtures.flux_single_file_fixtures import CHECKPOINT_FILE, FILL_FILE, KONTEXT_FILE


def test_the_loader_lists_single_files_and_appends_optional_part_widgets(flux_sf):
    inputs = BackdropInpaintLoader.INPUT_TYPES()
    assert list(inputs["required"]) == ["model", "device", "dtype"]  # saved workflows keep their positions
    assert list(inputs["optional"]) == ["clip_l", "t5xxl", "vae", "offload", "text_encoder_quant"]
    models_combo = inputs["required"]["model"][0]
    assert {f"diffusion_models/{FILL_FILE}", f"diffusion_models/{KONTEXT_FILE}", f"checkpoints/{CHECKPOINT_FILE}",
            "diffusers/tiny-flux-fill"} <= set(models_combo)
    assert inputs["optional"]["t5xxl"][0] == ["auto", "clip_l.safetensors", "t5xxl_fp16.safetensors"]
    assert inputs["optional"]["vae"][0] == ["auto", "ae.safetensors"]
    for name in ("clip_l", "t5xxl", "vae"):
        assert inputs["optional"][name][1]["default"] == "auto" and inputs["optional"][name][1]["tooltip"], name
    assert inputs["optional"]["offload"][0] == ["none", "model", "sequential"]
    assert inputs["optional"]["text_encoder_quant"][0] == ["none", "int8"]
    assert BackdropInpaintLoader.VALIDATE_INPUTS(f"unet/{FILL_FILE}") is not True  # not in models/unet here
    assert BackdropInpaintLoader.VALIDATE_INPUTS(f"diffusion_models/{FILL_FILE}") is True


def test_the_node_loads_the_named_parts_and_refuses_them_for_an_sd_model(flux_sf):
    (handle,) = BackdropInpaintLoader().load(f"diffusion_models/{FILL_FILE}", "cpu", "auto",
                                             clip_l="clip_l.safetensors", t5xxl="t5xxl_fp16.safetensors",
                                             vae="ae.safetensors")
    assert handle.family == "flux-fill"
    assert handle.pipe is load_pipeline(f"diffusion_models/{FILL_FILE}", device="cpu").pipe  # auto picks the same
    (folder,) = BackdropInpaintLoader().load("diffusers/tiny-flux-fill", "cpu", "auto", vae="ae.safetensors")
    assert folder.family == "flux-fill"  # a diffusers folder brings its own parts: the widget is ignored
    with pytest.raises(InvalidInputError, match="only for FLUX single files"):
        load_pipeline("diffusers/tiny-flux-fill", device="cpu", vae="ae.safetensors")
