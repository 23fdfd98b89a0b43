"""Where the mark is (presence map) for splices and partial crops; `backdrop verify --map`; and the averaging
(estimation) attack: it removes v1's fixed tile and fails against v2's per-image carriers."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from comfyui_backdrop.cli.verify import add_verify_parser, run_verify
from comfyui_backdrop.runtime.provenance.records import RecordContent
from comfyui_backdrop.runtime.saving import SaveOptions, save_image
from comfyui_backdrop.runtime.watermark import detect, embed
from comfyui_backdrop.runtime.watermark.pattern import PERIOD
from comfyui_backdrop.runtime.watermark.regions import MAX_WINDOWS, MIN_WINDOW, window_side, windows
from comfyui_backdrop.runtime.watermark.service import ProvenanceService
from tests.fixtures.watermark_images import (
    averaged_residual_tile,
    catalog_images,
    jpeg,
    resize,
    skimage_photo,
    splice,
    studio_shot,
    subtract_estimate,
)

KEY = b"localisation-test-key-0123456789"


@pytest.mark.parametrize(("version", "left"), [(3, True), (2, True), (2, False), (1, True)])
def test_map_marks_the_marked_half_of_a_spliced_image(version, left):
    photo = skimage_photo("astronaut")
    other = resize(skimage_photo("coffee"), 512 / 600, 512 / 400)[:512, :512]
    spliced = splice(embed(photo, 4242, KEY, version=version), other, left=left)
    result = detect(spliced, KEY, localise=True)
    assert result.found and result.payload == 4242 and result.version == version
    mask = result.presence.mask()
    assert mask.shape == spliced.shape[:2] and mask.dtype == np.float32 and 0 <= mask.min() <= mask.max() <= 1
    marked_side, other_side = (mask[:, :192], mask[:, 320:]) if left else (mask[:, 320:], mask[:, :192])
    assert marked_side.mean() > 0.9 and other_side.mean() < 0.1
    assert 0.35 < result.presence.marked_fraction < 0.7


@pytest.fixture(scope="module")
def pasted_region():
    """A 192 px square (9% of the picture) of a marked 640 px photo pasted, in place, into another photo: too
    little of the picture for the whole-image read (sync z 4.7-5.2 where 5.9 is needed)."""
    photo = resize(skimage_photo("astronaut"), 1.25)
    other = resize(skimage_photo("coffee"), 640 / 600, 640 / 400)
    marked = embed(photo, 4242, KEY)
    composites = []
    for top, left in ((200, 200), (420, 100)):
        composite = other.copy()
        composite[top:top + 192, left:left + 192] = marked[top:top + 192, left:left + 192]
        composites.append((composite, top, left))
    return composites


def test_a_small_pasted_region_is_found_and_mapped_by_the_region_search(pasted_region):
    for composite, top, left in pasted_region:
        before = composite.copy()
        assert not detect(composite, KEY).found  # the whole-image read alone misses it
        result = detect(composite, KEY, localise=True)
        assert np.array_equal(composite, before)
        assert result.found and result.payload == 4242 and result.version == 3
        assert result.false_positive_probability <= 1e-6
        w_top, w_left, side = result.details["region_px"]
        rows = min(w_top + side, top + 192) - max(w_top, top)
        cols = min(w_left + side, left + 192) - max(w_left, left)
        assert rows > 0 and cols > 0 and rows * cols > 0.75 * side * side  # the window read lies in the region
        mask = result.presence.mask()
        inside = np.zeros(mask.shape, bool)
        inside[top:top + 192, left:left + 192] = True
        assert mask[inside].mean() > 0.8 and mask[~inside].mean() < 0.05
        assert result.details["hypotheses"] > 49  # every window is in the bound


def test_the_map_of_a_pasted_studio_shot_does_not_spread_beyond_it():
    """Before the neighbourhood median gated each cell (stop 36) the mask covered a 32-64 px ring around a
    strongly marked region: IoU 0.68, 16% of the unmarked rest marked."""
    marked = embed(studio_shot(768, 768, seed=4), 4242, KEY)
    composite = resize(skimage_photo("coffee"), 768 / 600, 768 / 400)
    composite[128:512, 192:576] = marked[128:512, 192:576]
    result = detect(composite, KEY, localise=True)
    assert result.found and result.payload == 4242
    inside = np.zeros(composite.shape[:2], bool)
    inside[128:512, 192:576] = True
    mask = result.presence.mask() > 0.5
    assert (mask & inside).sum() / (mask | inside).sum() > 0.8
    assert (mask & ~inside).sum() / (~inside).sum() < 0.03
    assert 0.2 < result.presence.marked_fraction < 0.35  # the square is 25% of the picture


def test_the_region_search_finds_nothing_in_unmarked_or_other_key_pictures():
    other_key = b"another-installation-key-0000000"
    pictures = [resize(skimage_photo(name), 1.25) for name in ("astronaut", "rocket")]
    pictures.append(embed(pictures[0], 99, other_key))
    for picture in pictures:
        result = detect(picture, KEY, localise=True)
        assert not result.found and result.presence is None and "region_px" not in result.details


def test_windows_tile_the_picture_on_whole_periods():
    assert window_side(100, 5000) == 0 and windows(100, 5000) == []  # no window beside the whole picture
    assert window_side(512, 512) == MIN_WINDOW and len(windows(512, 512)) == 49
    layout = windows(1024, 1024)
    assert {side for _, _, side in layout} == {256} and len(layout) == 169
    for height, width in ((1024, 1024), (700, 1900), (4000, 6000), (333, 257)):
        layout = windows(height, width)
        assert 0 < len(layout) <= MAX_WINDOWS
        assert all(top % PERIOD == left % PERIOD == 0 and top + side <= height and left + side <= width
                   for top, left, side in layout)
        side = layout[0][2]
        assert max(top for top, _, _ in layout) > height - side - 2 * side  # the grid reaches the far edge


def test_map_of_a_recompressed_crop_covers_it_and_nothing_without_a_mark():
    image = studio_shot(640, 800, seed=5)
    crop = jpeg(embed(image, 77, KEY, version=2)[100:500, 150:650], 70)
    result = detect(crop, KEY, localise=True)
    assert result.found and result.presence.mask().mean() > 0.9
    unmarked = detect(image, KEY, localise=True)
    assert not unmarked.found and unmarked.presence is None


def test_verify_map_writes_the_map_as_an_image(tmp_path, capsys):
    home, out = tmp_path / "home", tmp_path / "maps"
    service = ProvenanceService(home)
    photo, other = studio_shot(384, 512, seed=3), skimage_photo("rocket")[:384, :512]
    marked = service.mark(photo, RecordContent(account="acme"), watermark_version=2)
    spliced = splice(marked.image, other, left=True)
    path = save_image(spliced, tmp_path / "spliced.png", SaveOptions(c2pa=False)).path
    parser = argparse.ArgumentParser(prog="backdrop")
    add_verify_parser(parser.add_subparsers(dest="command", required=True))
    run_verify(parser.parse_args(["verify", str(path), "--home", str(home), "--map", str(out), "--json"]))
    [entry] = json.loads(capsys.readouterr().out)["files"]
    assert entry["found"] and entry["watermark_version"] == 2 and entry["map"].endswith("spliced.watermark-map.png")
    assert 0.3 < entry["presence"]["marked_fraction"] < 0.75
    written = np.array(Image.open(entry["map"]))
    assert written.shape == (384, 512) and written.dtype == np.uint8
    assert written[:, :200].mean() > 230 and written[:, 312:].mean() < 25
    # never overwrites: a second run writes beside the first
    run_verify(parser.parse_args(["verify", str(path), "--home", str(home), "--map", str(out)]))
    assert "spliced.watermark-map-1.png" in capsys.readouterr().out


def test_averaging_attack_removes_v1_and_fails_against_v2():
    """64 catalog images marked with one key are averaged (residuals folded on the 64 px period); the estimate,
    scaled by local texture, is subtracted from 6 other marked images at an attack PSNR of 46.5 dB."""
    train, test = 64, 6
    images = catalog_images(train + test, 256, seed=3)
    survived = {}
    for version in (1, 2):
        marked = [embed(image, 1000 + i, KEY, version=version) for i, image in enumerate(images)]
        tile = averaged_residual_tile(marked[:train], 64)
        survived[version] = np.mean([detect(subtract_estimate(marked[i], tile, 46.5), KEY).payload == 1000 + i
                                     for i in range(train, train + test)])
    assert survived[1] <= 0.34, "the attack should remove today's fixed-tile mark"
    assert survived[2] == 1.0
