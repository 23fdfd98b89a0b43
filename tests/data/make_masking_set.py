"""Build the real-photo masking set: ground-truth masks of objects in scikit-image's bundled photos.

    .venv/bin/python tests/data/make_masking_set.py [--preview DIR]

Only the masks (1-bit PNGs of a crop) and ``manifest.json`` are stored under ``tests/data/masking/``;
the photos are re-read from ``skimage.data`` at run time with the crop box in the manifest.
Each recipe below is how the mask was made: GrabCut with a hand-chosen box and hand-placed seeds, plus
per-object rules (the coffee saucer's floor shadow, the motorcycle's stereo disparity, the coin's contrast).
Every mask was then checked by eye on zoomed overlays (``--preview`` writes them) and the recipe fixed
until the outline sat on the object edge. Known limits are noted per object in the manifest.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage import data

OUT = Path(__file__).resolve().parent / "masking"
MARGIN = 8


def load_photo(source: str) -> np.ndarray:
    """RGB uint8 photo from skimage.data ("stereo_motorcycle" = its left view, "coins" as RGB)."""
    if source == "stereo_motorcycle":
        return data.stereo_motorcycle()[0]
    image = getattr(data, source)()
    return np.dstack([image] * 3) if image.ndim == 2 else image[..., :3]


def grabcut(image: np.ndarray, labels: np.ndarray, iterations: int) -> np.ndarray:
    """GrabCut from a GC_* label map; returns the product mask."""
    labels = labels.copy()
    cv2.setRNGSeed(1)
    cv2.grabCut(np.ascontiguousarray(image[..., ::-1]), labels, None, np.zeros((1, 65)), np.zeros((1, 65)),
                iterations, cv2.GC_INIT_WITH_MASK)
    return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)


def seeded_labels(shape: tuple[int, int], box: tuple[int, int, int, int], fg=(), bg=()) -> np.ndarray:
    """GC_BGD outside ``box`` (x0, y0, x1, y1), GC_PR_FGD inside, circles (x, y, r) of sure fg / bg."""
    labels = np.full(shape, cv2.GC_BGD, np.uint8)
    x0, y0, x1, y1 = box
    labels[y0:y1, x0:x1] = cv2.GC_PR_FGD
    for x, y, r in fg:
        cv2.circle(labels, (x, y), r, cv2.GC_FGD, -1)
    for x, y, r in bg:
        cv2.circle(labels, (x, y), r, cv2.GC_BGD, -1)
    return labels


def largest(mask: np.ndarray) -> np.ndarray:
    lab, count = ndi.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == sizes.argmax()


def smooth(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Remove 1-px jaggies from the outline."""
    return largest(cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma) > 0.5)


def coffee(image: np.ndarray) -> np.ndarray:
    """Cup, saucer and spoon. The saucer's cast shadow on the wood (lower left) is excluded by colour."""
    h, w = image.shape[:2]
    first = grabcut(image, seeded_labels((h, w), (70, 12, 485, 396), fg=[
        (290, 150, 30), (260, 340, 10), (110, 250, 8), (360, 290, 10), (450, 250, 6), (230, 270, 6)]), 8)
    inner = np.zeros((h, w), np.uint8)
    cv2.fillPoly(inner, [np.array([(110, 200), (108, 260), (122, 300), (148, 335), (185, 362), (235, 378),
                                   (300, 382), (380, 370), (440, 330), (470, 260), (470, 150), (430, 100),
                                   (425, 60), (395, 60), (180, 60), (100, 120)], np.int32)], 1)
    inner = inner.astype(bool)
    rgb = image.astype(np.float32)
    r, g = rgb[..., 0], rgb[..., 1]
    yy, xx = np.mgrid[0:h, 0:w]
    rim_zone = ~inner & ((yy > 190) | (xx < 110))  # around the saucer rim where its shadow falls
    dark, wood, red = rgb.max(axis=2) < 75, (g > 0.5 * r) & (r > 110), (r >= 80) & (g < 0.4 * r)
    labels = np.where(first, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    labels[rim_zone & (dark | wood)] = cv2.GC_BGD
    labels[rim_zone & red & first] = cv2.GC_FGD
    labels[inner & first] = cv2.GC_FGD
    labels[:5], labels[-2:], labels[:, :5], labels[:, -5:] = (cv2.GC_BGD,) * 4
    mask = ndi.binary_fill_holes(largest(grabcut(image, labels, 6)))
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN,
                            cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))).astype(bool)
    return smooth(mask, 1.2)


def motorcycle(image: np.ndarray) -> np.ndarray:
    """The Middlebury motorcycle, from its ground-truth disparity: closer than the floor plane and the wall.

    Pixels without disparity (occlusions) are decided by GrabCut; gaps between the wheel spokes stay
    background, as they are in the photo.
    """
    disp = data.stereo_motorcycle()[2]
    h, w = disp.shape
    known = np.isfinite(disp)
    yy, xx = np.mgrid[0:h, 0:w]
    sel = known & (yy > 300)
    design = np.stack([xx[sel], yy[sel], np.ones(sel.sum())], axis=1).astype(float)
    values = disp[sel].astype(float)
    keep = np.ones(len(values), bool)
    for _ in range(8):  # lower envelope: the floor is the farthest surface in the bottom half
        coef, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        keep = values - design @ coef < 0.8
    floor = np.stack([xx, yy, np.ones_like(xx)], axis=-1) @ coef
    with np.errstate(invalid="ignore"):
        bike = known & (disp > 33) & ((disp - floor > 1.5) | (yy < 300))
    bike = largest(bike)
    other = known & ~bike
    k3 = np.ones((3, 3), np.uint8)
    labels = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
    labels[ndi.distance_transform_edt(~bike) < ndi.distance_transform_edt(~other)] = cv2.GC_PR_FGD
    labels[cv2.erode(other.astype(np.uint8), k3).astype(bool)] = cv2.GC_BGD
    labels[cv2.erode(bike.astype(np.uint8), k3).astype(bool)] = cv2.GC_FGD
    mask = smooth(largest(grabcut(image, labels, 6)), 0.8)
    mask[118:146, 145:154] = False  # a bench slat behind the grab rail
    return largest(mask)


def shuttle(image: np.ndarray) -> np.ndarray:
    """The space-shuttle model behind the astronaut, down to the wings' trailing edge (cut at y=226).

    Its tank tip touches the top of the photo; below y=226 the stand and engines are too blurred to outline.
    """
    h, w = image.shape[:2]
    cut = 226
    fg = ([(418, y, 3) for y in range(5, 190, 8)] + [(385, y, 2) for y in range(52, 170, 8)]
          + [(395, y, 3) for y in range(95, 225, 8)] + [(444, y, 2) for y in range(48, 224, 8)]
          + [(370, 210, 3), (440, 215, 3), (387, 47, 1), (443, 43, 1)])
    bg = ([(358, y, 3) for y in range(0, 165, 8)] + [(372, y, 3) for y in range(0, 30, 8)]
          + [(394, 8, 3), (433, 12, 3), (452, 20, 3)] + [(462, y, 3) for y in range(0, 200, 8)]
          + [(466, y, 3) for y in range(200, cut, 8)]
          + [(395, 40, 1), (377, 40, 2), (452, 38, 1), (435, 30, 1)])
    mask = grabcut(image, seeded_labels((h, w), (348, 0, 472, cut), fg, bg), 10)
    mask[cut:] = False
    mask = smooth(ndi.binary_fill_holes(mask), 0.8)  # the model has no holes (the tank's highlight is one)
    mask[cut:] = False
    return mask


def coin(image: np.ndarray) -> np.ndarray:
    """The large coin at the top right of ``coins``: Otsu threshold of its crop, holes filled."""
    x0, y0, x1, y1 = 300, 6, 372, 80
    gray = cv2.GaussianBlur(image[y0:y1, x0:x1, 0].astype(np.float32), (0, 0), 1.0).astype(np.uint8)
    _, binary = cv2.threshold(gray, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = np.zeros(image.shape[:2], bool)
    mask[y0:y1, x0:x1] = largest(ndi.binary_fill_holes(binary.astype(bool)))
    return mask


OBJECTS = {
    "coffee": ("coffee", coffee, "espresso cup, saucer and spoon on wood; rim vs its shadow +-2 px"),
    "motorcycle": ("stereo_motorcycle", motorcycle, "spoke gaps are background (holes); mirror stem partly missed"),
    "shuttle": ("astronaut", shuttle, "white model on a light mottled backdrop; cut straight at y=0, y=226"),
    "coin": ("coins", coin, "grayscale, small (60 px)"),
}


def crop_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return (max(0, int(xs.min()) - MARGIN), max(0, int(ys.min()) - MARGIN),
            min(w, int(xs.max()) + 1 + MARGIN), min(h, int(ys.max()) + 1 + MARGIN))


def preview(image: np.ndarray, mask: np.ndarray, path: Path) -> None:
    """Cutout on magenta beside the photo with the outline in green."""
    cut = np.where(mask[..., None], image, np.array([255, 0, 255], np.uint8))
    outline = image.copy()
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(outline, contours, -1, (0, 255, 0), 1)
    cv2.imwrite(str(path), np.hstack([cut, outline])[..., ::-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preview", type=Path, help="write overlay PNGs here to check the masks by eye")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    manifest = []
    for name, (source, recipe, note) in OBJECTS.items():
        image = load_photo(source)
        mask = recipe(image)
        x0, y0, x1, y1 = crop_box(mask)
        crop = mask[y0:y1, x0:x1]
        cv2.imwrite(str(OUT / f"{name}.png"), crop.astype(np.uint8) * 255, [cv2.IMWRITE_PNG_BILEVEL, 1])
        manifest.append({"name": name, "source": f"skimage.data.{source}", "box": [x0, y0, x1, y1],
                         "mask": f"{name}.png", "area": int(crop.sum()), "note": note})
        if args.preview:
            args.preview.mkdir(parents=True, exist_ok=True)
            preview(image[y0:y1, x0:x1], crop, args.preview / f"{name}.png")
        print(f"{name}: box {x0},{y0},{x1},{y1}  {int(crop.sum())} px")
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
