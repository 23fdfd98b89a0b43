"""BackdropCaptionerLoader, BackdropCaption and BackdropStylePrompt: thin adapters over
runtime.captioning and runtime.prompting."""

from __future__ import annotations

import logging

from . import comfy_bridge
from .backdrop import style_choices
from .comfy_host import HostedNode
from .tensors import mask_tooltip, with_rules

CATEGORY = "Backdrop/captioning"
logger = logging.getLogger(__name__)


def _task_choices() -> list[str]:
    from ..runtime.captioning.tasks import task_names

    return task_names()


def _composition_choices() -> list[str]:
    from ..runtime.prompting import composition_names

    return composition_names()


class BackdropCaptionerLoader(HostedNode):
    """Load a vision-language model from models/LLM (Florence-2, BLIP / BLIP-2, Qwen2-VL / Qwen2.5-VL...)."""

    @classmethod
    def INPUT_TYPES(cls):
        from ..runtime.captioning.loader import DEVICES, DTYPES, REMOTE_CODE_WARNING

        return {
            "required": {
                "model": (comfy_bridge.model_choices("LLM"), {"tooltip": "a transformers-format folder in models/LLM"}),
                "device": (list(DEVICES), {"default": "auto", "tooltip": "auto: cuda when torch sees a GPU, else cpu"}),
                "dtype": (list(DTYPES), {"default": "auto", "tooltip": "auto = fp32 on CPU, bf16/fp16 on GPU"}),
                "allow_remote_code": ("BOOLEAN", {"default": False, "tooltip": "WARNING: " + REMOTE_CODE_WARNING}),
            }
        }

    RETURN_TYPES = ("BACKDROP_CAPTIONER",)
    RETURN_NAMES = ("captioner",)
    OUTPUT_TOOLTIPS = ("the loaded vision-language model, for BackdropCaption",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Loads a vision-language model (Florence-2, BLIP / BLIP-2, Qwen2-VL / Qwen2.5-VL) offline from "
                   "models/LLM (local_files_only) and keeps it cached; Backdrop Free Models "
                   "releases it. Remote code is off unless allow_remote_code is on.")

    @classmethod
    def VALIDATE_INPUTS(cls, model):
        return comfy_bridge.check_model_name("LLM", model)

    def load(self, model: str, device: str, dtype: str, allow_remote_code: bool):
        from ..runtime.captioning.loader import load_captioner
        from ..runtime.devices import resolve_device

        device = resolve_device(device, auto=self.host.default_device())
        return (load_captioner(model, device=device, dtype=dtype, allow_remote_code=allow_remote_code,
                               locator=comfy_bridge.locator()),)


class BackdropCaption(HostedNode):
    """A product caption and a background caption for every image in the batch."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "product photos (any batch size)"}),
                "task": (_task_choices(), {"default": "canvas_scene",
                                           "tooltip": "canvas_scene describes the scene around the product"}),
                "custom_instruction": ("STRING", {"default": "", "multiline": True,
                                                  "tooltip": "the background instruction when task is 'custom'"}),
                "max_new_tokens": ("INT", {"default": 64, "min": 1, "max": 1024,
                                           "tooltip": "longest caption, in tokens"}),
                "num_beams": ("INT", {"default": 3, "min": 1, "max": 16,
                                      "tooltip": "beam search width (unused when sampling)"}),
                "sampling": ("BOOLEAN", {"default": False, "tooltip": "sample instead of beam search"}),
                "temperature": ("FLOAT", {"default": 0.7, "min": 0.01, "max": 2.0, "step": 0.01,
                                          "tooltip": "sampling only: higher gives more varied captions"}),
                "top_p": ("FLOAT", {"default": 0.9, "min": 0.01, "max": 1.0, "step": 0.01,
                                    "tooltip": "sampling only: nucleus probability mass"}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "same seed and inputs, same captions"}),
            },
            "optional": {
                "captioner": ("BACKDROP_CAPTIONER", {"tooltip": "without one, captions come from image statistics"}),
                "product_mask": ("MASK", {"tooltip": mask_tooltip("1 = product; the background is captioned with it "
                                                                 "filled out")}),
            },
        }

    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("product_caption", "background_caption")
    OUTPUT_TOOLTIPS = ('a caption of the product alone, one per image (a list)',
                       'a caption of the background around the product, one per image (a list)')
    OUTPUT_IS_LIST = (True, True)
    FUNCTION = "caption"
    CATEGORY = CATEGORY
    DESCRIPTION = with_rules("Captions the product (on a crop of itself) and its background (with the product "
                             "filled out) for every image; without a captioner the captions come from image "
                             "statistics. Outputs are always lists with one caption per image (a batch of 1 gives a "
                             "list of 1). Nodes downstream run once per caption; split the images the same way "
                             "(Rebatch Images, batch size 1) to keep caption i with image i.")

    def caption(self, image, task: str, custom_instruction: str, max_new_tokens: int, num_beams: int,
                sampling: bool, temperature: float, top_p: float, seed: int, captioner=None, product_mask=None):
        from ..runtime.captioning.captioner import GenerationSettings
        from ..runtime.captioning.pipeline import caption_images
        from .tensors import images_to_list, masks_for_batch

        images = images_to_list(image, "BackdropCaption", "image")
        masks = None
        if product_mask is not None:
            masks = masks_for_batch(product_mask, len(images), images[0].shape[0], images[0].shape[1],
                                    "BackdropCaption", "product_mask")
        settings = GenerationSettings(max_new_tokens=max_new_tokens, num_beams=num_beams, sampling=sampling,
                                      temperature=temperature, top_p=top_p, seed=seed)
        pairs = caption_images(images, masks, captioner, task, custom_instruction, settings,
                               progress=self.host.progress(len(images)))
        return ([p.product for p in pairs], [p.background for p in pairs])


class BackdropStylePrompt(HostedNode):
    """Positive/negative prompts from a product caption, a style, a composition and a scene."""

    @classmethod
    def INPUT_TYPES(cls):
        styles = style_choices()
        compositions = _composition_choices()
        return {
            "required": {
                "product_caption": ("STRING", {"default": "", "multiline": True,
                                               "tooltip": "what the product is (Backdrop Caption's product_caption)"}),
                "style": (styles, {"default": "Minimal Studio" if "Minimal Studio" in styles else styles[0],
                                   "tooltip": "style preset: prompt fragments and negative prompt"}),
                "composition": (compositions, {"default": compositions[0], "tooltip": "framing of the shot"}),
                "scene": ("STRING", {"default": "", "multiline": True,
                                     "tooltip": "free scene / subject text, kept verbatim (weights allowed)"}),
                "long_prompt": (["warn", "trim"], {"default": "warn",
                                                   "tooltip": "over 77 CLIP tokens: warn, or trim to fit"}),
            },
            "optional": {
                "background_caption": ("STRING", {"forceInput": True,
                                                  "tooltip": "Backdrop Caption's background_caption"}),
            },
        }

    RETURN_TYPES = ("STRING", "STRING", "STRING")
    RETURN_NAMES = ("positive", "negative", "report")
    OUTPUT_TOOLTIPS = ("the positive prompt: product caption + style + composition + scene "
                       "(for CLIPTextEncode or BackdropInpaint)",
                       "the style's negative prompt",
                       "how the prompt was built, with any warnings (e.g. truncated to the text encoder's limit)")
    FUNCTION = "compose"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Composes positive and negative prompts from a product caption, a style preset, a composition "
                   "and a scene. positive/negative go into CLIPTextEncode; report gives CLIP token counts and "
                   "warnings.")

    def compose(self, product_caption: str, style: str, composition: str, scene: str, long_prompt: str,
                background_caption: str = ""):
        from ..runtime.prompting import compose_prompt, get_token_counter

        counter = get_token_counter(comfy_bridge.clip_tokenizer_dir())
        result = compose_prompt(product_caption, style, composition, scene, background_caption or "",
                                long_prompt=long_prompt, counter=counter)
        for warning in result.warnings:
            logger.warning("BackdropStylePrompt: %s", warning)
        return (result.positive, result.negative, result.report())


NODE_CLASS_MAPPINGS = {
    "BackdropCaptionerLoader": BackdropCaptionerLoader,
    "BackdropCaption": BackdropCaption,
    "BackdropStylePrompt": BackdropStylePrompt,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "BackdropCaptionerLoader": "Backdrop Captioner Loader",
    "BackdropCaption": "Backdrop Caption",
    "BackdropStylePrompt": "Backdrop Style Prompt",
}
