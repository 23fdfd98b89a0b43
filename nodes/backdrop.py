"""BackdropStudioBackdrop: the weight-free studio background, product pasted back bit-exact."""

from __future__ import annotations

from .comfy_host import HostedNode
from .tensors import mask_tooltip, with_rules


def style_choices() -> list[str]:
    from ..runtime.backdrop.styles import style_names

    return style_names()


class BackdropStudioBackdrop(HostedNode):
    """A seamless paper sweep in a style's palette, vignette and contact shadow; product pixels unchanged."""

    @classmethod
    def INPUT_TYPES(cls):
        names = style_choices()
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "product photos (any batch size)"}),
                "product_mask": ("MASK", {"tooltip": mask_tooltip("1 = product (BackdropProductMask's product_mask)")}),
                "style": (names, {"default": "Minimal Studio" if "Minimal Studio" in names else names[0],
                                  "tooltip": "palette and studio look from the style presets"}),
                "shadow": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 1.0, "step": 0.05,
                                     "tooltip": "contact shadow strength; -1 = the style's default"}),
                "vignette": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "vignette strength; -1 = the style's default"}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF,
                                 "tooltip": "seed of the backdrop's dither (the only random part)"}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("the product, pixel-exact, on the style's studio backdrop (same size as the input)",)
    FUNCTION = "render"
    CATEGORY = "Backdrop/background"
    DESCRIPTION = with_rules("Draws a studio background without model weights: a seamless paper sweep in the "
                             "style's palette with key light, vignette and a contact shadow from the mask. Product "
                             "pixels stay bit-exact.")

    def render(self, image, product_mask, style: str, shadow: float, vignette: float, seed: int):
        from ..runtime.backdrop.studio import StudioOptions
        from ..runtime.backdrop.studio_job import studio_background
        from ..runtime.backdrop.styles import get_style
        from .tensors import images_to_list, masks_for_batch, stack_images

        node = "BackdropStudioBackdrop"
        images = images_to_list(image, node, "image")
        height, width = images[0].shape[:2]
        masks = masks_for_batch(product_mask, len(images), height, width, node, "product_mask")
        preset = get_style(style)
        options = StudioOptions(shadow=None if shadow < 0 else shadow, vignette=None if vignette < 0 else vignette,
                                seed=seed)
        progress = self.host.progress(len(images))
        out = []
        for index, (img, mask) in enumerate(zip(images, masks, strict=True)):
            out.append(studio_background(img, preset, alpha=mask, studio=options).image)
            progress(index + 1, len(images))
        return (stack_images(out),)


class BackdropFreeModels(HostedNode):
    """Free every model Backdrop has cached (SAM, captioners, pipelines)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("INT",)
    RETURN_NAMES = ("freed",)
    OUTPUT_TOOLTIPS = ("how many cached models were released",)
    FUNCTION = "free"
    CATEGORY = "Backdrop/utils"
    OUTPUT_NODE = True
    DESCRIPTION = ("Releases every model Backdrop has cached (SAM, captioners, inpainting pipelines) and the "
                   "GPU memory they hold; freed is how many were released. Runs every time it is queued.")

    @classmethod
    def IS_CHANGED(cls, **_kwargs):
        return float("nan")  # always run

    def free(self):
        from ..runtime.models import free_models

        return (free_models(),)


NODE_CLASS_MAPPINGS = {"BackdropStudioBackdrop": BackdropStudioBackdrop, "BackdropFreeModels": BackdropFreeModels}
NODE_DISPLAY_NAME_MAPPINGS = {"BackdropStudioBackdrop": "Backdrop Studio Backdrop",
                              "BackdropFreeModels": "Backdrop Free Models"}
