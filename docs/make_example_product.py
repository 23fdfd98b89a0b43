"""Make assets/example_product.jpg: the espresso cup from scikit-image's `coffee` photo, cut out with a
hand-checked mask (GrabCut in a hand-placed region, the saucer bounded by a hand-fitted ellipse), placed
on a plain studio background the way a catalog product shot looks.

    .venv/bin/python docs/make_example_product.py
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import skimage.data

ROOT = Path(__file__).resolve().parents[1]


def coffee_cup_mask(image: np.ndarray) -> np.ndarray:
    """uint8 {0,1} mask of cup + saucer + spoon in skimage.data.coffee() (400x600)."""
    mask = np.full(image.shape[:2], cv2.GC_BGD, np.uint8)
    mask[5:395, 60:490] = cv2.GC_PR_FGD
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.grabCut(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), mask, None, bgd, fgd, 8, cv2.GC_INIT_WITH_MASK)
    fg = np.isin(mask, [cv2.GC_FGD, cv2.GC_PR_FGD]).astype(np.uint8)
    saucer = np.zeros_like(fg)
    cv2.ellipse(saucer, (277, 229), (201, 158), 0, 0, 360, 1, -1)  # excludes the table reflection
    fg &= (saucer | (np.arange(fg.shape[0])[:, None] < 200)).astype(np.uint8)
    flood = fg.copy()
    cv2.floodFill(flood, np.zeros((fg.shape[0] + 2, fg.shape[1] + 2), np.uint8), (0, 0), 2)
    fg[flood == 0] = 1  # fill holes
    _, labels, stats, _ = cv2.connectedComponentsWithStats(fg)
    return (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)


def main() -> None:
    cup = skimage.data.coffee()
    mask = cv2.erode(coffee_cup_mask(cup), np.ones((3, 3), np.uint8))
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.8)
    height, width = 540, 720
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    grey = 0.93 - 0.06 * (ys / height) - 0.05 * ((xs - width / 2) / width) ** 2
    canvas = np.dstack([grey, grey * 0.985, grey * 0.965])
    top, left = 110, (width - cup.shape[1]) // 2 - 10
    shadow = np.zeros((height, width), np.float32)
    cv2.ellipse(shadow, (left + 285, top + 250), (215, 160), 0, 0, 360, 1, -1)
    shadow = cv2.GaussianBlur(shadow, (0, 0), 18)
    canvas *= 1 - 0.22 * shadow[..., None]
    region = canvas[top : top + cup.shape[0], left : left + cup.shape[1]]
    region[:] = alpha[..., None] * (cup / 255.0) + (1 - alpha[..., None]) * region
    canvas += np.random.default_rng(0).normal(0, 0.004, canvas.shape)
    out = (np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8)
    path = ROOT / "assets" / "example_product.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
