"""Regenerate the README's before/after grid from assets/example_product.jpg with the real runtime.

    .venv/bin/python docs/make_readme_images.py
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from comfyui_backdrop.runtime.backdrop.studio_job import studio_background
from comfyui_backdrop.runtime.backdrop.styles import get_style
from comfyui_backdrop.runtime.imaging import read_image, to_integer
from comfyui_backdrop.runtime.masking.product_mask import mask_preview, product_mask

ROOT = Path(__file__).resolve().parents[1]
STYLES = ("Soft Spring", "Glam", "Minimal Studio", "Golden Hour")
TILE_HEIGHT = 300


def _tile(rgb: np.ndarray, label: str) -> np.ndarray:
    h, w = rgb.shape[:2]
    tile = cv2.resize(to_integer(rgb, 8), (round(w * TILE_HEIGHT / h), TILE_HEIGHT), interpolation=cv2.INTER_AREA)
    bar = np.full((30, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, label, (8, 21), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (40, 40, 40), 1, cv2.LINE_AA)
    return np.vstack([tile, bar])


def main() -> None:
    loaded = read_image(ROOT / "assets" / "example_product.jpg")
    alpha = product_mask(loaded.rgb)
    tiles = [_tile(loaded.rgb, "input photo"), _tile(mask_preview(loaded.rgb, alpha), "automatic product mask")]
    for name in STYLES:
        result = studio_background(loaded.rgb, get_style(name), alpha=alpha)
        core = alpha >= 1.0
        assert np.array_equal(result.image[core], loaded.rgb[core]), "product pixels changed"
        tiles.append(_tile(result.image, name))
    gap = np.full((TILE_HEIGHT + 30, 6, 3), 255, np.uint8)
    rows = [np.hstack([t for pair in zip(tiles[i : i + 3], [gap] * 3, strict=False) for t in pair][:-1])
            for i in (0, 3)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    grid = np.vstack([rows[0], np.full((6, width, 3), 255, np.uint8), rows[1]])
    out = ROOT / "docs" / "images" / "before_after.png"
    cv2.imwrite(str(out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
