"""Thin ComfyUI adapters (V1 registration). Each module contributes NODE_CLASS_MAPPINGS."""

from . import backdrop, captioning, comfy_memory, engines, finishing, images, inpainting, masking, training, watermark

_MODULES = (images, masking, backdrop, captioning, inpainting, finishing, watermark, training, engines)

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
for _module in _MODULES:
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
NODE_CLASS_MAPPINGS = comfy_memory.with_memory_management(NODE_CLASS_MAPPINGS)  # inside ComfyUI only
