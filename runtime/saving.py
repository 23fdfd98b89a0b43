"""Writing finished images: PNG, JPEG or WebP, quality and resolution presets, ComfyUI workflow
metadata and an optional C2PA manifest. Files are written atomically and never overwritten.

Workflow metadata (the hidden ``prompt`` / ``extra_pnginfo`` ComfyUI passes to output nodes):

* **PNG**: text chunks ``prompt`` and ``workflow`` (one per extra_pnginfo key), exactly like ComfyUI's
  SaveImage, so dropping the file on ComfyUI loads the workflow.
* **WebP and JPEG**: EXIF, ComfyUI's own WebP convention: tag 0x0110 (Model) holds ``prompt:<json>``,
  0x010F (Make) ``workflow:<json>`` (further keys go to 0x010E, 0x010D...). A JPEG's EXIF segment is
  limited to 64 KB; when the metadata does not fit, it goes to a ``<image name>.json`` sidecar
  beside the image instead (written the same never-overwriting way), and the result says so.

Resolution presets only ever shrink (long edge, aspect kept, area interpolation). The watermark
survives down to 0.5x; shrink further *before* watermarking.

Quality: JPEG 1..100 (4:4:4 chroma at 90 and above, 4:2:0 below); WebP 1..99 lossy, 100 = lossless;
PNG is lossless and ignores it (compression level 4, as ComfyUI).
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInputError
from .files import write_bytes_exclusive
from .imaging import to_integer

FORMATS = ("png", "jpeg", "webp")
EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
RESOLUTION_PRESETS: dict[str, int | None] = {
    "original": None,
    "4K (3840 long edge)": 3840,
    "2K (2048 long edge)": 2048,
    "web (1600 long edge)": 1600,
    "social (1080 long edge)": 1080,
    "thumbnail (512 long edge)": 512,
}
JPEG_EXIF_LIMIT = 65_000  # APP1 payload is at most 65,533 bytes
PNG_COMPRESS_LEVEL = 4


@dataclass(frozen=True)
class SaveOptions:
    fmt: str = "png"
    quality: int = 95
    resolution: str = "original"
    c2pa: bool = True
    metadata: dict[str, str] = field(default_factory=dict)  # key -> text (JSON), see comfy_metadata()

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise InvalidInputError(f"unknown format {self.fmt!r}; use one of {', '.join(FORMATS)}")
        if not 1 <= int(self.quality) <= 100:
            raise InvalidInputError(f"quality must be 1..100, got {self.quality}")
        if self.resolution not in RESOLUTION_PRESETS:
            raise InvalidInputError(f"unknown resolution preset {self.resolution!r}; use one of "
                                    f"{', '.join(RESOLUTION_PRESETS)}")


@dataclass
class SavedImage:
    path: Path
    width: int
    height: int
    c2pa: bool = False
    watermark_id: str = ""
    sidecar: Path | None = None
    notes: list[str] = field(default_factory=list)


def comfy_metadata(prompt: Any = None, extra_pnginfo: dict[str, Any] | None = None) -> dict[str, str]:
    """ComfyUI's hidden PROMPT / EXTRA_PNGINFO as the text entries SaveImage writes."""
    entries: dict[str, str] = {}
    if prompt is not None:
        entries["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        entries[str(key)] = json.dumps(value)
    return entries


def to_uint8(image: np.ndarray) -> np.ndarray:
    """HxW, HxWx3 or HxWx4, uint8 or float 0..1 -> uint8 with 3 or 4 channels (rounded; input untouched)."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise InvalidInputError(f"expected an image HxW, HxWx3 or HxWx4, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise InvalidInputError(f"expected uint8 or float 0..1 pixels, got {arr.dtype}")
        arr = to_integer(np.nan_to_num(arr), 8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def resize_to_preset(image: np.ndarray, preset: str) -> np.ndarray:
    """Shrink so the long edge is at most the preset's; never enlarges. Returns a new array."""
    import cv2

    if preset not in RESOLUTION_PRESETS:
        raise InvalidInputError(f"unknown resolution preset {preset!r}; use one of {', '.join(RESOLUTION_PRESETS)}")
    limit = RESOLUTION_PRESETS[preset]
    height, width = image.shape[:2]
    if limit is None or max(height, width) <= limit:
        return np.array(image, copy=True)
    scale = limit / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def encode_image(image: np.ndarray, fmt: str, quality: int = 95, metadata: dict[str, str] | None = None
                 ) -> tuple[bytes, dict[str, str]]:
    """Encode with PIL. Returns (bytes, metadata entries that did not fit and still need a home)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    pixels = to_uint8(image)
    metadata = dict(metadata or {})
    if fmt == "jpeg" and pixels.shape[2] == 4:
        pixels = pixels[:, :, :3]  # JPEG has no alpha
    picture = Image.fromarray(pixels, "RGBA" if pixels.shape[2] == 4 else "RGB")
    buffer = io.BytesIO()
    left_over: dict[str, str] = {}
    if fmt == "png":
        info = PngInfo()
        for key, text in metadata.items():
            info.add_text(key, text)
        picture.save(buffer, "PNG", pnginfo=info if metadata else None, compress_level=PNG_COMPRESS_LEVEL)
    elif fmt == "jpeg":
        exif = _comfy_exif(metadata)
        if exif is not None and len(exif) > JPEG_EXIF_LIMIT:
            exif, left_over = None, metadata
        picture.save(buffer, "JPEG", quality=int(quality), subsampling=0 if quality >= 90 else 2,
                     **({"exif": exif} if exif else {}))
    elif fmt == "webp":
        exif = _comfy_exif(metadata)
        lossless = int(quality) >= 100
        picture.save(buffer, "WEBP", quality=100 if lossless else int(quality), lossless=lossless, method=4,
                     **({"exif": exif} if exif else {}))
    else:
        raise InvalidInputError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return buffer.getvalue(), left_over


def read_comfy_metadata(data: bytes) -> dict[str, str]:
    """The workflow metadata entries of an encoded image (PNG text chunks or the EXIF convention above)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as picture:
        if picture.format == "PNG":
            return {str(k): str(v) for k, v in picture.text.items()}
        exif = picture.getexif()
        entries: dict[str, str] = {}
        for tag in (0x0110, *range(0x010F, 0x0100, -1)):
            entries.update(_split_exif_entry(exif.get(tag)))
        return entries


def save_image(image: np.ndarray, path: str | os.PathLike, options: SaveOptions, *, keys=None,
               binding: Callable[[np.ndarray], tuple[int | None, str | None]] | None = None,
               rename: bool = True) -> SavedImage:
    """Resize to the preset, encode, optionally embed a signed C2PA manifest, write without overwriting.

    ``path``'s suffix is replaced by the format's. ``keys`` (a provenance KeyStore) is needed when
    ``options.c2pa`` is on. ``binding(final_pixels) -> (watermark ID or None, ledger record hash or None)``
    names the watermark the manifest's soft binding points to; it sees the pixels as they will be
    written (after resizing), so a mark lost to a large reduction is not claimed. ``rename=False``: an
    existing entry at the target raises ``FileExistsError`` instead of taking the next free ``-N`` name.
    """
    pixels = resize_to_preset(to_uint8(image), options.resolution)
    target = Path(path).with_suffix(EXTENSIONS[options.fmt])
    payload, left_over = encode_image(pixels, options.fmt, options.quality, options.metadata)
    result = SavedImage(path=target, width=pixels.shape[1], height=pixels.shape[0])
    if options.c2pa:
        if keys is None:
            raise InvalidInputError("a C2PA manifest needs the provenance keys (keys=load_keys())")
        from .provenance.c2pa_manifest import sign_asset
        from .provenance.records import format_id

        watermark_id, record_hash = binding(pixels) if binding is not None else (None, None)
        payload = sign_asset(payload, options.fmt, keys, title=target.name, watermark_id=watermark_id,
                             record_hash=record_hash)
        result.c2pa = True
        if watermark_id is None:
            result.notes.append("no watermark in the saved pixels: the C2PA manifest has no soft binding")
        else:
            result.watermark_id = format_id(watermark_id)
    result.path = write_bytes_exclusive(target, payload, rename=rename)
    if left_over:
        sidecar = json.dumps({k: _json_or_text(v) for k, v in left_over.items()}, indent=1).encode("utf-8")
        result.sidecar = write_bytes_exclusive(result.path.with_suffix(".json"), sidecar, rename=rename)
        result.notes.append(f"workflow metadata is larger than a JPEG's 64 KB EXIF limit; written to "
                            f"{result.sidecar.name}")
    return result


def comfy_style_path(output_dir: str | os.PathLike, filename_prefix: str, fmt: str, width: int = 0,
                     height: int = 0, batch_number: int = 0) -> tuple[Path, str]:
    """Next free ``<prefix>_00001_.<ext>`` under ``output_dir``, ComfyUI's naming; returns (path, subfolder).

    The prefix may contain subfolders and ComfyUI's %width% %height% %year% %month% %day% %hour%
    %minute% %second% %batch_num%; it may not leave ``output_dir``. The counter continues after the
    highest one already used by that prefix (any extension).
    """
    output_dir = Path(output_dir).resolve()
    prefix = _expand_prefix(filename_prefix or "Backdrop", width, height).replace("%batch_num%", str(batch_number))
    relative = Path(os.path.normpath(prefix))
    folder = (output_dir / relative.parent).resolve()
    if relative.is_absolute() or os.path.commonpath([output_dir, folder]) != str(output_dir):
        raise InvalidInputError(f"filename_prefix {filename_prefix!r} points outside the output folder {output_dir}")
    name = relative.name
    if not name or name in (".", ".."):
        raise InvalidInputError(f"filename_prefix {filename_prefix!r} has no file name part")
    counter = _highest_counter(folder, name) + 1
    subfolder = "" if relative.parent == Path(".") else relative.parent.as_posix()
    return folder / f"{name}_{counter:05}_{EXTENSIONS[fmt]}", subfolder


def _highest_counter(folder: Path, name: str) -> int:
    if not folder.is_dir():
        return 0
    best = 0
    wanted = os.path.normcase(name) + "_"
    for entry in os.listdir(folder):
        if not os.path.normcase(entry).startswith(wanted):
            continue
        digits = entry[len(wanted):].split("_")[0]
        if digits.isdigit():
            best = max(best, int(digits))
    return best


def _expand_prefix(prefix: str, width: int, height: int) -> str:
    if "%" not in prefix:
        return prefix
    now = time.localtime()
    values = {"width": width, "height": height, "year": now.tm_year, "month": f"{now.tm_mon:02}",
              "day": f"{now.tm_mday:02}", "hour": f"{now.tm_hour:02}", "minute": f"{now.tm_min:02}",
              "second": f"{now.tm_sec:02}"}
    for key, value in values.items():
        prefix = prefix.replace(f"%{key}%", str(value))
    return prefix


def _comfy_exif(metadata: dict[str, str]) -> bytes | None:
    if not metadata:
        return None
    from PIL import Image

    exif = Image.Exif()
    tag = 0x010F
    for key, text in metadata.items():
        if key == "prompt":
            exif[0x0110] = f"prompt:{text}"
        else:
            exif[tag] = f"{key}:{text}"
            tag -= 1
    return exif.tobytes()


def _json_or_text(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _split_exif_entry(value) -> dict[str, str]:
    if not isinstance(value, str) or ":" not in value:
        return {}
    key, text = value.split(":", 1)
    return {key: text}
