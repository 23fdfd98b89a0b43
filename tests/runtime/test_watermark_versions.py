"""Which codec made a mark: ledger records (old ones read as v1, hashes unchanged), C2PA soft-binding names,
and the service marking with v3 (product pixels exact, 40-bit IDs) while v1 and v2 images still verify."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.provenance.c2pa_manifest import (
    SOFT_BINDING_ALG,
    binding_version,
    build_manifest_definition,
    read_manifest,
    sign_asset,
    soft_binding_alg,
)
from comfyui_backdrop.runtime.provenance.records import WATERMARK_VERSION_KEY, Record, RecordContent
from comfyui_backdrop.runtime.saving import encode_image
from comfyui_backdrop.runtime.watermark.service import ProvenanceService
from tests.fixtures.images import studio_product_photo

OLD_RECORD = dict(seq=1, id=42, created_at="2025-01-31T12:00:00.000000+00:00", account="acme", prompt="bottle",
                  negative_prompt="", seed=7, models={}, loras={}, image_sha256="ab" * 32, metadata={"style": "Glam"},
                  signer="cd" * 32, prev_hash="0" * 64, record_hash="", signature="")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    return ProvenanceService(tmp_path_factory.mktemp("home"))


def test_old_records_read_as_v1_and_keep_their_hash():
    record = Record(**OLD_RECORD)
    assert record.watermark_version == 1 and record.to_json_dict()["watermark_version"] == 1
    # the canonical fields are exactly what they were before versions existed: no new key is hashed
    assert set(record.hashed_fields()) == {*OLD_RECORD, "v"} - {"record_hash", "signature"}
    assert "watermark_version" not in record.hashed_fields()["metadata"]


def test_content_states_versions_after_1_in_the_signed_metadata():
    assert RecordContent(metadata={"a": 1}, watermark_version=1).metadata == {"a": 1}
    v2 = RecordContent(metadata={"a": 1}, watermark_version=2)
    assert v2.metadata == {"a": 1, WATERMARK_VERSION_KEY: 2}
    record = Record(**{**OLD_RECORD, "metadata": v2.metadata})
    assert record.watermark_version == 2
    assert record.computed_hash() != Record(**OLD_RECORD).computed_hash()  # the statement is hashed and signed
    with pytest.raises(InvalidInputError, match="watermark_version"):
        RecordContent(watermark_version=4)
    assert Record(**{**OLD_RECORD, "metadata": {WATERMARK_VERSION_KEY: "junk"}}).watermark_version == 1


def test_soft_binding_algorithm_names_the_codec_version(service):
    assert soft_binding_alg(1) == SOFT_BINDING_ALG == "com.comfyui-backdrop.watermark.1"
    assert soft_binding_alg(2) == "com.comfyui-backdrop.watermark.2"
    assert binding_version("com.comfyui-backdrop.watermark.2") == 2 and binding_version("other.alg") is None
    manifest = build_manifest_definition("x.png", 0x1234, None, watermark_version=2)
    binding = next(a for a in manifest["assertions"] if a["label"] == "c2pa.soft-binding")["data"]
    assert binding["alg"] == "com.comfyui-backdrop.watermark.2"
    photo = studio_product_photo(128, 160, seed=1)[0]
    signed = sign_asset(encode_image(photo, "png")[0], "png", service.keys, title="x.png", watermark_id=0x1234,
                        watermark_version=2)
    info = read_manifest(signed, "png", service.keys)
    assert info.watermark_ids == ["0000000000001234"] and info.watermark_versions == [2]
    with pytest.raises(InvalidInputError):
        soft_binding_alg(5)


def test_service_marks_with_v3_by_default_records_it_and_keeps_the_product_exact(service):
    photo, product = studio_product_photo(480, 640, seed=4)
    result = service.mark(photo, RecordContent(account="acme", metadata={"style": "Minimal"}), protect=product)
    assert np.array_equal(result.image[product], photo[product])
    assert result.record.watermark_version == 3 and 0 < result.record.id < 2**40  # v3 carries 40-bit IDs
    assert result.record.metadata == {"style": "Minimal", WATERMARK_VERSION_KEY: 3}
    check = service.verify_image(result.image)
    assert check.found and check.watermark_version == 3 and check.signature == "valid" and check.chain == "intact"
    assert check.record["watermark_version"] == 3 and "codec v3" in check.summary()


def test_v2_marks_still_verify_through_the_service(service):
    photo = studio_product_photo(400, 480, seed=5)[0]
    result = service.mark(photo, RecordContent(account="acme"), watermark_version=2)
    assert (result.record.watermark_version == 2 and result.record.id >= 2**40) or result.record.id < 2**63
    check = service.verify_image(result.image)
    assert check.found and check.watermark_version == 2 and check.signature == "valid"
    assert check.watermark_id == result.watermark_id


def test_v1_marks_still_verify_through_the_service(service):
    photo = studio_product_photo(320, 384, seed=9)[0]
    result = service.mark(photo, RecordContent(account="acme"), watermark_version=1)  # the earlier codec
    assert result.record.watermark_version == 1 and WATERMARK_VERSION_KEY not in result.record.metadata
    check = service.verify_image(result.image)
    assert check.found and check.watermark_version == 1 and check.signature == "valid"


def test_a_record_added_to_an_existing_mark_states_its_version(service):
    photo = studio_product_photo(400, 400, seed=12)[0]
    first = service.mark(photo, RecordContent(account="a"), watermark_version=2)
    again = service.mark(first.image, RecordContent(account="b"), remark="add-record")
    assert again.status == "added a record to the existing mark" and again.watermark_id == first.watermark_id
    assert again.record.watermark_version == 2


def test_replace_keeps_the_version_statement():
    content = RecordContent(watermark_version=2)
    assert dataclasses.replace(content, account="x").metadata[WATERMARK_VERSION_KEY] == 2


def test_a_saved_v2_file_names_codec_2_in_its_soft_binding(service, tmp_path):
    from comfyui_backdrop.runtime.saving import SaveOptions, save_image

    photo = studio_product_photo(256, 320, seed=21)[0]
    marked = service.mark(photo, RecordContent(account="acme"), watermark_version=2)
    path = save_image(marked.image, tmp_path / "v2.png", SaveOptions(), keys=service.keys,
                      binding=service.provenance_for).path
    info = read_manifest(path, keys=service.keys)
    assert info.watermark_ids == [marked.watermark_id] and info.watermark_versions == [2]
    checked = service.verify_file(path)
    assert checked.found and checked.watermark_version == 2 and checked.c2pa["watermark_versions"] == [2]
