"""Regenerate docs/images/watermark_presence_map.png: a marked output pasted into another photo, and the map of it.

    .venv/bin/python docs/make_watermark_map_image.py

The example product on the "Soft Spring" backdrop (the README's runtime, weight-free) is marked with the codec
under a demo key; a square of it (9% of the host's area) is pasted into scikit-image's rocket photo. The plain
``detect`` misses the mark there; ``detect(..., localise=True)`` (what Backdrop Verify and ``backdrop verify --map``
run) finds it in one window and maps it. The script asserts both, and the ID read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the shared test helpers (tests.*) importable
    sys.path.insert(0, str(ROOT))

from comfyui_backdrop.runtime.backdrop.studio_job import studio_background  # noqa: E402
from comfyui_backdrop.runtime.backdrop.styles import get_style  # noqa: E402
from comfyui_backdrop.runtime.imaging import read_image, to_integer  # noqa: E402
from comfyui_backdrop.runtime.masking.product_mask import product_mask  # noqa: E402
from comfyui_backdrop.runtime.watermark import detect, embed  # noqa: E402
from tests.fixtures.watermark_images import skimage_photo  # noqa: E402

KEY = b"docs-watermark-map-demo-key-0000"
ID = 0x5EED_CAFE_01
TILE_HEIGHT = 300
SIDE = 768          # the host photo, px
SQUARE = 230        # the pasted square, px (9% of the host)


def _tile(rgb: np.ndarray, label: str) -> np.ndarray:
    h, w = rgb.shape[:2]
    tile = cv2.resize(rgb, (round(w * TILE_HEIGHT / h), TILE_HEIGHT), interpolation=cv2.INTER_AREA)
    bar = np.full((30, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, label, (8, 21), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (40, 40, 40), 1, cv2.LINE_AA)
    return np.vstack([tile, bar])


def main() -> None:
    loaded = read_image(ROOT / "assets" / "example_product.jpg")
    job = studio_background(loaded.rgb, get_style("Soft Spring"), alpha=product_mask(loaded.rgb))
    output = to_integer(job.image, 8)
    marked = embed(output, ID, KEY)
    host = cv2.resize(skimage_photo("rocket"), (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    h, w = marked.shape[:2]
    top, left = (h - SQUARE) // 2, (w - SQUARE) // 2  # the product's middle
    at_y, at_x = 420, 120                             # where it lands in the host
    composite = host.copy()
    composite[at_y:at_y + SQUARE, at_x:at_x + SQUARE] = marked[top:top + SQUARE, left:left + SQUARE]
    assert not detect(composite, KEY).found, "the whole-image read was expected to miss a 9% region"
    result = detect(composite, KEY, localise=True)
    assert result.found and result.payload == ID, "the region search did not read the pasted square"
    mask = result.presence.mask()
    overlay = composite.astype(np.float32)
    overlay[..., 1] = np.clip(overlay[..., 1] * (1 - 0.6 * mask) + 255 * 0.6 * mask, 0, 255)
    outline = composite.copy()
    cv2.rectangle(outline, (at_x, at_y), (at_x + SQUARE, at_y + SQUARE), (255, 64, 64), 3)
    tiles = [_tile(marked, "marked output (ID 5eedcafe01)"), _tile(outline, "pasted into another photo (9%)"),
             _tile(np.dstack([np.rint(mask * 255).astype(np.uint8)] * 3), "Backdrop Verify: presence MASK"),
             _tile(overlay.astype(np.uint8),
                   f"found: ID {result.payload:x}, p = {result.false_positive_probability:.0e}")]
    gap = np.full((TILE_HEIGHT + 30, 6, 3), 255, np.uint8)
    row = np.hstack([t for pair in zip(tiles, [gap] * len(tiles), strict=True) for t in pair][:-1])
    out = ROOT / "docs" / "images" / "watermark_presence_map.png"
    cv2.imwrite(str(out), cv2.cvtColor(row, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {out}: region {result.details['region_px']}, marked fraction {result.presence.marked_fraction:.2f}")


if __name__ == "__main__":
    main()
