"""ComfyUI's LoadImage, SaveImage and PreviewImage for headless runs (same inputs, outputs and file naming).

Only image I/O is provided: sampling nodes (KSampler...) need ComfyUI itself. Files are read from
``input_dir`` and written to ``output_dir``; nothing is ever overwritten.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.errors import InvalidInputError
from ..runtime.files import write_bytes_exclusive
from ..runtime.imaging import image_files, read_image, to_integer
from .tensors import images_to_list


def list_input_images(folder: Path) -> list[str]:
    """What LoadImage lists: the images directly in the input folder (none if it does not exist)."""
    try:
        return [p.name for p in image_files(folder)]
    except (OSError, InvalidInputError):
        return []


def load_image_tensors(path: Path) -> tuple[Any, Any]:
    """(IMAGE [1,H,W,3], MASK [1,H,W]) the way LoadImage returns them: MASK = 1 - alpha (1 = transparent),
    a 64x64 zero mask when the file has no alpha."""
    import torch

    loaded = read_image(path)
    image = torch.from_numpy(np.ascontiguousarray(loaded.rgb, dtype=np.float32))[None]
    if loaded.alpha is None:
        mask = torch.zeros((1, 64, 64), dtype=torch.float32)
    else:
        mask = torch.from_numpy(1.0 - np.asarray(loaded.alpha, dtype=np.float32))[None]
    return image, mask


def png_with_metadata(image: np.ndarray, prompt: Any, extra_pnginfo: Mapping | None) -> bytes:
    """8-bit PNG bytes with ComfyUI's text chunks: ``prompt`` and each key of ``extra_pnginfo``."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        info.add_text(key, json.dumps(value))
    buffer = io.BytesIO()
    Image.fromarray(to_integer(image, 8)).save(buffer, format="PNG", pnginfo=info, compress_level=4)
    return buffer.getvalue()


def next_counter(folder: Path, prefix: str) -> int:
    """ComfyUI's counter: one more than the highest ``<prefix>_NNNNN_`` file in ``folder``."""
    highest = 0
    if folder.is_dir():
        for path in folder.glob(f"{prefix}_*_.*"):
            digits = path.name[len(prefix) + 1:].split("_", 1)[0]
            if digits.isdigit():
                highest = max(highest, int(digits))
    return highest + 1


def core_node_classes(input_dir: Path, output_dir: Path) -> dict[str, type]:
    """LoadImage, SaveImage and PreviewImage bound to these folders."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)

    class LoadImage:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"image": (list_input_images(input_dir), {"image_upload": True})}}

        RETURN_TYPES = ("IMAGE", "MASK")
        FUNCTION = "load_image"
        CATEGORY = "image"

        def load_image(self, image: str):
            if image not in list_input_images(input_dir):
                raise InvalidInputError(f"{image!r} is not an image in the input folder {input_dir}")
            return load_image_tensors(input_dir / image)

    class SaveImage:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
                    "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

        RETURN_TYPES = ()
        FUNCTION = "save_images"
        OUTPUT_NODE = True
        CATEGORY = "image"

        def save_images(self, images, filename_prefix: str = "ComfyUI", prompt=None, extra_pnginfo=None):
            target = (output_dir / filename_prefix).resolve()
            if output_dir.resolve() not in target.parents:
                raise InvalidInputError(f"filename_prefix {filename_prefix!r} points outside {output_dir}")
            folder, prefix = target.parent, target.name
            saved = []
            for image in images_to_list(images):
                name = f"{prefix}_{next_counter(folder, prefix):05}_.png"
                path = write_bytes_exclusive(folder / name, png_with_metadata(image[..., :3], prompt, extra_pnginfo))
                subfolder = folder.relative_to(output_dir.resolve()).as_posix()
                saved.append({"filename": path.name, "subfolder": "" if subfolder == "." else subfolder,
                              "type": "output"})
            return {"ui": {"images": saved}}

    class PreviewImage:
        """Headless runs have no UI: previews are counted, not written."""

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"images": ("IMAGE",)},
                    "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

        RETURN_TYPES = ()
        FUNCTION = "save_images"
        OUTPUT_NODE = True
        CATEGORY = "image"

        def save_images(self, images, prompt=None, extra_pnginfo=None):
            return {"ui": {"previews": len(images)}}

    return {"LoadImage": LoadImage, "SaveImage": SaveImage, "PreviewImage": PreviewImage}
