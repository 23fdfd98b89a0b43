"""BackdropInpaintLoader, BackdropLoRA, BackdropInpaint, BackdropComposite: thin adapters over runtime.inpainting."""

from __future__ import annotations

from ..runtime.devices import DEVICES
from ..runtime.inpainting.geometry import OUTPAINT_CHOICES
from ..runtime.inpainting.loader import DTYPES
from ..runtime.inpainting.memory import OFFLOAD_MODES, TEXT_ENCODER_QUANTS
from ..runtime.inpainting.schedulers import DEFAULT_SCHEDULER, SCHEDULERS
from . import comfy_bridge
from .comfy_host import HostedNode
from .tensors import input_source, mask_tooltip, with_rules

CATEGORY = "Backdrop/inpainting"
PIPELINE = "BACKDROP_PIPELINE"


def pipeline_choices() -> list[str]:
    """``checkpoints/<file>``, ``diffusers/<folder>`` and ``diffusion_models/<file>`` (FLUX transformers; ComfyUI
    maps the legacy models/unet into it) names that exist right now."""
    return [f"{kind}/{name}" for kind in ("checkpoints", "diffusers", "diffusion_models")
            for name in comfy_bridge.model_choices(kind)]


def component_choices(*kinds: str) -> list[str]:
    """``auto`` then the files of ``kinds`` (each name once: ComfyUI lists models/clip inside text_encoders)."""
    names: list[str] = []
    for kind in kinds:
        names += [n for n in comfy_bridge.model_choices(kind) if n not in names]
    return ["auto", *names]


class BackdropInpaintLoader(HostedNode):
    """Load an SD1.5, SDXL, FLUX.1 Fill, FLUX.1 Kontext or Qwen-Image-Edit inpainting pipeline (or a regular SD
    checkpoint) offline."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (pipeline_choices(), {"tooltip": "a single file in models/checkpoints, a diffusers "
                                                          "folder in models/diffusers, or a FLUX.1 Fill / Kontext "
                                                          "transformer file in models/diffusion_models"}),
                "device": (list(DEVICES), {"default": "auto", "tooltip": "auto: cuda when torch sees a GPU, else cpu"}),
                "dtype": (list(DTYPES), {"default": "auto", "tooltip": "auto: fp16 on a GPU (bf16 for FLUX and "
                                                                    "Qwen-Image-Edit), fp32 on "
                                                                    "the CPU; choose bf16 or fp32 if fp16 gives "
                                                                    "NaN/black images"}),
            },
            "optional": {
                "clip_l": (component_choices("text_encoders", "clip"), {
                    "default": "auto", "tooltip": "FLUX single files (diffusion_models/...): the CLIP-L text encoder "
                    "in models/text_encoders, e.g. clip_l.safetensors; auto: the one that fits (or what an "
                    "all-in-one checkpoint holds). Leave auto for other models (a diffusers folder ignores it, an SD "
                    "checkpoint refuses it)"}),
                "t5xxl": (component_choices("text_encoders", "clip"), {
                    "default": "auto", "tooltip": "FLUX single files: the T5-XXL text encoder in "
                    "models/text_encoders, e.g. t5xxl_fp16.safetensors (fp8 files are upcast); auto: the one that "
                    "fits. Leave auto for other models"}),
                "vae": (component_choices("vae"), {
                    "default": "auto", "tooltip": "FLUX single files: the autoencoder in models/vae, e.g. "
                    "ae.safetensors; auto: the one that fits. Leave auto for other models"}),
                "offload": (list(OFFLOAD_MODES), {
                    "default": "none", "advanced": True,
                    "tooltip": "GPU memory: model keeps each model in CPU memory and moves it to the GPU while it "
                    "runs, sequential does so layer by layer (slowest, least memory); needs a GPU"}),
                "text_encoder_quant": (list(TEXT_ENCODER_QUANTS), {
                    "default": "none", "advanced": True,
                    "tooltip": "int8: FLUX's T5-XXL (or Qwen-Image-Edit's text encoder) with int8 weights, half "
                    "the memory (torchao, the 'memory' extra)"}),
            },
        }

    RETURN_TYPES = (PIPELINE,)
    RETURN_NAMES = ("pipeline",)
    OUTPUT_TOOLTIPS = ('the inpainting pipeline (model, LoRA stack), for BackdropInpaint, BackdropLoRA and '
                       'BackdropTrainLoRA',)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Loads an SD1.5 or SDXL inpainting pipeline (or a regular checkpoint) offline from "
                   "models/checkpoints (single files) or models/diffusers (folders), without any download. "
                   "Single files use the shipped configs and ComfyUI's own CLIP tokenizer. FLUX.1 Fill and "
                   "FLUX.1 Kontext diffusers folders load too (no negative prompt; cfg is FLUX's guidance: "
                   "about 30 for Fill, 2.5 for Kontext), and Qwen-Image-Edit folders (cfg is its true CFG with "
                   "the negative prompt: about 4). FLUX.1 Fill / Kontext also load from ComfyUI's single files: "
                   "the transformer in models/diffusion_models (or models/unet), clip_l and t5xxl from "
                   "models/text_encoders and ae.safetensors from models/vae (the optional widgets, or the one file "
                   "that fits), or an all-in-one FLUX checkpoint.")

    @classmethod
    def VALIDATE_INPUTS(cls, model):
        return comfy_bridge.check_prefixed_model_name(model, ("checkpoints", "diffusers", "diffusion_models", "unet"))

    def load(self, model: str, device: str, dtype: str, clip_l: str = "auto", t5xxl: str = "auto",
             vae: str = "auto", offload: str = "none", text_encoder_quant: str = "none"):
        from ..runtime.devices import resolve_device
        from ..runtime.inpainting.loader import FLUX_FILE_KINDS, load_pipeline
        from ..runtime.inpainting.memory import MemoryOptions

        comfy_bridge.register_clip_tokenizer()
        parts: dict = {}
        if model.partition("/")[0] in (*FLUX_FILE_KINDS, "checkpoints"):  # FLUX single files choose their parts
            parts = {"text_encoders": tuple(n for n in (clip_l, t5xxl) if n and n != "auto"),
                     "vae": None if vae in (None, "", "auto") else vae}
        return (load_pipeline(model, device=resolve_device(device, auto=self.host.default_device()), dtype=dtype,
                              memory=MemoryOptions(offload, text_encoder_quant), **parts),)


class BackdropLoRA(HostedNode):
    """Add a LoRA from models/loras to the pipeline's stack; chain several, each with its own strength."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipeline": (PIPELINE, {"tooltip": "from Backdrop Inpaint Loader or another Backdrop LoRA"}),
                "lora_name": (comfy_bridge.model_choices("loras"), {"tooltip": "a LoRA in models/loras"}),
                "strength": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.05,
                                       "tooltip": "LoRA weight; negative subtracts it"}),
                "enabled": ("BOOLEAN", {"default": True, "tooltip": "off: pass the pipeline through unchanged"}),
                "fuse": ("BOOLEAN", {"default": False,
                                     "tooltip": "fuse the whole stack into the weights (faster sampling)"}),
            }
        }

    RETURN_TYPES = (PIPELINE,)
    RETURN_NAMES = ("pipeline",)
    OUTPUT_TOOLTIPS = ("the same pipeline with this LoRA added to its stack",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Stacks a LoRA from models/loras (kohya/ComfyUI or diffusers/peft format) on the pipeline; "
                   "chain several, each with its own strength. Switching LoRAs never reloads the base model.")

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name):
        return comfy_bridge.check_model_name("loras", lora_name)

    def apply(self, pipeline, lora_name: str, strength: float, enabled: bool, fuse: bool):
        from ..runtime.inpainting.loras import add_lora

        if not enabled:
            return (pipeline,)
        return (add_lora(pipeline, lora_name, strength, fuse=fuse or pipeline.fuse_loras),)


class BackdropInpaint(HostedNode):
    """New backgrounds around the product; product pixels stay bit-exact."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipeline": (PIPELINE, {"tooltip": "from Backdrop Inpaint Loader, Backdrop LoRA or Backdrop Load "
                                                   "Engine"}),
                "image": ("IMAGE", {"tooltip": "product photos (RGB or RGBA, any batch size)"}),
                "product_mask": ("MASK", {"tooltip": mask_tooltip("1 = product (kept exactly), 0 = background "
                                                                 "(regenerated)")}),
                "positive": ("STRING", {"multiline": True, "default": "product photo on a clean studio backdrop",
                                     "tooltip": "the new background (Backdrop Style Prompt's positive)"}),
                "negative": ("STRING", {"multiline": True, "default": "blurry, lowres, watermark, text",
                                     "tooltip": "what to avoid"}),
                "variations": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "backgrounds per image"}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "variation k of every image uses seed + k"}),
                "steps": ("INT", {"default": 25, "min": 1, "max": 500, "tooltip": "sampling steps"}),
                "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 50.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "classifier-free guidance scale"}),
                "scheduler": (list(SCHEDULERS), {"default": DEFAULT_SCHEDULER, "tooltip": "diffusers sampler"}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                                       "tooltip": "denoising strength; 1 = an entirely new background"}),
            },
            "optional": {
                "resolution": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 64,
                                       "tooltip": "working size (sqrt of pixels); 0 = the model's native size"}),
                "outpaint": (list(OUTPAINT_CHOICES), {"default": "none",
                                                      "tooltip": "extend the canvas to this aspect ratio"}),
                "seam_feather": ("INT", {"default": 6, "min": 0, "max": 128,
                                         "tooltip": "blend width outside the product, in pixels"}),
                "color_match": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                          "tooltip": "remove the generator's colour cast at the seam"}),
                "feature_cache": ("INT", {"default": 0, "min": 0, "max": 10,
                                          "tooltip": "DeepCache-style speed-up: the full UNet every N steps, its deep "
                                                     "features reused in between (0 = off; slightly different "
                                                     "images; torch UNet only, not with Backdrop Load Engine)"}),
            },
        }

    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("images", "product_mask")
    OUTPUT_TOOLTIPS = ("the generated images, variations image-major, with every product pixel equal to the input's",
                       'the product mask of each output (it moves with the product when outpainting)')
    FUNCTION = "inpaint"
    CATEGORY = CATEGORY
    DESCRIPTION = with_rules("Generates new backgrounds around the product with the diffusion pipeline; product "
                             "pixels stay bit-exact. Returns `variations` images per input (image-major). "
                             "product_mask is the product on the output canvas (it moves when outpainting).")

    def inpaint(self, pipeline, image, product_mask, positive: str, negative: str, variations: int, seed: int,
                steps: int, cfg: float, scheduler: str, strength: float, resolution: int = 0, outpaint: str = "none",
                seam_feather: int = 6, color_match: float = 1.0, feature_cache: int = 0):
        from ..runtime.inpainting.generate import InpaintSettings, inpaint_backgrounds
        from ..runtime.inpainting.masks import masks_like_images
        from .tensors import images_to_list, stack_images, stack_masks

        images = images_to_list(image, "BackdropInpaint", "image")
        masks = masks_like_images(product_mask, images, input_source("BackdropInpaint", "product_mask"))
        settings = InpaintSettings(prompt=positive, negative_prompt=negative, seed=seed, steps=steps, cfg=cfg,
                                   scheduler=scheduler, strength=strength, variations=variations,
                                   resolution=resolution, outpaint=outpaint, seam_feather=seam_feather,
                                   color_match=color_match, feature_cache=feature_cache)
        total = settings.effective_steps() * len(images)
        result = inpaint_backgrounds(pipeline, images, masks, settings, progress=self.host.progress(total))
        return (stack_images(result.images), stack_masks(result.product_masks))


class BackdropComposite(HostedNode):
    """Paste the original product back, bit for bit, onto any generated image (e.g. from a KSampler graph)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "generated": ("IMAGE", {"tooltip": "generated images; with variations, all of original 0's first"}),
                "original": ("IMAGE", {"tooltip": "the original photos"}),
                "product_mask": ("MASK", {"tooltip": mask_tooltip("1 = product, at the originals' size")}),
                "seam_feather": ("INT", {"default": 6, "min": 0, "max": 128,
                                         "tooltip": "blend width outside the product, in pixels"}),
                "color_match": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                          "tooltip": "remove the generator's colour cast at the seam (0 = off)"}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ('the generated image with the original product pasted back pixel-exact, seams blended '
                       'outside the product',)
    FUNCTION = "composite"
    CATEGORY = CATEGORY
    DESCRIPTION = with_rules("Pastes the original product back, bit for bit, onto any generated image (for example "
                             "from a native KSampler graph). Generated images may be a multiple of the originals "
                             "(variations, image-major) and slightly smaller (VAE crops to multiples of 8); they are "
                             "resized to the original's size.")

    def composite(self, generated, original, product_mask, seam_feather: int, color_match: float):
        from ..runtime.inpainting.composite import composite_original
        from ..runtime.inpainting.masks import masks_like_images, pair_generated_with_originals
        from .tensors import images_to_list, stack_images

        node = "BackdropComposite"
        generated_list = images_to_list(generated, node, "generated")
        originals = images_to_list(original, node, "original")
        masks = masks_like_images(product_mask, originals, input_source(node, "product_mask"))
        outputs = [composite_original(gen, originals[i], masks[i], seam_feather, color_match)
                   for gen, i in pair_generated_with_originals(generated_list, len(originals))]
        return (stack_images(outputs),)


NODE_CLASS_MAPPINGS = {
    "BackdropInpaintLoader": BackdropInpaintLoader,
    "BackdropLoRA": BackdropLoRA,
    "BackdropInpaint": BackdropInpaint,
    "BackdropComposite": BackdropComposite,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "BackdropInpaintLoader": "Backdrop Inpaint Loader",
    "BackdropLoRA": "Backdrop LoRA",
    "BackdropInpaint": "Backdrop Inpaint",
    "BackdropComposite": "Backdrop Composite",
}
