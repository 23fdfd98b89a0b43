import cv2
import numpy as np
import pytest

from comfyui_backdrop.nodes.tensors import images_to_list, masks_for_batch
from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.imaging import normalize_array, read_image, to_integer, write_image


def test_8bit_roundtrip_is_lossless(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    rgb, alpha, depth = normalize_array(pixels)
    assert depth == 8 and alpha is None
    written = write_image(tmp_path / "a.png", rgb)
    assert np.array_equal(cv2.cvtColor(cv2.imread(str(written)), cv2.COLOR_BGR2RGB), pixels)


def test_16bit_gray_and_rgba_files(tmp_path):
    rng = np.random.default_rng(1)
    deep = rng.integers(0, 65536, (9, 11, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep[:, :, ::-1])
    loaded = read_image(tmp_path / "deep.png")
    assert loaded.bit_depth == 16
    assert np.array_equal(to_integer(loaded.rgb, 16), deep)

    gray = rng.integers(0, 256, (9, 11), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    g = read_image(tmp_path / "gray.png")
    assert g.rgb.shape == (9, 11, 3) and np.array_equal(to_integer(g.rgb[..., 1], 8), gray)

    rgba = rng.integers(0, 256, (9, 11, 4), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "rgba.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    r = read_image(tmp_path / "rgba.png")
    assert np.array_equal(to_integer(r.alpha, 8), rgba[..., 3]) and np.array_equal(to_integer(r.rgb, 8), rgba[..., :3])


def test_corrupt_and_missing_files_get_clear_errors(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(InvalidInputError, match="bad.jpg"):
        read_image(tmp_path / "bad.jpg")
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_image(tmp_path / "nope.png")


def test_write_never_overwrites(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"user data")
    first = write_image(target, np.zeros((4, 4, 3), np.float32))
    second = write_image(target, np.ones((4, 4, 3), np.float32))
    assert target.read_bytes() == b"user data"
    assert first.name == "out-1.png" and second.name == "out-2.png"
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


@pytest.mark.parametrize("shape", [(3, 50, 3), (50, 2, 3), (20000, 5, 3)])
def test_size_limits(shape):
    with pytest.raises(InvalidInputError, match="px"):
        normalize_array(np.zeros(shape, np.uint8))


def test_nan_images_are_rejected():
    bad = np.zeros((8, 8, 3), np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        normalize_array(bad)


def test_batching_copies_and_broadcasts():
    import torch

    images = torch.rand(3, 10, 12, 3)
    before = images.clone()
    listed = images_to_list(images)
    listed[0][:] = 0
    assert torch.equal(images, before)
    masks = masks_for_batch(torch.ones(1, 5, 6), 3, 10, 12)
    assert len(masks) == 3 and all(m.shape == (10, 12) for m in masks)
    with pytest.raises(InvalidInputError, match="2 masks for 3 images"):
        masks_for_batch(torch.ones(2, 10, 12), 3, 10, 12)
    with pytest.raises(InvalidInputError, match="empty"):
        images_to_list(torch.zeros(0, 10, 12, 3))
