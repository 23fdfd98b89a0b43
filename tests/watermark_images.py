"""Real photos and the attacks the watermark must survive, shared by the watermark tests and benchmark.

Photos come from scikit-image's bundled data (offline); the studio shot is drawn by tests.images. Attacks
use the libraries a user would: PIL for JPEG (4:2:0) and WebP, OpenCV for resizing, blur and rotation.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from tests.images import studio_product_photo


def skimage_photo(name: str) -> np.ndarray:
    """A bundled scikit-image photo as uint8 RGB (gray ones are stacked to RGB)."""
    from skimage import data

    photo = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    if photo.ndim == 2:
        photo = np.dstack([photo] * 3)
    return np.ascontiguousarray(photo[:, :, :3]).astype(np.uint8)


def real_photos() -> dict[str, np.ndarray]:
    """A few real photos, 400-640 px: portrait, food, still life, outdoor, microscopy."""
    return {name: skimage_photo(name) for name in ("astronaut", "coffee", "rocket", "motorcycle",
                                                   "immunohistochemistry")}


def studio_shot(height: int = 480, width: int = 640, seed: int = 1) -> np.ndarray:
    """A product on a flat, near-white studio sweep (uint8 RGB)."""
    return studio_product_photo(height, width, seed=seed)[0]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def jpeg(image: np.ndarray, quality: int = 50) -> np.ndarray:
    """Round-trip through PIL JPEG with 4:2:0 chroma subsampling."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality, subsampling=2)
    return np.array(Image.open(buf).convert("RGB"))


def webp(image: np.ndarray, quality: int = 80) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "WEBP", quality=quality)
    return np.array(Image.open(buf).convert("RGB"))


def resize(image: np.ndarray, sx: float, sy: float | None = None) -> np.ndarray:
    """Resize by (sx, sy) with the interpolation an editor would pick (area down, cubic up)."""
    sy = sx if sy is None else sy
    h, w = image.shape[:2]
    size = (max(1, round(w * sx)), max(1, round(h * sy)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if sx * sy < 1 else cv2.INTER_CUBIC)


def crop_area(image: np.ndarray, fraction: float, fx: float, fy: float) -> np.ndarray:
    """A crop keeping ``fraction`` of the area (same aspect), its corner at (fx, fy) of the free range."""
    h, w = image.shape[:2]
    ch, cw = int(h * fraction**0.5), int(w * fraction**0.5)
    y0, x0 = int((h - ch) * fy), int((w - cw) * fx)
    return image[y0:y0 + ch, x0:x0 + cw]


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate about the centre, same canvas size, black corners (what a quick rotate tool does)."""
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def blur(image: np.ndarray, sigma: float = 0.8) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigma)


def tone(image: np.ndarray, brightness: float = 12.0, contrast: float = 0.85, gamma: float = 1.25) -> np.ndarray:
    """Brightness (+levels), contrast (about mid-grey) then gamma."""
    x = (image.astype(np.float32) - 128.0) * contrast + 128.0 + brightness
    x = 255.0 * (np.clip(x, 0, 255) / 255.0) ** gamma
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def noise_image(height: int, width: int, seed: int, sigma: float = 40.0, smooth: float = 0.0) -> np.ndarray:
    """Gaussian noise around mid-grey, optionally blurred (a stand-in for texture with no mark)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(128.0, sigma, (height, width, 3)).astype(np.float32)
    if smooth > 0:
        img = cv2.GaussianBlur(img, (0, 0), smooth)
    return np.clip(img, 0, 255).astype(np.uint8)
