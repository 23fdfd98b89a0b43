"""C2PA manifests in PNG, JPEG and WebP: soft binding to the watermark ID, actions, trust, tampering."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.provenance.c2pa_manifest import (
    SOFT_BINDING_ALG,
    TRUSTED,
    VALID,
    WATERMARK_ACTION,
    read_manifest,
    sign_asset,
)
from comfyui_backdrop.runtime.provenance.keys import load_keys
from comfyui_backdrop.runtime.saving import encode_image
from tests.fixtures.images import studio_product_photo

WID = 0x1234_5678_9ABC_DEF0 >> 1


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return load_keys(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def photo():
    return studio_product_photo(96, 128, seed=4)[0]


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as picture:
        return np.asarray(picture.convert("RGB"))


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_round_trip_with_soft_binding(keys, photo, fmt):
    plain, _ = encode_image(photo, fmt, quality=90)
    signed = sign_asset(plain, fmt, keys, title=f"bottle.{fmt}", watermark_id=WID, record_hash="ab" * 32)
    assert np.array_equal(_pixels(signed), _pixels(plain)), "embedding a manifest must not touch the pixels"

    info = read_manifest(signed, fmt, keys)
    assert info.present and info.state == TRUSTED and not info.failures
    assert info.watermark_ids == [f"{WID:016x}"]
    assert info.actions[:2] == ["c2pa.created", WATERMARK_ACTION]
    assert info.record_hash == "ab" * 32
    assert "trusted" in info.summary

    stranger = read_manifest(signed, fmt)  # without this installation's root as trust anchor
    assert stranger.state == VALID and stranger.failures == ["signingCredential.untrusted"]
    assert stranger.watermark_ids == [f"{WID:016x}"]


def test_file_path_and_soft_binding_json(keys, photo, tmp_path):
    import c2pa

    plain, _ = encode_image(photo, "png")
    path = tmp_path / "bottle.png"
    path.write_bytes(sign_asset(plain, "png", keys, title="bottle.png", watermark_id=WID))
    assert read_manifest(path, keys=keys).watermark_ids == [f"{WID:016x}"]
    with c2pa.Reader(str(path)) as reader:  # the assertion as any C2PA reader sees it
        store = reader.get_active_manifest()
    [binding] = [a["data"] for a in store["assertions"] if a["label"] == "c2pa.soft-binding"]
    assert binding == {"alg": SOFT_BINDING_ALG, "blocks": [{"scope": {}, "value": f"{WID:016x}"}]}


def test_manifest_without_watermark_has_no_binding(keys, photo):
    plain, _ = encode_image(photo, "jpeg")
    info = read_manifest(sign_asset(plain, "jpeg", keys, title="x.jpg"), "jpeg", keys)
    assert info.state == TRUSTED and info.watermark_ids == []
    assert "c2pa.created" in info.actions and WATERMARK_ACTION not in info.actions


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_edited_pixels_invalidate_the_manifest(keys, photo, fmt):
    plain, _ = encode_image(photo, fmt)
    signed = bytearray(sign_asset(plain, fmt, keys, title="x", watermark_id=WID))
    signed[-200] ^= 0x55  # inside the image data, after the manifest
    info = read_manifest(bytes(signed), fmt, keys)
    assert info.state == "Invalid" and any("mismatch" in code for code in info.failures)


def test_no_manifest_and_unsupported_format(keys, photo):
    plain, _ = encode_image(photo, "webp")
    info = read_manifest(plain, "webp", keys)
    assert not info.present and info.summary == "no C2PA manifest"
    with pytest.raises(InvalidInputError, match="PNG, JPEG and WebP"):
        sign_asset(plain, "gif", keys, title="x")
