"""Request bodies: multipart streamed into the data folder under a size cap, then the same image gate as the CLI.

Nothing is spooled to the system temp folder: the body is parsed as it arrives (python-multipart's push parser),
the one file part goes straight to ``DATA/tmp/<id>/``, and the request is refused with 413 as soon as it passes
``--max-upload-mb`` (at once when Content-Length says so). Then the photo is checked, in this order:

1. its first bytes must be an image format the gate reads (PNG, JPEG, WebP, TIFF, BMP, GIF), else **415**;
2. its header (no pixels decoded) must declare at most ``--max-pixels`` and a side of at most 16384 px, else
   **413**: a decompression bomb is refused before it costs memory;
3. ``runtime.imaging.read_image`` (``runtime.image_gate``: one frame, EXIF orientation, any decoder failure)
   must read it, else **422** with the gate's message; a fully transparent cut-out is 422 too.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ...runtime.errors import BackdropError, InvalidInputError

MAX_FIELDS = 32
MAX_FIELD_BYTES = 4096
SIGNATURES = (  # (prefix test, format, extension)
    (lambda head: head.startswith(b"\x89PNG\r\n\x1a\n"), "PNG", ".png"),
    (lambda head: head.startswith(b"\xff\xd8\xff"), "JPEG", ".jpg"),
    (lambda head: head[:4] == b"RIFF" and head[8:12] == b"WEBP", "WEBP", ".webp"),
    (lambda head: head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), "TIFF", ".tif"),
    (lambda head: head.startswith(b"BM"), "BMP", ".bmp"),
    (lambda head: head[:6] in (b"GIF87a", b"GIF89a"), "GIF", ".gif"),
)
READABLE = "PNG, JPEG, WebP, TIFF, BMP or GIF"


class HttpError(BackdropError):
    """An answer other than success: status, message and, for tier limits, the limit's name and value."""

    def __init__(self, status: int, message: str, *, limit: str | None = None, value: int | None = None,
                 retry_after: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.limit, self.value, self.retry_after = status, limit, value, retry_after
        self.headers = dict(headers or {})


@dataclass
class Upload:
    path: Path
    size: int
    sha256: str


@dataclass
class Form:
    fields: dict[str, list[str]]
    upload: Upload | None


@dataclass(frozen=True)
class CheckedPhoto:
    path: Path  # renamed to photo.<ext> from its contents
    format: str
    width: int  # as seen (EXIF orientation applied)
    height: int


async def receive_form(request, folder: Path, *, file_field: str, max_bytes: int) -> Form:
    """Parse a multipart/form-data body: text fields, and at most one file (``file_field``) written to ``folder``."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise HttpError(415, f"send multipart/form-data with the image in the {file_field!r} field")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise HttpError(413, f"the request is {int(declared) / 2**20:.1f} MiB; this server accepts at most "
                             f"{max_bytes / 2**20:.1f} MiB")
    state = _FormState(folder, file_field)
    parser = MultipartParser(options[b"boundary"], state.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise HttpError(413, f"the request is larger than the {max_bytes / 2**20:.1f} MiB this server "
                                     "accepts")
            parser.write(chunk)
            if state.error is not None:
                raise state.error
        parser.finalize()
        if state.error is not None:
            raise state.error
    except HttpError:
        state.close()
        raise
    except Exception as exc:  # python-multipart raises its own parse errors; a client may hang up
        state.close()
        raise HttpError(422, f"the multipart body could not be read ({type(exc).__name__})") from None
    state.close()
    return Form(fields=state.fields, upload=state.upload)


class _FormState:
    """python-multipart callbacks: headers per part, text fields kept, the file part written as it comes."""

    def __init__(self, folder: Path, file_field: str) -> None:
        self.folder, self.file_field = folder, file_field
        self.fields: dict[str, list[str]] = {}
        self.upload: Upload | None = None
        self.error: HttpError | None = None
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name = ""
        self._is_file = False
        self._text = bytearray()
        self._fh = None
        self._hash = None
        self._size = 0
        self._count = 0

    def callbacks(self) -> dict:
        return {"on_part_begin": self._begin, "on_part_data": self._data, "on_part_end": self._end,
                "on_header_field": self._field, "on_header_value": self._value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_done}

    def _fail(self, status: int, message: str) -> None:
        if self.error is None:
            self.error = HttpError(status, message)

    def _begin(self) -> None:
        self._disposition, self._name, self._is_file, self._text = b"", "", False, bytearray()

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_done(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self._disposition)
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        self._is_file = b"filename" in options
        self._count += 1
        if self._count > MAX_FIELDS:
            self._fail(422, f"the form has more than {MAX_FIELDS} parts")
        elif self._is_file and self._name != self.file_field:
            self._fail(422, f"unexpected file in form field {self._name!r}; send the image in {self.file_field!r}")
        elif self._is_file and (self.upload is not None or self._fh is not None):
            self._fail(422, f"send one image in {self.file_field!r}, not several")
        elif self._is_file:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.folder / "upload", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._fh, self._hash, self._size = os.fdopen(fd, "wb"), hashlib.sha256(), 0

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None:
            return
        piece = data[start:end]
        if self._is_file and self._fh is not None:
            self._fh.write(piece)
            self._hash.update(piece)
            self._size += len(piece)
        elif not self._is_file:
            self._text += piece
            if len(self._text) > MAX_FIELD_BYTES:
                self._fail(422, f"form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes")

    def _end(self) -> None:
        if self.error is not None:
            return
        if self._is_file and self._fh is not None:
            self._fh.close()
            self._fh = None
            self.upload = Upload(self.folder / "upload", self._size, self._hash.hexdigest())
        elif not self._is_file:
            try:
                text = bytes(self._text).decode("utf-8")
            except UnicodeDecodeError:
                self._fail(422, f"form field {self._name!r} is not UTF-8 text")
                return
            self.fields.setdefault(self._name, []).append(text)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def check_photo(upload: Upload | None, field: str, *, max_bytes: int, max_pixels: int,
                decoding: threading.Semaphore) -> CheckedPhoto:
    """The gate, as the module docstring says; returns the photo renamed to ``photo.<ext>``."""
    from ...runtime.image_gate import MAX_SIDE, ReadLimits, read_header
    from ...runtime.imaging import read_image

    if upload is None or upload.size == 0:
        raise HttpError(422, f"no image: send it as a file in the {field!r} form field")
    with open(upload.path, "rb") as fh:
        head = fh.read(16)
    found = next(((fmt, ext) for test, fmt, ext in SIGNATURES if test(head)), None)
    if found is None:
        raise HttpError(415, f"the upload is not an image this server reads: send {READABLE}")
    ext = found[1]
    path = upload.path.with_name("photo" + ext)
    os.replace(upload.path, path)
    upload.path = path
    relaxed = ReadLimits(max_bytes=max(max_bytes, 1), max_pixels=1 << 40, max_side=1 << 30)
    try:
        with open(path, "rb") as fh:
            header = read_header(fh, path, relaxed)
    except InvalidInputError as exc:
        status = 413 if "megapixels" in str(exc) else 422  # PIL's own bomb guard; else a damaged header, animation
        raise HttpError(status, _clean(str(exc), path)) from None
    width, height = header.width, header.height
    if width * height > max_pixels or max(width, height) > MAX_SIDE:
        raise HttpError(413, f"the image is {width}x{height} ({width * height / 1e6:.1f} megapixels); this server "
                             f"accepts at most {max_pixels / 1e6:.1f} megapixels and {MAX_SIDE} px a side "
                             "(checked before decoding)")
    limits = ReadLimits(max_bytes=max(max_bytes, 1), max_pixels=max_pixels, max_side=MAX_SIDE,
                        how_to_raise="ask the server's operator (backdrop serve --max-pixels)")
    with decoding:
        try:
            loaded = read_image(path, limits)
        except InvalidInputError as exc:
            raise HttpError(422, _clean(str(exc), path)) from None
    if loaded.fully_transparent:
        from ...runtime.backdrop.studio_job import EMPTY_CUTOUT

        raise HttpError(422, EMPTY_CUTOUT)
    width, height = loaded.size
    return CheckedPhoto(path=path, format=header.format, width=width, height=height)


def _clean(message: str, path: Path) -> str:
    """A gate message without the server's folders (it names the file; keep just its name)."""
    return message.replace(str(path.parent) + os.sep, "").replace(str(path.parent), "the upload folder")
