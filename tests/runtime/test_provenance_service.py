"""Mark -> verify through the real codec and ledger; re-marking policy; bad input; tampered records."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.provenance.records import RecordContent, pixel_sha256
from comfyui_backdrop.runtime.watermark import MIN_SIDE, ImageTooSmallError
from comfyui_backdrop.runtime.watermark.service import (
    PIXELS_CHANGED,
    PIXELS_IDENTICAL,
    AlreadyMarkedError,
    ProvenanceService,
    get_service,
    mark_for_run,
)
from tests.fixtures.images import studio_product_photo

CONTENT = RecordContent(account="acme-studio", prompt="amber bottle on travertine, soft light",
                        negative_prompt="text, watermark", seed=1234,
                        models={"sd15-inpaint.safetensors": "ab" * 32}, loras={"glam.safetensors": "cd" * 32},
                        metadata={"style": "Glam"})


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    return ProvenanceService(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def photo():
    return studio_product_photo(512, 512, seed=11)[0]


@pytest.fixture(scope="module")
def marked(service, photo):
    original = photo.copy()
    result = service.mark(photo, CONTENT)
    assert np.array_equal(photo, original), "the input must not be modified"
    return result


def test_mark_writes_a_signed_record_of_the_marked_pixels(marked, photo):
    assert marked.status == "marked" and len(marked.watermark_id) == 16
    assert marked.image.dtype == np.uint8 and marked.image.shape == photo.shape
    assert not np.array_equal(marked.image, photo)
    record = marked.record
    assert record.id_hex == marked.watermark_id
    assert record.image_sha256 == pixel_sha256(marked.image) != pixel_sha256(photo)
    assert (record.account, record.prompt, record.negative_prompt, record.seed) == (
        "acme-studio", CONTENT.prompt, "text, watermark", 1234)
    assert record.models == CONTENT.models and record.loras == CONTENT.loras


def test_verify_finds_the_record_with_valid_signature_and_chain(service, marked):
    result = service.verify_image(marked.image)
    assert result.found and result.watermark_id == marked.watermark_id
    assert result.false_positive_probability < 1e-6 and result.score > 6
    assert result.signature == "valid" and result.chain == "intact" and not result.problems
    assert result.pixels == PIXELS_IDENTICAL and not result.tampered
    assert result.record["prompt"] == CONTENT.prompt and result.record["id"] == marked.watermark_id
    assert marked.watermark_id in result.summary()


def test_verify_after_crop_and_jpeg(service, marked):
    import cv2

    crop = marked.image[40:400, 90:480]
    _, data = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 70])
    result = service.verify_image(cv2.imdecode(data, cv2.IMREAD_UNCHANGED))
    assert result.found and result.watermark_id == marked.watermark_id
    assert result.signature == "valid" and result.pixels == PIXELS_CHANGED


def test_unmarked_image_gives_no_id(service, photo):
    result = service.verify_image(photo)
    assert not result.found and result.watermark_id == "" and result.record is None
    assert result.signature == result.chain == "not marked"
    noise = np.random.default_rng(3).integers(0, 256, (300, 280, 3), dtype=np.uint8)
    assert service.verify_image(noise).watermark_id == ""


def test_too_small_images(service):
    tiny = studio_product_photo(MIN_SIDE - 1, 300, seed=1)[0]
    with pytest.raises(ImageTooSmallError, match=f"at least {MIN_SIDE} px"):
        service.mark(tiny, CONTENT)
    result = service.verify_image(np.zeros((20, 30, 3), np.uint8))
    assert not result.found and result.watermark_id == "" and "at least" in result.message


def test_remarking_policy(service, marked):
    count = len(service.ledger)
    with pytest.raises(AlreadyMarkedError, match=marked.watermark_id) as caught:
        service.mark(marked.image, CONTENT)
    assert caught.value.existing_payload == int(marked.watermark_id, 16)
    assert len(service.ledger) == count, "a refused re-mark writes nothing"

    kept = service.mark(marked.image, CONTENT, remark="keep")
    assert kept.status == "kept existing mark" and kept.watermark_id == marked.watermark_id
    assert np.array_equal(kept.image, marked.image) and kept.record == marked.record
    assert len(service.ledger) == count

    edited = marked.image.copy()
    edited[:8] = 255
    added = service.mark(edited, RecordContent(account="retoucher", prompt="brighter top"), remark="add-record")
    assert added.watermark_id == marked.watermark_id and added.record.seq == count + 1
    result = service.verify_image(edited)
    assert result.record["account"] == "acme-studio", "the first record stays the origin"
    assert [r["account"] for r in result.later_records] == ["retoucher"]
    assert result.pixels == PIXELS_IDENTICAL and result.signature == "valid" and result.chain == "intact"


def test_mark_known_to_another_ledger_is_reported(service, marked, tmp_path):
    """Same watermark key, different ledger: the mark is found but there is no record to show."""
    import shutil

    other_home = tmp_path / "copy"
    shutil.copytree(service.home / "keys", other_home / "keys")
    other = ProvenanceService(other_home)
    result = other.verify_image(marked.image)
    assert result.found and result.record is None and result.signature == result.chain == "no record"
    with pytest.raises(AlreadyMarkedError, match="no record of it"):
        other.mark(marked.image, CONTENT, remark="add-record")


def test_tampered_record_is_reported(tmp_path, photo):
    service = ProvenanceService(tmp_path)
    result = service.mark(photo[:256, :256], CONTENT)
    with sqlite3.connect(service.ledger.path) as con:
        con.execute("UPDATE records SET account = 'mallory'")
    verification = service.verify_image(result.image)
    assert verification.found and verification.tampered
    assert verification.record["account"] == "mallory"
    assert verification.signature == "invalid" and verification.chain == "broken"
    assert "TAMPERED" in verification.summary()


def test_mark_for_run_and_float_images(tmp_path, monkeypatch, photo):
    monkeypatch.setenv("BACKDROP_HOME", str(tmp_path))
    image, record = mark_for_run(photo[:200, :320], RecordContent(account="cli", prompt="p", negative_prompt="n",
                                                                  seed=7, models={"m.safetensors": "00" * 32}))
    assert image.dtype == np.uint8 and record.seed == 7 and record.account == "cli"
    assert get_service() is get_service(tmp_path)
    as_float = photo[100:400, 100:400].astype(np.float32) / 255.0
    result = get_service().mark(as_float, CONTENT)
    assert result.image.dtype == np.float32 and result.image.shape == as_float.shape
    assert get_service().verify_image(result.image).watermark_id == result.watermark_id


def test_protected_product_pixels_stay_exact(tmp_path):
    service = ProvenanceService(tmp_path)
    photo, product = studio_product_photo(384, 384, seed=5)
    result = service.mark(photo, CONTENT, protect=product)
    assert np.array_equal(result.image[product], photo[product]), "product pixels must be bit-exact"
    assert not np.array_equal(result.image[~product], photo[~product])
    verification = service.verify_image(result.image)
    assert verification.watermark_id == result.watermark_id and verification.pixels == PIXELS_IDENTICAL

    count = len(service.ledger)
    almost_all = np.ones_like(product)
    almost_all[:4] = False
    with pytest.raises(InvalidInputError, match="too small to carry a readable watermark"):
        service.mark(photo, CONTENT, protect=almost_all)
    with pytest.raises(InvalidInputError, match="must match"):
        service.mark(photo, CONTENT, protect=product[:100])
    assert len(service.ledger) == count, "a failed mark records nothing"


# ---- issue 14: records follow delivery; the refusal names the user's setting -----------------------------------------

def test_prepare_mark_records_nothing_and_recording_rolls_back_a_failed_delivery(tmp_path, photo):
    from comfyui_backdrop.runtime.watermark.service import PendingMark

    service = ProvenanceService(tmp_path)
    pending = service.prepare_mark(photo[:256, :256], CONTENT)
    assert isinstance(pending, PendingMark) and pending.status == "marked" and len(service.ledger) == 0
    assert service.detect(pending.image).payload == pending.watermark_id, "the pixels are marked already"
    with pytest.raises(OSError, match="disk full"), service.recording([pending]) as results:
        assert results[0].record.image_sha256 == pixel_sha256(pending.image)
        raise OSError("disk full")  # the save failed: the image was never delivered
    assert len(service.ledger) == 0 and service.ledger.get(pending.watermark_id) is None
    with service.recording([pending]) as (result,):
        pass
    assert len(service.ledger) == 1 and service.verify_image(result.image).signature == "valid"


def test_marked_for_delivery_records_only_a_saved_file(tmp_path, monkeypatch, photo):
    from comfyui_backdrop.runtime.watermark.service import marked_for_delivery

    monkeypatch.setenv("BACKDROP_HOME", str(tmp_path / "home"))
    (tmp_path / "not-a-folder").write_bytes(b"a file where the output folder should be")
    cli = RecordContent(account="cli", prompt="p")
    with pytest.raises(OSError), marked_for_delivery(photo[:256, :320], cli) as (image, _, _):
        target = tmp_path / "not-a-folder" / "out.png"
        target.parent.mkdir(parents=True, exist_ok=True)  # fails: the save cannot happen
    assert len(get_service().ledger) == 0
    with marked_for_delivery(photo[:256, :320], RecordContent(account="cli", prompt="p")) as (image, record, service):
        (tmp_path / "out.npy").write_bytes(image.tobytes())
    assert len(service.ledger) == 1 and service.ledger.get(record.id) == record
    with pytest.raises(AlreadyMarkedError, match="start from the unmarked original"), \
            marked_for_delivery(image, RecordContent(account="cli", prompt="p")):
        pass
    assert len(service.ledger) == 1


def test_the_refusal_names_the_setting_the_user_sees(tmp_path, marked, service):
    with pytest.raises(AlreadyMarkedError, match="set if_already_marked to 'keep'") as caught:
        service.mark(marked.image, CONTENT, policy_input="if_already_marked")
    assert "remark=" not in str(caught.value) and "'add-record'" in str(caught.value)
    with pytest.raises(AlreadyMarkedError, match="set remark to 'keep'"):
        service.mark(marked.image, CONTENT)


def test_a_wiped_ledger_is_named_when_a_marked_image_has_no_record(tmp_path, photo):
    service = ProvenanceService(tmp_path)
    result = service.mark(photo[:256, :256], CONTENT)
    service.ledger.path.write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        service.ledger.path.with_name(service.ledger.path.name + suffix).unlink(missing_ok=True)
    verification = ProvenanceService(tmp_path).verify_image(result.image)
    assert verification.found and verification.record is None and verification.signature == "no record"
    assert any("wiped or replaced" in p for p in verification.problems)
    with pytest.raises(InvalidInputError, match="wiped"):
        ProvenanceService(tmp_path).mark(photo[256:, 256:], CONTENT)


def test_checking_never_creates_keys(tmp_path):
    from comfyui_backdrop.runtime.provenance.keys import NoKeysError

    with pytest.raises(NoKeysError, match=r"no provenance keys: the home .*typo \(as given\) does not exist"):
        ProvenanceService(tmp_path / "typo", create_keys=False)
    assert not (tmp_path / "typo").exists()
