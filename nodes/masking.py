"""BackdropSAMLoader and BackdropProductMask: thin adapters over runtime.masking."""

from __future__ import annotations

from ..runtime.devices import DEVICES
from . import comfy_bridge
from .comfy_host import HostedNode
from .tensors import with_rules

CATEGORY = "Backdrop/masking"


class BackdropSAMLoader(HostedNode):
    """Load a segment-anything checkpoint (vit_b / vit_l / vit_h, .pth or .safetensors) from models/sams."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "sam_model": (comfy_bridge.model_choices("sams"), {"tooltip": "a checkpoint in models/sams"}),
                "device": (list(DEVICES), {"default": "auto", "tooltip": "auto: cuda when torch sees a GPU, else cpu"}),
            }
        }

    RETURN_TYPES = ("BACKDROP_SAM",)
    RETURN_NAMES = ("sam",)
    OUTPUT_TOOLTIPS = ("the loaded segment-anything model, for BackdropProductMask",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Loads a segment-anything checkpoint (vit_b / vit_l / vit_h, .pth or .safetensors) offline from "
                   "models/sams; the architecture is detected from the weights.")

    @classmethod
    def VALIDATE_INPUTS(cls, sam_model):
        return comfy_bridge.check_model_name("sams", sam_model)

    def load(self, sam_model: str, device: str):
        from ..runtime.devices import resolve_device
        from ..runtime.masking.sam_loader import load_sam
        from ..runtime.masking.sam_masker import SamMasker

        loaded = load_sam(sam_model, device=resolve_device(device, auto=self.host.default_device()),
                          locator=comfy_bridge.locator())
        return (SamMasker(loaded),)


class BackdropProductMask(HostedNode):
    """Find the main product in each image (no clicks needed) and return product/background masks."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "product photos (any batch size)"}),
                "fill_holes": ("BOOLEAN", {"default": True, "tooltip": "fill holes inside the product mask"}),
                "keep": (["main", "largest", "all"], {"default": "main",
                                                      "tooltip": "which mask components to keep"}),
                "grow_px": ("INT", {"default": 0, "min": -256, "max": 256, "step": 1,
                                    "tooltip": "grow (>0) or shrink (<0) the product mask"}),
                "edge_refine": ("BOOLEAN", {"default": True, "tooltip": "snap the edge to the image (no halo)"}),
                "feather_px": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 128.0, "step": 0.5,
                                         "tooltip": "soften the edge outward; the product core stays exact"}),
            },
            "optional": {
                "sam": ("BACKDROP_SAM", {"tooltip": "without SAM a weight-free masker is used"}),
                "box": ("STRING", {"default": "", "tooltip": "optional 'x0,y0,x1,y1' in pixels; overrides auto"}),
                "points": ("STRING", {"default": "", "tooltip": "optional 'x,y[,label];...' label 0 = background"}),
            },
        }

    RETURN_TYPES = ("MASK", "MASK", "IMAGE")
    RETURN_NAMES = ("product_mask", "background_mask", "preview")
    OUTPUT_TOOLTIPS = ('1 on the product, 0 elsewhere: what must stay exact',
                       '1 where a new background goes (the polarity VAEEncodeForInpaint and SetLatentNoiseMask expect)',
                       'the photo with the product mask tinted, to check the mask at a glance')
    FUNCTION = "mask"
    CATEGORY = CATEGORY
    DESCRIPTION = with_rules("Finds the main product in each image without clicks (SAM when connected, else a "
                             "weight-free masker). product_mask is 1 on the product; background_mask is 1 where a new "
                             "background goes (the polarity VAEEncodeForInpaint and SetLatentNoiseMask expect).",
                             masks=False)

    def mask(self, image, fill_holes: bool, keep: str, grow_px: int, edge_refine: bool, feather_px: float,
             sam=None, box: str = "", points: str = ""):
        from ..runtime.masking.product_mask import mask_preview, product_masks
        from ..runtime.masking.types import Prompt, RefineOptions, parse_box, parse_points
        from .tensors import images_to_list, stack_images, stack_masks

        images = images_to_list(image, "BackdropProductMask", "image")
        prompt = Prompt(box=parse_box(box), points=parse_points(points))
        refine = RefineOptions(fill_holes=fill_holes, keep=keep, grow_px=grow_px, edge_refine=edge_refine,
                               feather_px=feather_px)
        masks = product_masks(images, sam=sam, prompt=prompt, refine=refine,
                              progress=self.host.progress(len(images)))
        product = stack_masks(masks)
        preview = stack_images([mask_preview(img, m) for img, m in zip(images, masks, strict=True)])
        return (product, 1.0 - product, preview)


NODE_CLASS_MAPPINGS = {"BackdropSAMLoader": BackdropSAMLoader, "BackdropProductMask": BackdropProductMask}
NODE_DISPLAY_NAME_MAPPINGS = {
    "BackdropSAMLoader": "Backdrop SAM Loader",
    "BackdropProductMask": "Backdrop Product Mask",
}
