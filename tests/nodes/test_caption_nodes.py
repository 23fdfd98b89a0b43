"""BackdropCaptionerLoader, BackdropCaption and BackdropStylePrompt as ComfyUI calls them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_backdrop.nodes import NODE_CLASS_MAPPINGS
from comfyui_backdrop.nodes.captioning import BackdropCaption, BackdropCaptionerLoader, BackdropStylePrompt
from comfyui_backdrop.runtime.captioning.captioner import Captioner
from comfyui_backdrop.runtime.errors import InvalidInputError, InvalidModelError
from comfyui_backdrop.runtime.models import ModelLocator, set_locator
from tests.conftest import use_node_host
from tests.fixtures.caption_fixtures import build_tiny_blip, build_tiny_qwen2_vl, build_tiny_remote_code_vlm
from tests.fixtures.images import studio_product_photo

CAPTION_WIDGETS = ["image", "task", "custom_instruction", "max_new_tokens", "num_beams", "sampling", "temperature",
                   "top_p", "seed"]
CAPTION_DEFAULTS = {"task": "canvas_scene", "custom_instruction": "", "max_new_tokens": 8, "num_beams": 1,
                    "sampling": False, "temperature": 0.7, "top_p": 0.9, "seed": 0}


@pytest.fixture(scope="module")
def llm_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("node-models") / "models"
    build_tiny_blip(root / "LLM" / "tiny-blip")
    build_tiny_qwen2_vl(root / "LLM" / "tiny-qwen2-vl")
    build_tiny_remote_code_vlm(root / "LLM" / "tiny-remote")
    set_locator(ModelLocator.from_models_dir(root))
    yield root
    set_locator(None)


@pytest.fixture()
def progress_calls(monkeypatch):
    calls: list[tuple[int, int]] = []
    use_node_host(monkeypatch, progress_factory=lambda total: lambda d, t: calls.append((d, t)))
    return calls


def _batch(count: int):
    shots = [studio_product_photo(72, 96, seed=s) for s in range(count)]
    images = torch.from_numpy(np.stack([img for img, _ in shots]).astype(np.float32) / 255.0)
    masks = torch.from_numpy(np.stack([m for _, m in shots]).astype(np.float32))
    return images, masks


def test_nodes_are_registered_with_stable_widget_order():
    for node_id in ("BackdropCaptionerLoader", "BackdropCaption", "BackdropStylePrompt"):
        assert node_id in NODE_CLASS_MAPPINGS and NODE_CLASS_MAPPINGS[node_id].CATEGORY == "Backdrop/captioning"
    assert list(BackdropCaption.INPUT_TYPES()["required"]) == CAPTION_WIDGETS
    assert list(BackdropCaption.INPUT_TYPES()["optional"]) == ["captioner", "product_mask"]
    assert list(BackdropStylePrompt.INPUT_TYPES()["required"]) == ["product_caption", "style", "composition",
                                                                   "scene", "long_prompt"]
    assert BackdropCaption.OUTPUT_IS_LIST == (True, True)
    assert BackdropCaptionerLoader.RETURN_TYPES == ("BACKDROP_CAPTIONER",)
    assert BackdropStylePrompt.RETURN_TYPES == ("STRING", "STRING", "STRING")


def test_loader_lists_only_folders_and_loads_them(llm_models):
    spec = BackdropCaptionerLoader.INPUT_TYPES()["required"]
    assert spec["model"][0] == ["tiny-blip", "tiny-qwen2-vl", "tiny-remote"]
    assert list(spec) == ["model", "device", "dtype", "allow_remote_code"]
    assert spec["allow_remote_code"][1]["default"] is False and "WARNING" in spec["allow_remote_code"][1]["tooltip"]
    (captioner,) = BackdropCaptionerLoader().load("tiny-qwen2-vl", "cpu", "fp32", False)
    assert isinstance(captioner, Captioner) and captioner.family == "qwen_vl"
    with pytest.raises(InvalidModelError, match="allow_remote_code"):
        BackdropCaptionerLoader().load("tiny-remote", "auto", "auto", False)


@pytest.mark.parametrize("count", [1, 3])
def test_caption_gives_one_caption_per_image_as_lists(llm_models, progress_calls, count):
    (captioner,) = BackdropCaptionerLoader().load("tiny-blip", "cpu", "auto", False)
    images, masks = _batch(count)
    before = images.clone(), masks.clone()
    product, background = BackdropCaption().caption(images, **CAPTION_DEFAULTS, captioner=captioner,
                                                    product_mask=masks)
    assert isinstance(product, list) and isinstance(background, list)
    assert len(product) == len(background) == count
    assert all(isinstance(p, str) and p.startswith("a product photo of") for p in product)
    assert all(isinstance(b, str) and b.startswith("a photo of") for b in background)
    assert progress_calls == [(i, count) for i in range(1, count + 1)]
    assert torch.equal(images, before[0]) and torch.equal(masks, before[1])


def test_caption_without_captioner_uses_statistics_and_broadcasts_one_mask(progress_calls):
    images, masks = _batch(2)
    product, background = BackdropCaption().caption(images, **CAPTION_DEFAULTS, product_mask=masks[:1])
    assert len(product) == len(background) == 2
    assert all("product" in p and "background" in b for p, b in zip(product, background, strict=True))
    assert progress_calls == [(1, 2), (2, 2)]
    product_only, _ = BackdropCaption().caption(images[:1], **CAPTION_DEFAULTS)
    assert len(product_only) == 1 and product_only[0].startswith("a product in ")


def test_seeded_sampling_in_the_node_is_deterministic(llm_models):
    (captioner,) = BackdropCaptionerLoader().load("tiny-qwen2-vl", "cpu", "auto", False)
    images, masks = _batch(1)
    settings = {**CAPTION_DEFAULTS, "sampling": True, "temperature": 1.0, "seed": 11}
    first = BackdropCaption().caption(images, **settings, captioner=captioner, product_mask=masks)
    assert BackdropCaption().caption(images, **settings, captioner=captioner, product_mask=masks) == first


def test_caption_errors(llm_models):
    empty = torch.zeros((0, 64, 64, 3))
    with pytest.raises(InvalidInputError, match="empty"):
        BackdropCaption().caption(empty, **CAPTION_DEFAULTS)
    images, _ = _batch(1)
    with pytest.raises(InvalidInputError, match="custom_instruction"):
        BackdropCaption().caption(images, **{**CAPTION_DEFAULTS, "task": "custom"})


def test_style_prompt_outputs_plug_into_clip_text_encode():
    positive, negative, report = BackdropStylePrompt().compose("a green bottle.", "Soft Spring", "flat lay",
                                                               "on linen", "warn")
    assert all(isinstance(v, str) for v in (positive, negative, report))
    assert positive.startswith("a green bottle, on linen, flat lay")
    assert "harsh shadows" in negative and "CLIP tokens" in report
    long_caption = "a very long caption about a bottle " * 12
    _, _, warn_report = BackdropStylePrompt().compose(long_caption, "Glam", "lifestyle", "", "warn")
    assert "77-token window" in warn_report
    trimmed, _, trim_report = BackdropStylePrompt().compose(long_caption, "Glam", "lifestyle", "", "trim",
                                                            background_caption="a dim hall")
    assert "trimmed to 75 tokens" in trim_report and len(trimmed) < len(long_caption)
