"""BackdropLoadImageFolder: a catalog folder as a list of images (one downstream run per photo)."""

from __future__ import annotations

from .comfy_host import HostedNode

CATEGORY = "Backdrop/io"


class BackdropLoadImageFolder(HostedNode):
    """Every photo in a folder of ComfyUI's input folder, as a list: nodes downstream run once per photo,
    so photos of different sizes never need to share a batch."""

    @classmethod
    def INPUT_TYPES(cls):
        from ..runtime.image_folder import subfolders

        return {
            "required": {
                "folder": (subfolders(cls.host.input_directory()),
                           {"default": ".", "tooltip": "a folder inside ComfyUI's input folder ('.' = the input "
                                                       "folder itself)"}),
                "start": ("INT", {"default": 0, "min": 0, "max": 1_000_000,
                                  "tooltip": "skip this many files (name order)"}),
                "limit": ("INT", {"default": 0, "min": 0, "max": 1_000_000, "tooltip": "0 = every file"}),
            }
        }

    RETURN_TYPES = ("IMAGE", "STRING", "STRING")
    RETURN_NAMES = ("images", "names", "report")
    OUTPUT_TOOLTIPS = ('one IMAGE per readable photo (a list: nodes downstream run once per photo)',
                       "each photo's file name without extension, in the same order (usable as filename_prefix)",
                       'which files were loaded and which were skipped, and why')
    OUTPUT_IS_LIST = (True, True, False)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Loads every photo in a folder of ComfyUI's input folder as a list, so nodes downstream run "
                   "once per photo. images and names are lists (one item per readable photo, name = file stem, "
                   "handy as a filename_prefix); unreadable files are skipped and listed in report.")

    @classmethod
    def IS_CHANGED(cls, **_kwargs):
        return float("nan")  # the folder's content can change between runs

    def load(self, folder: str, start: int, limit: int):
        import numpy as np
        import torch

        from ..runtime.errors import InvalidInputError
        from ..runtime.image_folder import load_folder, subfolders

        root = self.host.input_directory()
        if folder not in subfolders(root):
            raise InvalidInputError(f"{folder!r} is not a folder in the input folder {root}")
        batch = load_folder(root / folder, start, limit)
        images = [torch.from_numpy(np.ascontiguousarray(image.rgb, dtype=np.float32))[None]
                  for image in batch.images]
        return (images, list(batch.names), batch.report())


NODE_CLASS_MAPPINGS = {"BackdropLoadImageFolder": BackdropLoadImageFolder}
NODE_DISPLAY_NAME_MAPPINGS = {"BackdropLoadImageFolder": "Backdrop Load Image Folder"}
