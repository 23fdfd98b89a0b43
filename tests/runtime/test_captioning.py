"""Captioners: tiny BLIP / Qwen2-VL / Florence-2 folders loaded through the real loader, the weight-free
fallback, the product/background views, determinism and clear errors."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import torch

from comfyui_backdrop.runtime.captioning.captioner import GenerationSettings
from comfyui_backdrop.runtime.captioning.fallback import fallback_captions
from comfyui_backdrop.runtime.captioning.loader import free_captioners, load_captioner, resolve_dtype
from comfyui_backdrop.runtime.captioning.pipeline import caption_for_run, caption_images
from comfyui_backdrop.runtime.captioning.tasks import TASKS, instructions_for
from comfyui_backdrop.runtime.captioning.views import background_view, product_box, product_view
from comfyui_backdrop.runtime.errors import InvalidInputError, InvalidModelError, MissingModelError
from comfyui_backdrop.runtime.models import MODEL_CACHE, ModelLocator
from tests.fixtures.caption_fixtures import (
    build_llm_dir,
    build_text_only_model,
    build_tiny_remote_code_vlm,
)
from tests.fixtures.images import studio_product_photo, to_float

FAMILIES = {"tiny-blip": ("blip", "BlipForConditionalGeneration"),
            "tiny-blip2": ("blip2", "Blip2ForConditionalGeneration"),
            "tiny-qwen2-vl": ("qwen_vl", "Qwen2VLForConditionalGeneration"),
            "tiny-qwen2.5-vl": ("qwen_vl", "Qwen2_5_VLForConditionalGeneration"),
            "tiny-florence2": ("florence2", "Florence2ForConditionalGeneration")}
QUICK = GenerationSettings(max_new_tokens=6, num_beams=1)


@pytest.fixture(scope="session")
def llm_root(tmp_path_factory):
    return build_llm_dir(tmp_path_factory.mktemp("caption-models") / "models")


@pytest.fixture(scope="session")
def locator(llm_root):
    return ModelLocator.from_models_dir(llm_root)


@pytest.fixture(scope="session")
def photo():
    image, mask = studio_product_photo(96, 128, seed=1)
    return to_float(image), mask.astype(np.float32)


@pytest.fixture()
def scratch(tmp_path, llm_root):
    """A models dir of its own, with a copy of tiny-blip to break."""
    root = tmp_path / "models"
    shutil.copytree(llm_root / "LLM" / "tiny-blip", root / "LLM" / "blip-copy")
    return root


class GenerateSpy:
    """Wraps a model's real ``generate`` and keeps the input_ids it was called with."""

    def __init__(self, generate):
        self._generate = generate
        self.input_ids: list[torch.Tensor] = []

    def __call__(self, **kwargs):
        self.input_ids.append(kwargs["input_ids"].clone())
        return self._generate(**kwargs)


# ------------------------------------------------------------------------------------------- loading

@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_loads_through_the_real_loader_and_captions(name, locator, photo):
    captioner = load_captioner(name, device="cpu", dtype="auto", locator=locator)
    family, model_class = FAMILIES[name]
    assert captioner.family == family
    assert type(captioner.model).__name__ == model_class
    assert captioner.dtype == torch.float32 and next(captioner.model.parameters()).device.type == "cpu"
    pairs = caption_images([photo[0]], [photo[1]], captioner, settings=QUICK)
    assert len(pairs) == 1 and pairs[0].source == name
    assert isinstance(pairs[0].product, str) and isinstance(pairs[0].background, str)
    assert "\n" not in pairs[0].product + pairs[0].background


def test_loaded_models_are_cached_until_freed(locator):
    first = load_captioner("tiny-blip", device="cpu", locator=locator)
    assert load_captioner("tiny-blip", device="cpu", locator=locator) is first
    assert load_captioner("tiny-blip", device="cpu", dtype="bf16", locator=locator) is not first
    assert free_captioners() >= 2
    assert not any(isinstance(k, tuple) and k[0] == "captioner" for k in MODEL_CACHE._items)
    assert load_captioner("tiny-blip", device="cpu", locator=locator) is not first


def test_bf16_is_honoured_and_fp16_falls_back_to_fp32_on_cpu(locator, photo):
    captioner = load_captioner("tiny-blip", device="cpu", dtype="bf16", locator=locator)
    assert next(captioner.model.parameters()).dtype == torch.bfloat16
    assert isinstance(caption_images([photo[0]], None, captioner, settings=QUICK)[0].background, str)
    assert resolve_dtype("fp16", "cpu") == torch.float32
    assert resolve_dtype("auto", "cpu") == torch.float32
    with pytest.raises(InvalidInputError, match="dtype"):
        load_captioner("tiny-blip", dtype="fp8", locator=locator)
    with pytest.raises(InvalidInputError, match="device"):
        load_captioner("tiny-blip", device="tpu", locator=locator)
    free_captioners()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error for a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(locator):
    with pytest.raises(InvalidInputError, match="CUDA"):
        load_captioner("tiny-blip", device="cuda", locator=locator)


# ------------------------------------------------------------------------------------------- prompts

@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def test_qwen_gets_the_canvas_instruction_in_its_chat_template(name, locator, photo, monkeypatch):
    captioner = load_captioner(name, device="cpu", locator=locator)
    spy = GenerateSpy(captioner.model.generate)
    monkeypatch.setattr(captioner.model, "generate", spy)
    caption_images([photo[0]], [photo[1]], captioner, task="canvas_scene", settings=QUICK)
    product_text, background_text = (captioner.processor.decode(ids[0]) for ids in spy.input_ids)
    assert "Describe the product in this photo" in product_text
    assert "Describe the scene around the product, not the product itself" in background_text
    assert background_text.startswith("<|im_start|>user")
    assert background_text.endswith("<|im_start|>assistant\n")
    assert "<|image_pad|>" in background_text

    spy.input_ids.clear()
    caption_images([photo[0]], None, captioner, task="custom", custom_instruction="Name the wall colour.",
                   settings=QUICK)
    assert "Name the wall colour." in captioner.processor.decode(spy.input_ids[1][0])


def test_florence_gets_its_task_tokens(locator, photo, monkeypatch):
    captioner = load_captioner("tiny-florence2", device="cpu", locator=locator)
    spy = GenerateSpy(captioner.model.generate)
    monkeypatch.setattr(captioner.model, "generate", spy)
    caption_images([photo[0]], [photo[1]], captioner, task="canvas_scene", settings=QUICK)
    product_text, background_text = (captioner.processor.decode(ids[0]) for ids in spy.input_ids)
    assert "What does the image describe?" in product_text  # <CAPTION>
    assert "Describe with a paragraph what is shown in the image." in background_text  # <MORE_DETAILED_CAPTION>


def test_blip2_gets_a_question_and_returns_only_the_answer(locator, photo, monkeypatch):
    captioner = load_captioner("tiny-blip2", device="cpu", locator=locator)
    spy = GenerateSpy(captioner.model.generate)
    monkeypatch.setattr(captioner.model, "generate", spy)
    pair = caption_images([photo[0]], [photo[1]], captioner, settings=QUICK)[0]
    background_text = captioner.processor.decode(spy.input_ids[1][0])
    assert background_text.endswith("Question: Describe the scene around the product, not the product itself: the "
                                    "setting, the surface it stands on, the lighting, the props and the colours. "
                                    "Answer in one or two sentences. Answer:")
    assert "Question:" not in pair.product + pair.background  # the echoed prompt is cut off


def test_blip_continues_its_prefix(locator, photo):
    captioner = load_captioner("tiny-blip", device="cpu", locator=locator)
    pair = caption_images([photo[0]], [photo[1]], captioner, settings=QUICK)[0]
    assert pair.product.startswith("a product photo of")
    assert pair.background.startswith("a photo of")
    short = caption_images([photo[0]], None, captioner, task="short", settings=QUICK)[0]
    assert short.product and not short.product.startswith("a product photo of")


def test_every_task_has_instructions_for_both_views():
    for name in TASKS:
        product, background = instructions_for(name, "Describe the floor.")
        assert product.chat and product.florence.startswith("<") and product.florence.endswith(">")
        if name == "custom":
            assert background.chat == background.florence == background.blip_prefix == "Describe the floor."
        else:
            assert background.chat and background.florence.startswith("<") and background.florence.endswith(">")
    assert instructions_for("custom", "  Describe   the floor. ")[1].chat == "Describe the floor."
    with pytest.raises(InvalidInputError, match="custom_instruction"):
        instructions_for("custom", "   ")
    with pytest.raises(InvalidInputError, match="unknown caption task"):
        instructions_for("poem")


# ------------------------------------------------------------------------------------------- determinism

@pytest.mark.parametrize("name", ["tiny-blip", "tiny-qwen2-vl"])
def test_sampling_with_a_seed_is_deterministic_and_leaves_the_global_rng_alone(name, locator, photo):
    captioner = load_captioner(name, device="cpu", locator=locator)

    def run(seed):
        settings = GenerationSettings(max_new_tokens=6, num_beams=1, sampling=True, temperature=1.0, seed=seed)
        return caption_images([photo[0]], [photo[1]], captioner, settings=settings)[0]

    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    assert run(7) == run(7)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert len({run(seed).background for seed in range(3)}) > 1, "the seed never changed the sampled caption"


def test_beam_search_is_deterministic(locator, photo):
    captioner = load_captioner("tiny-qwen2-vl", device="cpu", locator=locator)
    settings = GenerationSettings(max_new_tokens=6, num_beams=2)
    assert (caption_images([photo[0]], [photo[1]], captioner, settings=settings)
            == caption_images([photo[0]], [photo[1]], captioner, settings=settings))


# ------------------------------------------------------------------------------------------- batches

def test_one_caption_pair_per_image_with_progress_and_no_mutation(locator):
    captioner = load_captioner("tiny-blip", device="cpu", locator=locator)
    shots = [studio_product_photo(h, w, seed=s) for s, (h, w) in enumerate([(64, 96), (80, 80), (96, 64)])]
    images = [to_float(img) for img, _ in shots]
    masks = [m.astype(np.float32) for _, m in shots]
    originals = [a.copy() for a in images + masks]
    calls = []
    settings = GenerationSettings(max_new_tokens=6, num_beams=1, sampling=True, seed=3)
    pairs = caption_images(images, masks, captioner, settings=settings, progress=lambda d, t: calls.append((d, t)))
    assert len(pairs) == 3 and calls == [(1, 3), (2, 3), (3, 3)]
    assert all(isinstance(p.product, str) and isinstance(p.background, str) for p in pairs)
    for original, now in zip(originals, images + masks, strict=True):
        assert np.array_equal(original, now)
    alone = caption_images([images[1]], [masks[1]], captioner, settings=settings)[0]
    assert alone == pairs[1], "a caption must not depend on the image's place in the batch"


def test_empty_batch_and_mismatched_masks_are_clear_errors(locator, photo):
    captioner = load_captioner("tiny-blip", device="cpu", locator=locator)
    with pytest.raises(InvalidInputError, match="empty"):
        caption_images([], None, captioner)
    with pytest.raises(InvalidInputError, match="empty"):
        caption_images([], None, None)
    with pytest.raises(InvalidInputError, match="2 masks for 1 images"):
        caption_images([photo[0]], [photo[1], photo[1]], captioner)
    with pytest.raises(InvalidInputError, match="mask is"):
        caption_images([photo[0]], [photo[1][:50]], None)


# ------------------------------------------------------------------------------------------- bad folders

def test_unknown_names_and_paths_are_refused(locator):
    for name in ("missing-model", "../LLM/tiny-blip", "/etc"):
        with pytest.raises(MissingModelError, match="models/LLM"):
            load_captioner(name, locator=locator)


def test_a_text_only_model_is_not_a_vlm(scratch):
    build_text_only_model(scratch / "LLM" / "bert-tiny")
    with pytest.raises(InvalidModelError, match="'bert' model, not a vision-language model"):
        load_captioner("bert-tiny", locator=ModelLocator.from_models_dir(scratch))


def test_a_folder_without_config_is_not_a_model(scratch):
    (scratch / "LLM" / "blip-copy" / "config.json").unlink()
    with pytest.raises(InvalidModelError, match=r"no config\.json"):
        load_captioner("blip-copy", locator=ModelLocator.from_models_dir(scratch))


@pytest.mark.parametrize(("remove", "expected"), [
    (("tokenizer.json", "vocab.txt"), "tokenizer files"),
    (("processor_config.json",), "image processor config"),
    (("model.safetensors",), "weights"),
])
def test_missing_files_are_named(scratch, remove, expected):
    folder = scratch / "LLM" / "blip-copy"
    for name in remove:
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(InvalidModelError, match=expected) as info:
        load_captioner("blip-copy", locator=ModelLocator.from_models_dir(scratch))
    assert "models/LLM/blip-copy" in str(info.value)


def test_weights_that_do_not_fit_the_config_are_refused(scratch, llm_root):
    folder = scratch / "LLM" / "blip-copy"
    shutil.copy(llm_root / "LLM" / "tiny-qwen2-vl" / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(InvalidModelError, match="do not fit the architecture"):
        load_captioner("blip-copy", locator=ModelLocator.from_models_dir(scratch))


def test_remote_code_needs_permission(scratch, photo):
    build_tiny_remote_code_vlm(scratch / "LLM" / "remote-vlm")
    locator = ModelLocator.from_models_dir(scratch)
    with pytest.raises(InvalidModelError, match="allow_remote_code") as info:
        load_captioner("remote-vlm", locator=locator)
    assert "modeling_tiny_remote.py" in str(info.value)

    captioner = load_captioner("remote-vlm", device="cpu", allow_remote_code=True, locator=locator)
    assert type(captioner.model).__name__ == "TinyRemoteForCaptioning"
    assert captioner.family == "plain"
    pair = caption_images([photo[0]], None, captioner, settings=QUICK)[0]
    assert pair.source == "remote-vlm" and isinstance(pair.background, str)
    free_captioners()


# ------------------------------------------------------------------------------------------- views

def test_background_view_fills_the_product_with_its_surroundings(photo):
    image, mask = photo
    before = image.copy(), mask.copy()
    filled = background_view(image, mask)
    hole = mask > 0.5
    background_mean = image[~hole].mean(0)
    assert np.abs(filled[hole].mean(0) - background_mean).max() < 0.08
    assert np.abs(image[hole].mean(0) - background_mean).max() > 0.3  # the product really was different
    far = ~(cv2.dilate(mask, np.ones((9, 9), np.uint8)) > 0)
    assert np.array_equal(filled[far], image[far])
    assert np.array_equal(image, before[0]) and np.array_equal(mask, before[1])


def test_product_view_is_the_box_with_a_margin_on_neutral_grey(photo):
    image, mask = photo
    x0, y0, x1, y1 = product_box(mask)
    crop = product_view(image, mask)
    assert x1 - x0 < crop.shape[1] <= image.shape[1] and y1 - y0 < crop.shape[0] <= image.shape[0]
    assert np.allclose(crop[0, 0], 0.5)  # corner is outside the bottle
    assert np.array_equal(product_view(image, None), image)
    assert np.array_equal(product_view(image, np.zeros_like(mask)), image)


# ------------------------------------------------------------------------------------------- fallback

def _scene(background, product, box):
    image = np.ones((120, 160, 3), np.float32) * np.asarray(background, np.float32)
    alpha = np.zeros((120, 160), np.float32)
    x0, y0, x1, y1 = box
    alpha[y0:y1, x0:x1] = 1.0
    image[alpha > 0] = product
    return image, alpha


def test_fallback_names_colours_brightness_size_and_position():
    image, alpha = _scene((0.96, 0.96, 0.96), (0.8, 0.1, 0.1), (10, 35, 50, 85))
    product, background = fallback_captions(image, alpha)
    assert "red" in product and "on the left" in product and "medium-sized" in product
    assert "white" in background and "bright" in background and "soft, even lighting" in background
    assert "red" not in background

    image, alpha = _scene((0.08, 0.1, 0.3), (0.95, 0.8, 0.2), (70, 50, 90, 70))
    product, background = fallback_captions(image, alpha)
    assert "centered" in product and "small" in product and "yellow" in product
    assert "navy" in background and "dark" in background


def test_fallback_without_mask_makes_no_size_claims_and_is_deterministic():
    image, _ = _scene((0.96, 0.96, 0.96), (0.2, 0.3, 0.8), (50, 30, 110, 90))
    product, background = fallback_captions(image, None)
    assert "blue" in product and "white" in background
    assert not any(word in product for word in ("small", "medium", "large", "centered"))
    assert fallback_captions(image, None) == (product, background)


def test_pipeline_and_backdrop_run_work_without_weights(product_photo):
    image, mask = product_photo
    rgb = to_float(image)
    pair = caption_images([rgb], [mask.astype(np.float32)], None)[0]
    assert pair.source == "statistics" and "product" in pair.background
    result = caption_for_run(rgb, mask.astype(np.float32), None)
    assert set(result) == {"product_caption", "background_caption", "source"}
    assert result["product_caption"] == pair.product and result["source"] == "statistics"
    assert caption_for_run(rgb, None, None)["background_caption"]


def test_caption_for_run_uses_the_captioner_when_given(locator, photo):
    captioner = load_captioner("tiny-blip", device="cpu", locator=locator)
    result = caption_for_run(photo[0], photo[1], captioner, settings=QUICK)
    assert result["source"] == "tiny-blip" and result["background_caption"].startswith("a photo of")
