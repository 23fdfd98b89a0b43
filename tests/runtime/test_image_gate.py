"""The input gate every image read goes through (runtime/image_gate.py via imaging.read_image).

Each test first builds the file that broke before (a PNG bomb, a phone photo with EXIF orientation 6,
an animated GIF, a FIFO, a 1 GB file...) and checks the defined outcome now.
"""

from __future__ import annotations

import os
import resource
import struct
import threading
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from comfyui_backdrop.runtime import image_gate
from comfyui_backdrop.runtime.errors import BackdropError, InvalidInputError
from comfyui_backdrop.runtime.image_folder import load_folder
from comfyui_backdrop.runtime.imaging import IMAGE_SUFFIXES, ReadLimits, image_files, read_image, to_integer


def _png_bomb(width: int, height: int) -> bytes:
    """A real 1-bit grayscale PNG of ``width`` x ``height`` zeros: tiny on disk, huge once decoded."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row * 1000) for _ in range(height // 1000))
    body += packer.compress(row * (height % 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's own, above 89 MP
@pytest.mark.parametrize("side", [50000, 16000, 10000])
def test_png_bombs_are_refused_from_the_header_before_decoding(tmp_path, side):
    # before: 50000^2 raised a raw cv2.error, 16000^2 allocated 8.9 GB and died with _ArrayMemoryError
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_bomb(side, side))
    assert path.stat().st_size < 3_000_000
    before = _peak_rss_mb()
    with pytest.raises(InvalidInputError) as err:
        read_image(path)
    assert _peak_rss_mb() - before < 200  # nothing was decoded
    message = str(err.value)
    assert "bomb.png" in message and f"{side * side / 1e6:.1f} megapixels" in message
    assert "67.1 megapixels" in message and "ReadLimits(max_pixels=" in message


def test_pixel_and_side_limits_can_be_raised_and_lowered(tmp_path):
    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), np.full((60, 80, 3), 128, np.uint8))
    assert read_image(path).size == (80, 60)
    with pytest.raises(InvalidInputError, match=r"photo.png is 80x60 .*above 0.0 megapixels.*--max-mp"):
        read_image(path, ReadLimits(max_pixels=4000, how_to_raise="pass --max-mp"))
    with pytest.raises(InvalidInputError, match="sides above 64 px"):
        read_image(path, ReadLimits(max_side=64))
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_bomb(9000, 9000))  # 81 MP: over the default, under a raised limit
    with pytest.raises(InvalidInputError, match="81.0 megapixels"):
        read_image(bomb)
    loaded = read_image(bomb, ReadLimits(max_pixels=100_000_000))
    assert loaded.size == (9000, 9000) and float(loaded.rgb.max()) == 0.0
    with pytest.raises(InvalidInputError, match="positive whole number"):
        ReadLimits(max_pixels=0)


def test_an_8000x6000_photo_is_within_the_default_limits(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(_png_bomb(8000, 6000))
    assert read_image(path).size == (8000, 6000)


def test_file_size_is_checked_before_reading(tmp_path):
    # before: np.fromfile read any size (verify on a 1 GB file took 1.1 GB of RAM)
    path = tmp_path / "huge.png"
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.truncate(1 << 30)  # sparse: 1 GiB without using the disk
    before = _peak_rss_mb()
    with pytest.raises(InvalidInputError, match=r"huge.png is 1024.0 MiB; image files above 528 MiB"):
        read_image(path)
    assert _peak_rss_mb() - before < 100
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(InvalidInputError, match="above 0 MiB are refused before reading"):
        read_image(small, ReadLimits(max_bytes=20))
    with pytest.raises(InvalidInputError, match="image files above"):
        image_gate.read_file_bytes(path)  # what the C2PA reader uses


def _exif_with_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_comfyui_does(tmp_path, orientation):
    # before: cv2's IMREAD_UNCHANGED ignored it, so a phone photo with orientation 6 came out turned 90 degrees
    rng = np.random.default_rng(orientation)
    pixels = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    path = tmp_path / "phone.png"
    Image.fromarray(pixels).save(path, exif=_exif_with_orientation(orientation))
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    loaded = read_image(path)
    assert loaded.orientation == orientation
    assert np.array_equal(to_integer(loaded.rgb, 8), expected)


def test_jpeg_phone_photo_with_orientation_6_comes_out_upright(tmp_path):
    pixels = np.zeros((40, 64, 3), np.uint8)
    pixels[:, :32] = (255, 0, 0)  # stored: red on the left; orientation 6 = turn 90 degrees clockwise
    path = tmp_path / "IMG_0001.JPG"
    Image.fromarray(pixels).save(path, quality=95, exif=_exif_with_orientation(6))
    loaded = read_image(path)
    assert loaded.size == (40, 64)
    assert loaded.rgb[:32, :, 0].mean() > 0.9 and loaded.rgb[32:, :, 0].mean() < 0.1  # red is now on top


def test_16bit_with_orientation_stays_16bit_and_exact(tmp_path):
    rng = np.random.default_rng(1)
    deep = rng.integers(0, 65536, (9, 11, 3), dtype=np.uint16)
    plain = tmp_path / "deep.tif"
    cv2.imwrite(str(plain), deep[:, :, ::-1])  # a 16-bit RGB TIFF: PIL cannot open it, OpenCV decodes it
    loaded = read_image(plain)
    assert loaded.bit_depth == 16 and loaded.format == "TIFF"
    assert np.array_equal(to_integer(loaded.rgb, 16), deep)
    floats = tmp_path / "float.tif"
    values = rng.random((9, 11, 3)).astype(np.float32)
    cv2.imwrite(str(floats), values[:, :, ::-1])
    assert np.array_equal(read_image(floats).rgb, values)


def _frames(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(count)
    return [Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)) for _ in range(count)]


@pytest.mark.parametrize("suffix", [".gif", ".webp", ".png"])
def test_animated_images_are_refused_with_their_frame_count(tmp_path, suffix):
    # before: the first frame was used silently (and .gif files in a folder were skipped unlisted)
    frames = _frames(3)
    path = tmp_path / f"spin{suffix}"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with pytest.raises(InvalidInputError, match=rf"spin{suffix} is an animated \w+ with 3 frames"):
        read_image(path)


def test_single_frame_gifs_are_read_and_listed_and_animated_ones_reported_as_skipped(tmp_path):
    still = _frames(1)[0].convert("P", palette=Image.Palette.ADAPTIVE)
    still.save(tmp_path / "b_still.gif")
    frames = _frames(2)
    frames[0].save(tmp_path / "c_spin.gif", save_all=True, append_images=frames[1:])
    cv2.imwrite(str(tmp_path / "a_photo.png"), np.zeros((12, 16, 3), np.uint8))
    assert ".gif" in IMAGE_SUFFIXES
    assert [p.name for p in image_files(tmp_path)] == ["a_photo.png", "b_still.gif", "c_spin.gif"]
    loaded = read_image(tmp_path / "b_still.gif")
    assert np.array_equal(to_integer(loaded.rgb, 8), np.asarray(Image.open(tmp_path / "b_still.gif").convert("RGB")))
    batch = load_folder(tmp_path)
    assert batch.names == ["a_photo", "b_still"]
    assert batch.skipped[0][0] == "c_spin.gif" and "2 frames" in batch.skipped[0][1]


def test_transparent_gif_gets_an_alpha_channel(tmp_path):
    picture = Image.new("P", (8, 6), 1)
    picture.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    picture.putpixel((0, 0), 0)
    picture.save(tmp_path / "t.gif", transparency=0)
    loaded = read_image(tmp_path / "t.gif")
    assert loaded.alpha is not None and loaded.alpha[0, 0] == 0.0 and loaded.alpha[1, 1] == 1.0
    assert np.allclose(loaded.rgb[1, 1], (200 / 255, 10 / 255, 10 / 255))


def test_phone_mpo_jpegs_are_read_not_refused_as_animations(tmp_path):
    frames = _frames(2)
    path = tmp_path / "phone.jpg"
    frames[0].save(path, format="MPO", save_all=True, append_images=frames[1:], quality=95)
    assert Image.open(path).format == "MPO"
    assert read_image(path).size == (16, 12)


def test_fully_transparent_cutout_is_reported(tmp_path):
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., :3] = 200
    cv2.imwrite(str(tmp_path / "empty.png"), rgba)
    assert read_image(tmp_path / "empty.png").fully_transparent
    rgba[2:5, 3:6, 3] = 255
    cv2.imwrite(str(tmp_path / "cut.png"), rgba)
    assert not read_image(tmp_path / "cut.png").fully_transparent
    cv2.imwrite(str(tmp_path / "rgb.png"), rgba[..., :3])
    assert not read_image(tmp_path / "rgb.png").fully_transparent


def test_decoder_errors_become_per_file_errors(tmp_path, monkeypatch):
    # before: a raw cv2.error escaped the per-file handlers (BackdropError, OSError, ValueError) and stopped the batch
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.zeros((8, 8, 3), np.uint8))
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(InvalidInputError, match="cut.png"):
        read_image(truncated)

    def boom(*_args, **_kwargs):
        raise cv2.error("OpenCV(5.1.0) imgcodecs: insufficient memory")

    monkeypatch.setattr(cv2, "imdecode", boom)
    with pytest.raises(InvalidInputError, match=r"good.png could not be decoded as PNG .*cv2.error") as err:
        read_image(good)
    assert isinstance(err.value, (BackdropError, ValueError))

    def out_of_memory(*_args, **_kwargs):
        raise MemoryError()

    monkeypatch.setattr(cv2, "imdecode", out_of_memory)
    with pytest.raises(InvalidInputError, match="good.png .*more memory"):
        read_image(good)


@pytest.mark.parametrize("content", [b"", b"GIF89a" + b"\x00" * 3, b"P6\n4 4\n255\n" + b"\x00" * 48, b"%PDF-1.4"])
def test_empty_unknown_and_damaged_files_are_clear_errors(tmp_path, content):
    path = tmp_path / "odd.png"
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match="odd.png"):
        read_image(path)


def test_folders_fifos_and_missing_files_are_refused_without_reading(tmp_path):
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(InvalidInputError, match="is a folder"):
        read_image(tmp_path / "folder.png")
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_image(tmp_path / "dangling.png")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            read_image(fifo)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # unblock it before failing
        with open(fifo, "wb"):
            pass
        pytest.fail("reading a FIFO blocked")
    assert isinstance(outcome[0], InvalidInputError) and "not a regular file" in str(outcome[0])


def test_every_image_read_goes_through_the_gate():
    """No module in runtime/, nodes/ or cli/ decodes image files by itself (grep for the decoders)."""
    from pathlib import Path

    root = Path(image_gate.__file__).resolve().parent.parent
    allowed = {"runtime/image_gate.py"}
    offenders = []
    for folder in ("runtime", "nodes", "cli"):
        for path in (root / folder).rglob("*.py"):
            relative = path.relative_to(root).as_posix()
            text = path.read_text(encoding="utf-8")
            for needle in ("cv2.imread(", "cv2.imdecode(", "np.fromfile(", "Image.open(path", "imageio"):
                if needle in text and relative not in allowed:
                    offenders.append(f"{relative}: {needle}")
    assert not offenders, offenders


def test_pil_header_never_decodes_pixels(tmp_path, monkeypatch):
    """The header step only parses: with PIL's decoders made to fail, headers still read."""
    path = tmp_path / "p.png"
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(path, exif=_exif_with_orientation(8))
    monkeypatch.setattr(Image.Image, "load", lambda self: (_ for _ in ()).throw(AssertionError("decoded")))
    with open(path, "rb") as fh:
        header = image_gate.read_header(fh, path, image_gate.DEFAULT_READ_LIMITS)
    assert (header.format, header.width, header.height, header.orientation) == ("PNG", 7, 5, 8)


def test_a_fully_transparent_cutout_is_refused_by_the_studio_job_instead_of_a_silent_empty_backdrop(tmp_path):
    # before: the backdrop alone came out, with no warning
    from comfyui_backdrop.runtime.backdrop.studio_job import EMPTY_CUTOUT, studio_background
    from comfyui_backdrop.runtime.backdrop.styles import get_style

    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., :3] = 180
    cv2.imwrite(str(tmp_path / "ghost.png"), rgba)
    loaded = read_image(tmp_path / "ghost.png")
    image = np.dstack([loaded.rgb, loaded.alpha])
    style = get_style("Minimal Studio")
    with pytest.raises(InvalidInputError, match="fully transparent") as err:
        studio_background(image, style)
    assert str(err.value) == EMPTY_CUTOUT
    with pytest.raises(InvalidInputError, match="fully transparent"):
        studio_background(image, style, alpha=np.zeros((40, 50), np.float32))
    mask = np.zeros((40, 50), np.float32)
    mask[10:30, 20:30] = 1.0  # an explicit product mask still works: the user said where the product is
    result = studio_background(image, style, alpha=mask)
    assert np.array_equal(result.image[mask == 1], loaded.rgb[mask == 1])


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_damaged_exif_is_ignored_not_fatal(tmp_path):
    path = tmp_path / "odd_exif.jpg"
    Image.fromarray(np.full((8, 10, 3), 90, np.uint8)).save(path, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\xffgarbage")
    loaded = read_image(path)
    assert loaded.size == (10, 8) and loaded.orientation == 1
