"""Dataset preparation (masks, captions, manifest, resume, bad input) and mask augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.training.augment import background_mask, drop_caption
from comfyui_backdrop.runtime.training.dataset import prepare_dataset, read_manifest
from tests.fixtures.training_fixtures import write_blank, write_product_folder


def test_manifest_lists_masks_captions_and_hashes(tmp_path):
    folder = write_product_folder(tmp_path / "photos", count=3)
    (folder / "product_1.txt").write_text("a green bottle on a marble table\n")
    calls = []
    report = prepare_dataset(folder, tmp_path / "prepared", progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (3, 3) and len(calls) == 3
    manifest = read_manifest(report.manifest_path)
    assert [e["sha256"] for e in manifest["entries"]] == [e["sha256"] for e in report.entries]
    assert manifest["dataset_hash"] == report.dataset_hash
    by_name = {e["image"].rsplit("/", 1)[-1]: e for e in report.entries}
    assert by_name["product_1.png"]["caption"] == "a green bottle on a marble table"
    assert by_name["product_1.png"]["caption_source"] == "txt"
    assert "background" in by_name["product_0.png"]["caption"]
    from comfyui_backdrop.runtime.imaging import read_image

    mask = read_image(by_name["product_0.png"]["mask"]).rgb[..., 0]
    assert mask.shape == (80, 96) and 0.02 < (mask > 0.5).mean() < 0.5


def test_preparation_resumes_and_skips_bad_files(tmp_path):
    folder = write_product_folder(tmp_path / "photos", count=2)
    first = prepare_dataset(folder, tmp_path / "prepared")
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    write_blank(folder / "blank.png")
    write_product_folder(tmp_path / "more", count=3)
    (tmp_path / "more" / "product_2.png").rename(folder / "new_product.png")
    second = prepare_dataset(folder, tmp_path / "prepared")
    assert second.reused == 2 and len(second.entries) == 3
    assert [name for name, _ in second.unreadable] == ["broken.jpg"]
    assert second.no_product == ["blank.png"]
    assert second.dataset_hash != first.dataset_hash
    manifest = json.loads(second.manifest_path.read_text())
    assert manifest["no_product"] == ["blank.png"] and manifest["unreadable"][0]["file"] == "broken.jpg"


def test_empty_and_unusable_folders_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="holds no images"):
        prepare_dataset(tmp_path / "empty")
    write_blank(tmp_path / "blank" / "grey.png")
    (tmp_path / "blank" / "bad.png").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="no product found in: grey.png.*unreadable: bad.png"):
        prepare_dataset(tmp_path / "blank")
    with pytest.raises(InvalidInputError, match="does not exist"):
        prepare_dataset(tmp_path / "missing")


def test_mask_augmentations_keep_the_product_and_never_mutate():
    product = np.zeros((64, 64), np.float32)
    product[20:40, 25:35] = 1.0
    original = product.copy()
    gen = torch.Generator().manual_seed(0)
    exact = background_mask(product, gen, ("exact",))
    np.testing.assert_array_equal(exact, 1 - original)
    dilated = background_mask(product, gen, ("dilate",))
    assert dilated.sum() < exact.sum() and not dilated[product > 0.5].any()
    product[22, 27] = 0  # a hole: the box fills it
    box = background_mask(product, gen, ("box",))
    assert box[20:40, 25:35].sum() == 0 and box.sum() == 64 * 64 - 200
    shaped = background_mask(original, gen, ("shape",))
    assert shaped.sum() != exact.sum()
    assert original.sum() == 200
    dropped = [drop_caption("a caption", 0.5, gen) for _ in range(200)]
    assert 60 < dropped.count("") < 140 and set(dropped) == {"", "a caption"}
    assert drop_caption("kept", 0.0, gen) == "kept"


def test_interrupted_preparation_keeps_what_is_done(tmp_path):
    from comfyui_backdrop.runtime.errors import Interrupted

    folder = write_product_folder(tmp_path / "photos", count=3)

    def stop_after_two(done, total):
        if done == 2:
            raise Interrupted("stop")

    with pytest.raises(Interrupted):
        prepare_dataset(folder, progress=stop_after_two)
    manifest = read_manifest(folder / ".backdrop-dataset" / "manifest.json")
    assert len(manifest["entries"]) == 2
    (folder / "product_0.txt").write_text("new caption")
    report = prepare_dataset(folder)
    assert report.reused == 2 and len(report.entries) == 3
    assert report.entries[0]["caption"] == "new caption"
