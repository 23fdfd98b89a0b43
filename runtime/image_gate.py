"""The one gate every image file passes before it is decoded: limits, format, frames, orientation.

Every image read in the project (``backdrop run``, ``verify``, headless workflows, the image-folder
and LoadImage nodes, training datasets) goes through :func:`decode_image_file`, via
``imaging.read_image``. Files come from users and from anyone who can reach a ComfyUI server, so
the rules, in order:

1. **A regular file.** A missing path, a folder, a FIFO or a device is refused without being read
   (opening a FIFO would block forever). The file is opened once, and the checks below and the decoder
   all see that one open file.
2. **Size on disk.** Above ``ReadLimits.max_bytes`` the file is refused before a byte is read.
3. **Pixels, from the header.** Width and height come from the header alone (PIL's lazy ``Image.open``;
   TIFF's first directory is read with PIL's tag parser, since PIL cannot open every TIFF that OpenCV
   decodes, such as float or 16-bit RGB). More than ``max_pixels`` pixels, or a side above ``max_side``,
   is refused before decoding: a 2.4 MB PNG can declare 50000 x 50000 pixels, which would take 10 GB
   to decode. PIL's own decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``, twice it raises) also
   applies to the formats PIL parses; it reads as the same error.
4. **Formats.** PNG, JPEG (MPO too: phone JPEGs with a depth or preview image, first image used), WebP,
   TIFF (the first page of a multi-page file), BMP and GIF. Anything else is refused by its contents,
   whatever its name.
5. **One frame.** An animated GIF, WebP or PNG (APNG) with more than one frame is refused, naming the
   frame count: a product photo is one image, and silently taking frame 0 of an animation is a
   surprise. A single-frame GIF is read like any other image.
6. **Orientation.** The EXIF orientation (tag 274) is applied, as ComfyUI's LoadImage does with
   ``ImageOps.exif_transpose``: a phone photo taken upright comes out upright.
7. **Every decoder failure is an** ``InvalidInputError`` naming the file (corrupt data, ``cv2.error``,
   PIL errors, running out of memory), so per-file handlers report it and carry on with the batch.

Pixel values are never changed: OpenCV decodes everything but GIF (8/16-bit, float TIFF, alpha kept),
PIL decodes GIF (palette to RGB, or RGBA when the GIF has a transparent colour).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InvalidInputError

MAX_SIDE = 16384
DEFAULT_MAX_PIXELS = 1 << 26  # 67.1 MP: 8192 x 8192, an 8000 x 6000 (48 MP) photo with room to spare
DEFAULT_MAX_BYTES = 8 * DEFAULT_MAX_PIXELS + (16 << 20)  # uncompressed 16-bit RGBA at the pixel limit + metadata
FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "TIFF", "BMP", "GIF")
ANIMATED_FORMATS = ("GIF", "PNG", "WEBP")  # more than one frame here is an animation, refused
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
ORIENTATION_TAG = 0x0112
DEFAULT_HOW_TO_RAISE = "raise the limit by passing ReadLimits(max_pixels=..., max_bytes=...) to read_image"


@dataclass(frozen=True)
class ReadLimits:
    """What an image file may cost before it is decoded. The defaults take any camera photo up to 67 MP.

    - ``max_bytes``: size on disk (default 528 MiB: an uncompressed 16-bit RGBA image at the pixel limit);
    - ``max_pixels``: width x height from the header (default 2**26 = 67.1 MP, e.g. 8192 x 8192);
      decoding costs about 12 bytes per pixel in float32 RGB, plus the working copies of each step;
    - ``max_side``: the longer side in pixels (default 16384, the most the rest of the runtime accepts);
    - ``how_to_raise``: the last sentence of the refusal, telling the user which setting raises the limit
      (a command-line tool passes its own flag's name here).
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: int = MAX_SIDE
    how_to_raise: str = DEFAULT_HOW_TO_RAISE

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_side"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInputError(f"ReadLimits.{name} must be a positive whole number, got {value!r}")


DEFAULT_READ_LIMITS = ReadLimits()


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, before any pixel is decoded."""

    format: str
    width: int
    height: int
    frames: int = 1
    orientation: int = 1  # EXIF orientation 1..8 (1 = as stored)


@dataclass(frozen=True)
class DecodedImage:
    """Pixels as decoded (uint8, uint16 or float32; HxW, HxWx3 RGB or HxWx4 RGBA), orientation applied."""

    pixels: np.ndarray
    header: ImageHeader


def decode_image_file(path: str | os.PathLike, limits: ReadLimits | None = None) -> DecodedImage:
    """Check ``path`` against ``limits`` (default :data:`DEFAULT_READ_LIMITS`), then decode it.

    Every refusal and every decoder failure raises ``InvalidInputError`` naming the file.
    """
    limits = limits or DEFAULT_READ_LIMITS
    path = Path(path)
    with _open_regular(path, limits) as fh:
        header = read_header(fh, path, limits)
        fh.seek(0)
        data = fh.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:  # it grew after the size check
        raise InvalidInputError(_too_large(path, len(data), limits))
    try:
        pixels = _decode(data, header, path)
        del data
        pixels = apply_orientation(pixels, header.orientation)
    except InvalidInputError:
        raise
    except MemoryError as exc:
        raise InvalidInputError(f"{path.name} ({header.width}x{header.height}) needs more memory than is free to "
                                f"decode; downscale it or free memory ({_kind(exc)})") from None
    except Exception as exc:  # decoders raise many types (cv2.error, OSError, SyntaxError, struct.error...)
        raise InvalidInputError(f"{path.name} could not be decoded as {header.format} (corrupt or unsupported "
                                f"data: {_kind(exc)}: {exc})") from None
    return DecodedImage(pixels=pixels, header=header)


def read_file_bytes(path: str | os.PathLike, limits: ReadLimits | None = None) -> bytes:
    """The bytes of a regular file no larger than ``limits.max_bytes`` (for readers of image metadata)."""
    limits = limits or DEFAULT_READ_LIMITS
    path = Path(path)
    with _open_regular(path, limits) as fh:
        data = fh.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise InvalidInputError(_too_large(path, len(data), limits))
    return data


def read_header(fh, path: Path, limits: ReadLimits) -> ImageHeader:
    """The header of the open file ``fh``, checked against ``limits``; no pixel data is decoded."""
    prefix = fh.read(16)
    fh.seek(0)
    header = _tiff_header(fh, path) if prefix[:4] in TIFF_MAGIC else _pil_header(fh, path, limits)
    check_header(header, path, limits)
    return header


def check_header(header: ImageHeader, path: Path, limits: ReadLimits) -> None:
    """Refuse a header whose pixel count or side is over ``limits``."""
    width, height = header.width, header.height
    if width < 1 or height < 1:
        raise InvalidInputError(f"{path.name} declares an empty image ({width}x{height})")
    if width * height > limits.max_pixels:
        raise InvalidInputError(
            f"{path.name} is {width}x{height} ({width * height / 1e6:.1f} megapixels); images above "
            f"{limits.max_pixels / 1e6:.1f} megapixels are refused before decoding, to keep memory bounded. "
            f"Downscale the image, or {limits.how_to_raise}")
    if max(width, height) > limits.max_side:
        raise InvalidInputError(
            f"{path.name} is {width}x{height}; sides above {limits.max_side} px are refused before decoding. "
            f"Downscale the image, or {limits.how_to_raise}")


def apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels as they should be seen, for EXIF orientation 1..8 (what ``ImageOps.exif_transpose`` does)."""
    turned = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }.get(int(orientation))
    return pixels if turned is None else np.ascontiguousarray(turned(pixels))


# ---- internals -------------------------------------------------------------------------------------------

class _open_regular:
    """Open ``path`` for reading only if it is a regular file within the size limit (fstat of the open fd)."""

    def __init__(self, path: Path, limits: ReadLimits) -> None:
        self.path, self.limits, self.fh = path, limits, None

    def __enter__(self):
        path = self.path
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(path, flags)  # O_NONBLOCK: a FIFO does not block the open; it is refused below
        except FileNotFoundError:
            raise InvalidInputError(f"{path} does not exist or is not a file") from None
        except IsADirectoryError:
            raise InvalidInputError(f"{path} is a folder, not an image file") from None
        except OSError as exc:
            raise InvalidInputError(f"{path} cannot be opened: {exc.strerror or exc}") from None
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise InvalidInputError(f"{path} is a folder, not an image file")
            if not stat.S_ISREG(info.st_mode):
                raise InvalidInputError(f"{path} is not a regular file (a pipe, socket or device); it is not read")
            if info.st_size == 0:
                raise InvalidInputError(f"{path.name} is empty (0 bytes)")
            if info.st_size > self.limits.max_bytes:
                raise InvalidInputError(_too_large(path, info.st_size, self.limits))
            self.fh = os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        return self.fh

    def __exit__(self, *exc) -> None:
        self.fh.close()


def _kind(exc: BaseException) -> str:
    """``cv2.error``, ``struct.error``, ``MemoryError``: the exception's name as its library spells it."""
    kind = type(exc)
    module = kind.__module__.split(".")[0]
    return kind.__name__ if module == "builtins" else f"{module}.{kind.__name__}"


def _too_large(path: Path, size: int, limits: ReadLimits) -> str:
    return (f"{path.name} is {size / 2**20:.1f} MiB; image files above {limits.max_bytes / 2**20:.0f} MiB are "
            f"refused before reading. Use a smaller file, or {limits.how_to_raise}")


def _unreadable(path: Path, detail: str = "") -> InvalidInputError:
    extra = f" ({detail})" if detail else ""
    return InvalidInputError(f"{path.name} is not a readable image (corrupt or unsupported format{extra}); "
                             f"supported: {', '.join(f for f in FORMATS if f != 'MPO')}")


def _pil_header(fh, path: Path, limits: ReadLimits) -> ImageHeader:
    import re

    from PIL import Image, UnidentifiedImageError

    try:
        picture = Image.open(fh, formats=[f for f in FORMATS if f != "MPO"])  # JPEG's opener gives MPO too
    except Image.DecompressionBombError as exc:  # PIL's own guard, far above our default limit
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1)) / 1e6:.1f} megapixels" if found else "more pixels than PIL allows"
        raise InvalidInputError(
            f"{path.name} declares {pixels}; images above {limits.max_pixels / 1e6:.1f} megapixels are refused "
            f"before decoding, to keep memory bounded (PIL's own guard also refuses above "
            f"{2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.1f} megapixels). Downscale the image, or "
            f"{limits.how_to_raise}") from None
    except UnidentifiedImageError:
        raise _unreadable(path) from None
    except Exception as exc:  # a damaged header raises SyntaxError, struct.error, OSError, ValueError...
        raise _unreadable(path, f"{_kind(exc)}: {exc}") from None
    with picture:
        fmt = picture.format or "?"
        width, height = picture.size
        check_header(ImageHeader(fmt, width, height), path, limits)  # before anything scans frames
        frames = 1
        try:
            if fmt in ANIMATED_FORMATS and getattr(picture, "is_animated", False):
                frames = int(getattr(picture, "n_frames", 2))
        except Exception as exc:
            raise _unreadable(path, f"{_kind(exc)}: {exc}") from None
        try:
            orientation = _pil_orientation(picture)
        except Exception:  # damaged EXIF is common and harmless to the pixels: read the image as stored
            orientation = 1
    if frames > 1:
        raise InvalidInputError(
            f"{path.name} is an animated {fmt} with {frames} frames; Backdrop reads single images only. "
            "Export the frame you want as a PNG or JPEG")
    return ImageHeader(fmt, width, height, frames, orientation)


def _pil_orientation(picture) -> int:
    from PIL import Image

    if picture.format == "PNG":  # PngImageFile.getexif() would decode the whole image to find a late eXIf
        raw = picture.info.get("exif")
        exif = Image.Exif()
        if raw:
            exif.load(raw)
    else:
        exif = picture.getexif()
    value = exif.get(ORIENTATION_TAG, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _tiff_header(fh, path: Path) -> ImageHeader:
    """Size and orientation from the first directory of a TIFF (PIL's tag parser; no pixel data read)."""
    from PIL import TiffImagePlugin

    try:
        head = fh.read(8)
        if head[2:4] in (b"+\x00", b"\x00+"):  # BigTIFF: a 16-byte header
            head += fh.read(8)
        directory = TiffImagePlugin.ImageFileDirectory_v2(head)
        fh.seek(directory.next)
        directory.load(fh)
        width, height = int(directory[256]), int(directory[257])
        orientation = directory.get(ORIENTATION_TAG, 1)
    except Exception as exc:  # truncated or damaged directories raise KeyError, struct.error, OSError...
        raise _unreadable(path, f"TIFF header: {_kind(exc)}: {exc}") from None
    orientation = orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1
    return ImageHeader("TIFF", width, height, 1, orientation)


def _decode(data: bytes, header: ImageHeader, path: Path) -> np.ndarray:
    if header.format == "GIF":
        return _decode_gif(data)
    import cv2

    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise InvalidInputError(f"{path.name} is not a readable image (OpenCV could not decode its "
                                f"{header.format} data: corrupt or unsupported)")
    if pixels.shape[:2] != (header.height, header.width):
        raise InvalidInputError(f"{path.name}: its header says {header.width}x{header.height} but it decodes to "
                                f"{pixels.shape[1]}x{pixels.shape[0]}; the file is inconsistent and is not used")
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB, dst=pixels)  # in place: no second full-size array
    elif pixels.ndim == 3 and pixels.shape[2] == 4:
        cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGBA, dst=pixels)
    if pixels.dtype not in (np.uint8, np.uint16, np.float32):
        pixels = pixels.astype(np.float32)
    return pixels


def _decode_gif(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data), formats=["GIF"]) as picture:
        picture.seek(0)
        mode = "RGBA" if "transparency" in picture.info or picture.mode in ("RGBA", "PA", "LA") else "RGB"
        return np.asarray(picture.convert(mode))
