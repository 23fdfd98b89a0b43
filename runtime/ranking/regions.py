"""Where each defect is looked for: rings around the product at the analysis resolution.

Candidates are analysed at most ANALYSIS_SIDE pixels a side (area-averaged), so a ranking costs the same for a
512 px and a 4000 px picture. Ring widths are in units of ``unit`` = 1.2 % of the image's geometric side (at least
3 px), so the rings cover the same share of the picture at every size.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..inpainting.seam import hard_product

ANALYSIS_SIDE = 768
UNIT_FRACTION = 0.012
MIN_UNIT = 3.0


@dataclass(frozen=True)
class Regions:
    """Distances from the product and the rings the defect measures read (all at the analysis resolution)."""

    product: np.ndarray  # bool [h,w]
    outside: np.ndarray  # float32 [h,w]: distance to the nearest product pixel (0 on the product)
    inside: np.ndarray  # float32 [h,w]: distance to the nearest background pixel (0 off the product)
    normal: tuple[np.ndarray, np.ndarray]  # unit vector pointing away from the product (x, y)
    unit: float
    downscaled: bool = False  # analysed below full resolution: edge pixels mix product and background

    @property
    def clear_of_edge(self) -> float:
        """Distance (px) beyond which a 3x3 gradient no longer sees the product edge: 1.5 at full resolution
        (sqrt(2) is the farthest a 3x3 neighbour reaches), one pixel more when area-averaging mixed the edge."""
        return 2.5 if self.downscaled else 1.5

    @property
    def empty(self) -> bool:
        """No product, or nothing but product: there is no edge to judge."""
        return not self.product.any() or self.product.all()

    def ring(self, inner: float, outer: float) -> np.ndarray:
        """Background pixels with ``inner < distance <= outer`` units from the product."""
        return (self.outside > inner * self.unit) & (self.outside <= outer * self.unit)

    def beside_edge(self, outer: float) -> np.ndarray:
        """Background pixels from ``clear_of_edge`` to ``outer`` units out: beside the edge, not on it."""
        return (self.outside > self.clear_of_edge) & (self.outside <= outer * self.unit)


def analysis_size(height: int, width: int) -> tuple[int, int]:
    """(h, w) scaled so the longer side is at most ANALYSIS_SIDE."""
    scale = min(1.0, ANALYSIS_SIDE / max(height, width))
    return max(8, round(height * scale)), max(8, round(width * scale))


def to_analysis(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An RGB picture (float 0..1) at the analysis size."""
    rgb = np.clip(image[..., :3].astype(np.float32, copy=False), 0.0, 1.0)
    if rgb.shape[:2] == size:
        return rgb
    return cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """float32 Lab (L 0..100, a and b about -128..127) of an sRGB picture in 0..1."""
    return cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2LAB)


def product_regions(product_alpha: np.ndarray, size: tuple[int, int]) -> Regions:
    """The rings for ``product_alpha`` (1 = product) at the analysis ``size``."""
    alpha = product_alpha.astype(np.float32, copy=False)
    downscaled = alpha.shape != size
    if downscaled:
        alpha = cv2.resize(alpha, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    product = hard_product(alpha)
    unit = max(MIN_UNIT, UNIT_FRACTION * float(np.sqrt(size[0] * size[1])))
    if not product.any() or product.all():
        zeros = np.zeros(size, np.float32)
        return Regions(product, zeros, zeros, (zeros, zeros), unit, downscaled)
    outside = cv2.distanceTransform((~product).astype(np.uint8), cv2.DIST_L2, 5)
    inside = cv2.distanceTransform(product.astype(np.uint8), cv2.DIST_L2, 5)
    gx = cv2.Sobel(outside, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(outside, cv2.CV_32F, 0, 1, ksize=3)
    norm = np.maximum(np.hypot(gx, gy), 1e-6)
    return Regions(product, outside, inside, (gx / norm, gy / norm), unit, downscaled)
