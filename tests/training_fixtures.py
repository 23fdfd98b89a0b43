"""Helpers for the training tests (no tests here): tiny datasets drawn in code, private loras folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.images import studio_product_photo, to_float


def write_product_folder(folder: Path, count: int = 4, height: int = 80, width: int = 96) -> Path:
    """``count`` synthetic studio product shots as PNGs in ``folder``."""
    from comfyui_backdrop.runtime.imaging import write_image

    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(count):
        image, _ = studio_product_photo(height, width, seed=seed)
        write_image(folder / f"product_{seed}.png", to_float(image))
    return folder


def write_blank(path: Path, size: int = 80) -> Path:
    """A flat grey picture with no product in it."""
    from comfyui_backdrop.runtime.imaging import write_image

    return write_image(path, np.full((size, size, 3), 0.8, np.float32))


def locator_with_loras(models_root: Path, loras: Path):
    """The tiny models dir, except that LoRAs are read from and saved to ``loras``."""
    from comfyui_backdrop.runtime.models import ModelLocator

    loras.mkdir(parents=True, exist_ok=True)
    return ModelLocator(lambda kind: [loras] if kind == "loras" else [models_root / kind], description="test")


def private_models_dir(models_root: Path, where: Path) -> Path:
    """A models dir whose model folders link to the tiny models but whose loras folder is new and empty."""
    from comfyui_backdrop.runtime.models import MODEL_FOLDERS

    where.mkdir(parents=True, exist_ok=True)
    for kind in MODEL_FOLDERS:
        if kind == "loras":
            (where / kind).mkdir(exist_ok=True)
        elif (models_root / kind).is_dir():
            (where / kind).symlink_to(models_root / kind, target_is_directory=True)
    return where
