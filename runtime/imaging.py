"""Reading, normalising and writing images: 8/16-bit, grayscale, RGBA. Files are read through ``image_gate``
(limits, format, frames, EXIF orientation) and written through ``files`` (atomic, never overwriting)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InvalidInputError
from .files import write_bytes_exclusive
from .image_gate import DEFAULT_READ_LIMITS, MAX_SIDE, ReadLimits, decode_image_file

__all__ = ["IMAGE_SUFFIXES", "MAX_SIDE", "MIN_SIDE", "WRITABLE_SUFFIXES", "LoadedImage", "ReadLimits",
           "check_size", "image_files", "normalize_array", "read_image", "to_integer", "write_image"]

MIN_SIDE = 4
WRITABLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")
# What read_image accepts and image_files lists. GIF is listed: a single-frame GIF reads like any image and an
# animated one is refused with its frame count (image_gate), so a folder batch reports it as skipped.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif")
TO_INTEGER_BLOCK = 1 << 22  # values converted at a time in to_integer (a 32 MB float64 scratch)
_UNIT_8 = np.arange(256, dtype=np.float32) / np.float32(255.0)  # code value -> float32 0..1
_UNIT_16 = np.arange(65536, dtype=np.float32) / np.float32(65535.0)


@dataclass
class LoadedImage:
    """An image as float32 RGB in 0..1, its alpha (or None) and the bit depth it came in.

    ``orientation`` is the EXIF orientation that was applied on reading (1 = none); ``format`` the
    decoder's name for the file type (``PNG``, ``JPEG``...), empty for arrays.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int
    source: Path | None = None
    orientation: int = 1
    format: str = ""

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.rgb.shape[1], self.rgb.shape[0]

    @property
    def fully_transparent(self) -> bool:
        """True when there is an alpha channel and no pixel is even half opaque.

        Read as a cut-out, such an image holds no product: its product mask would be empty. The studio
        job refuses it (``backdrop.studio_job.EMPTY_CUTOUT``); other callers decide for themselves.
        """
        return self.alpha is not None and not bool((self.alpha > 0.5).any())


def normalize_array(array: np.ndarray, max_side: int = MAX_SIDE) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Turn gray / RGB / RGBA arrays of uint8, uint16 or float into float32 RGB + alpha + bit depth.

    The input array is never modified.
    """
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise InvalidInputError(f"expected an image of shape HxW, HxWx1, HxWx3 or HxWx4, got {arr.shape}")
    if arr.dtype == np.uint8:  # a lookup table: the same float32 values as astype / 255, in one pass
        bit_depth, data = 8, _UNIT_8[arr]
    elif arr.dtype == np.uint16:
        bit_depth, data = 16, _UNIT_16[arr]
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
    check_size(rgb.shape[0], rgb.shape[1], max_side)
    return np.ascontiguousarray(rgb, dtype=np.float32), alpha, bit_depth


def check_size(height: int, width: int, max_side: int = MAX_SIDE) -> None:
    if min(height, width) < MIN_SIDE:
        raise InvalidInputError(f"image is {width}x{height}; each side must be at least {MIN_SIDE} px")
    if max(height, width) > max_side:
        raise InvalidInputError(f"image is {width}x{height}; sides above {max_side} px are not supported")


def read_image(path: str | os.PathLike, limits: ReadLimits | None = None) -> LoadedImage:
    """Read an image file (8/16-bit, gray, RGB or RGBA) without changing its pixel values.

    The file passes ``image_gate`` first: size on disk and pixel count are checked against ``limits``
    (default ``image_gate.DEFAULT_READ_LIMITS``: 528 MiB, 67.1 MP, 16384 px a side) before decoding,
    animated images are refused, the EXIF orientation is applied. Every failure, decoder errors and
    running out of memory included, is an ``InvalidInputError`` naming the file.
    """
    limits = limits or DEFAULT_READ_LIMITS
    path = Path(path)
    decoded = decode_image_file(path, limits)
    try:
        rgb, alpha, bit_depth = normalize_array(decoded.pixels, limits.max_side)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{path.name}: {exc}") from None
    except MemoryError:
        header = decoded.header
        raise InvalidInputError(f"{path.name} ({header.width}x{header.height}) needs more memory than is free; "
                                "downscale it or free memory") from None
    return LoadedImage(rgb=rgb, alpha=alpha, bit_depth=bit_depth if bit_depth in (8, 16) else 8, source=path,
                       orientation=decoded.header.orientation, format=decoded.header.format)


def to_integer(rgb: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float 0..1 to uint8/uint16 with rounding, so 8-bit in -> float -> 8-bit out is lossless.

    Rounds in float64, a block of rows at a time, so a large image needs no full-size float64 copy.
    """
    scale, dtype = (65535.0, np.uint16) if bit_depth == 16 else (255.0, np.uint8)
    values = np.asarray(rgb)
    out = np.empty(values.shape, dtype=dtype)
    if values.ndim == 0 or values.size == 0:
        out[...] = np.clip(np.rint(np.asarray(values, dtype=np.float64) * scale), 0, scale)
        return out
    per_row = max(1, values[0].size)
    rows = max(1, TO_INTEGER_BLOCK // per_row)
    for start in range(0, values.shape[0], rows):
        block = np.asarray(values[start:start + rows], dtype=np.float64) * scale
        np.rint(block, out=block)
        np.clip(block, 0, scale, out=block)
        out[start:start + rows] = block
    return out


def write_image(path: str | os.PathLike, rgb: np.ndarray, bit_depth: int = 8, alpha: np.ndarray | None = None,
                quality: int = 95, rename: bool = True) -> Path:
    """Write atomically, never overwriting: returns the path actually written (may get a ``-N`` suffix; with
    ``rename=False`` an existing entry at ``path`` raises ``FileExistsError`` instead)."""
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
        cv2.cvtColor(channels, cv2.COLOR_RGBA2BGRA, dst=channels)  # our own array: converted in place
    else:
        cv2.cvtColor(channels, cv2.COLOR_RGB2BGR, dst=channels)
    params: list[int] = []
    if suffix in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif suffix == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
    ok, encoded = cv2.imencode(suffix, channels, params)
    if not ok:
        raise InvalidInputError(f"OpenCV could not encode {path.name}")
    return write_bytes_exclusive(path, encoded.tobytes(), rename=rename)


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (hidden files left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"{folder} is not a folder")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
