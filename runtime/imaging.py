"""Reading, normalising and writing images: 8/16-bit, grayscale, RGBA (files go through ``files``: atomic, never overwritten)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InvalidInputError
from .files import write_bytes_exclusive

MIN_SIDE = 4
MAX_SIDE = 16384
WRITABLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")  # what read_image accepts


@dataclass
class LoadedImage:
    """An image as float32 RGB in 0..1, its alpha (or None) and the bit depth it came in."""

    rgb: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int
    source: Path | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.rgb.shape[1], self.rgb.shape[0]


def normalize_array(array: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Turn gray / RGB / RGBA arrays of uint8, uint16 or float into float32 RGB + alpha + bit depth.

    The input array is never modified.
    """
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise InvalidInputError(f"expected an image of shape HxW, HxWx1, HxWx3 or HxWx4, got {arr.shape}")
    if arr.dtype == np.uint8:
        bit_depth, data = 8, arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        bit_depth, data = 16, arr.astype(np.float32) / 65535.0
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InvalidInputError("the image holds NaN or infinite values")
        bit_depth, data = 32, np.clip(arr.astype(np.float32), 0.0, 1.0)
    else:
        raise InvalidInputError(f"unsupported image dtype {arr.dtype}; use uint8, uint16 or float")
    channels = data.shape[2]
    alpha = None
    if channels in (2, 4):
        alpha = data[:, :, -1].copy()
        data = data[:, :, :-1]
    rgb = np.repeat(data, 3, axis=2) if data.shape[2] == 1 else data
    check_size(rgb.shape[0], rgb.shape[1])
    return np.ascontiguousarray(rgb, dtype=np.float32), alpha, bit_depth


def check_size(height: int, width: int) -> None:
    if min(height, width) < MIN_SIDE:
        raise InvalidInputError(f"image is {width}x{height}; each side must be at least {MIN_SIDE} px")
    if max(height, width) > MAX_SIDE:
        raise InvalidInputError(f"image is {width}x{height}; sides above {MAX_SIDE} px are not supported")


def read_image(path: str | os.PathLike) -> LoadedImage:
    """Read an image file (8/16-bit, gray, RGB or RGBA) without changing its pixel values."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path} does not exist or is not a file")
    data = np.fromfile(str(path), dtype=np.uint8)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if arr is None:
        raise InvalidInputError(f"{path.name} is not a readable image (corrupt or unsupported format)")
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    if arr.dtype not in (np.uint8, np.uint16):
        arr = arr.astype(np.float32)
    rgb, alpha, bit_depth = normalize_array(arr)
    return LoadedImage(rgb=rgb, alpha=alpha, bit_depth=bit_depth if bit_depth in (8, 16) else 8, source=path)


def to_integer(rgb: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float 0..1 to uint8/uint16 with rounding, so 8-bit in -> float -> 8-bit out is lossless."""
    scale, dtype = (65535.0, np.uint16) if bit_depth == 16 else (255.0, np.uint8)
    return np.clip(np.rint(np.asarray(rgb, dtype=np.float64) * scale), 0, scale).astype(dtype)


def write_image(path: str | os.PathLike, rgb: np.ndarray, bit_depth: int = 8, alpha: np.ndarray | None = None,
                quality: int = 95) -> Path:
    """Write atomically, never overwriting: returns the path actually written (may get a ``-N`` suffix)."""
    import cv2

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITABLE_SUFFIXES:
        raise InvalidInputError(f"cannot write {path.name}: use one of {', '.join(WRITABLE_SUFFIXES)}")
    if bit_depth == 16 and suffix not in (".png", ".tif", ".tiff"):
        bit_depth = 8  # JPEG and WebP are 8-bit formats
    channels = to_integer(rgb, bit_depth)
    if alpha is not None and suffix in (".png", ".webp", ".tif", ".tiff"):
        channels = np.dstack([channels, to_integer(alpha, bit_depth)])
        channels = cv2.cvtColor(channels, cv2.COLOR_RGBA2BGRA)
    else:
        channels = cv2.cvtColor(channels, cv2.COLOR_RGB2BGR)
    params: list[int] = []
    if suffix in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif suffix == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
    ok, encoded = cv2.imencode(suffix, channels, params)
    if not ok:
        raise InvalidInputError(f"OpenCV could not encode {path.name}")
    return write_bytes_exclusive(path, encoded.tobytes())


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (hidden files left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"{folder} is not a folder")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
