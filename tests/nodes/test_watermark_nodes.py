"""BackdropWatermark, BackdropVerify and BackdropSave through the node adapters (ComfyUI contract + behaviour)."""

from __future__ import annotations

import hashlib
import inspect
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_backdrop.nodes.watermark import (
    NODE_CLASS_MAPPINGS,
    NODE_DISPLAY_NAME_MAPPINGS,
    BackdropSave,
    BackdropVerify,
    BackdropWatermark,
)
from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.provenance.c2pa_manifest import read_manifest
from comfyui_backdrop.runtime.watermark import MIN_SIDE, ImageTooSmallError
from comfyui_backdrop.runtime.watermark.service import AlreadyMarkedError, get_service
from tests.conftest import use_node_host
from tests.fixtures.images import image_batch, studio_product_photo
from tests.fixtures.watermark_images import skimage_photo

MARK_DEFAULTS = {"account": "acme", "prompt": "bottle on linen", "negative_prompt": "text", "generation_seed": 42,
                 "metadata": '{"client": "ACME"}', "if_already_marked": "refuse", "if_too_small": "leave unmarked",
                 "strength": 1.0}
SAVE_DEFAULTS = {"filename_prefix": "Backdrop", "format": "png", "quality": 95, "resolution": "original",
                 "c2pa": True}


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """Private provenance home, output and input folders for one test."""
    for sub in ("home", "output", "input"):
        (tmp_path / sub).mkdir()
    monkeypatch.setenv("BACKDROP_HOME", str(tmp_path / "home"))
    use_node_host(monkeypatch, tmp_path / "input", tmp_path / "output")
    return tmp_path




@pytest.fixture(scope="module")
def photos():
    return image_batch(studio_product_photo(256, 256, seed=1)[0], studio_product_photo(256, 256, seed=2)[0])


def test_schemas_follow_the_comfyui_contract():
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        assert node_id.startswith("Backdrop") and cls.CATEGORY == "Backdrop/provenance"
        schema = cls.INPUT_TYPES()
        assert set(schema) <= {"required", "optional", "hidden"}
        params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
        for section in ("required", "optional", "hidden"):
            for name, spec in schema.get(section, {}).items():
                assert name in params, f"{node_id} does not accept {name}"
                if section == "hidden":
                    assert spec in ("PROMPT", "EXTRA_PNGINFO")
                    continue
                kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
                if isinstance(kind, list):
                    assert kind and options.get("default", kind[0]) in kind, (node_id, name)
                elif kind in ("INT", "FLOAT"):
                    assert options["min"] <= options["default"] <= options["max"], (node_id, name)
        names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
        assert len(names) == len(cls.RETURN_TYPES)
        assert len(getattr(cls, "OUTPUT_IS_LIST", cls.RETURN_TYPES)) == len(cls.RETURN_TYPES)
    assert BackdropSave.OUTPUT_NODE and BackdropSave.RETURN_TYPES == ()


def test_watermark_a_batch_then_verify_it(env, photos, progress_log):
    before = photos.clone()
    image, ids, report = BackdropWatermark().mark(photos, **MARK_DEFAULTS)
    assert torch.equal(photos, before), "input tensors must not be mutated"
    assert image.shape == photos.shape and image.dtype == torch.float32 and image.min() >= 0 and image.max() <= 1
    assert (image - photos).abs().max() > 0
    id_list = ids.split("\n")
    assert len(id_list) == 2 and len(set(id_list)) == 2 and all(len(i) == 16 for i in id_list)
    assert report.count("marked") == 2 and progress_log[-1] == (2, 2)

    found, wids, scores, records, signatures, chains, reports, presence = BackdropVerify().verify(image=image)["result"]
    assert found == [True, True] and wids == id_list
    assert [tuple(m.shape) for m in presence] == [(1, *image.shape[1:3])] * 2  # marked all over (IDs are random:
    assert all(m.min() > 0.5 and m.mean() > 0.95 for m in presence)            # a weak cell may read a little less)
    assert all(s > 6 for s in scores) and signatures == ["valid"] * 2 and chains == ["intact"] * 2
    record = json.loads(records[0])
    assert record["account"] == "acme" and record["seed"] == 42 and record["prompt"] == "bottle on linen"
    assert record["metadata"] == {"client": "ACME", "batch_index": 0, "batch_size": 2, "watermark_version": 3}
    assert "identical to the marked image" in reports[0]


def test_product_mask_keeps_the_product_exact(env):
    photo, product = studio_product_photo(256, 320, seed=6)
    images = image_batch(photo, photo)
    mask = torch.from_numpy(product[None].astype(np.float32))  # one mask, broadcast over the batch
    marked, ids, _ = BackdropWatermark().mark(images, product_mask=mask, **MARK_DEFAULTS)
    keep = torch.from_numpy(product)
    assert torch.equal(marked[:, keep], images[:, keep])
    assert (marked[:, ~keep] - images[:, ~keep]).abs().max() > 0
    assert BackdropVerify().verify(image=marked)["result"][1] == ids.split("\n")


def test_verify_maps_where_a_spliced_image_carries_the_mark(env):
    photo = studio_product_photo(384, 512, seed=3)[0]
    other = skimage_photo("rocket")[:384, :512]
    marked, ids, _ = BackdropWatermark().mark(image_batch(photo), **MARK_DEFAULTS)
    spliced = torch.from_numpy(other.astype(np.float32) / 255)[None].clone()
    spliced[:, :, :256] = marked[:, :, :256]  # the marked left half beside an unmarked photo
    found, wids, *_, presence = BackdropVerify().verify(image=spliced)["result"]
    assert found == [True] and wids == [ids] and presence[0].shape == (1, 384, 512)
    assert presence[0][0, :, :192].mean() > 0.9 and presence[0][0, :, 320:].mean() < 0.1


def test_unmarked_images_verify_as_not_found(env, photos):
    found, wids, scores, records, signatures, chains, _, presence = BackdropVerify().verify(image=photos[:1])["result"]
    assert found == [False] and wids == [""] and records == [""] and signatures == chains == ["not marked"]
    assert presence[0].shape == (1, *photos.shape[1:3]) and presence[0].dtype == torch.float32
    assert not presence[0].any()
    assert isinstance(scores[0], float)
    with pytest.raises(InvalidInputError, match="connect an image or choose a file"):
        BackdropVerify().verify()
    assert math.isnan(BackdropVerify.IS_CHANGED(file="none"))


def test_watermark_reads_the_workflow(env, photos, models_dir):
    (models_dir / "checkpoints" / "tiny.safetensors").write_bytes(b"not really weights")
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "amber bottle, travertine", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "lowres", "clip": ["1", 1]}},
        "4": {"class_type": "KSampler", "inputs": {"seed": 31337, "positive": ["2", 0], "negative": ["3", 0]}},
    }
    options = {**MARK_DEFAULTS, "prompt": "", "negative_prompt": "", "generation_seed": -1, "metadata": "retouched"}
    _, ids, _ = BackdropWatermark().mark(photos[:1], workflow_prompt=graph, **options)
    record = get_service().ledger.get(int(ids, 16))
    assert record.prompt == "amber bottle, travertine" and record.negative_prompt == "lowres"
    assert record.seed == 31337
    assert record.models == {"tiny.safetensors": hashlib.sha256(b"not really weights").hexdigest()}
    assert record.metadata["notes"] == "retouched" and len(record.metadata["workflow_sha256"]) == 64


def test_a_product_that_leaves_too_little_area_follows_the_too_small_policy(env):
    photo, _ = studio_product_photo(MIN_SIDE, MIN_SIDE + 16, seed=4)
    images = image_batch(photo, photo)
    product = np.zeros(photo.shape[:2], np.float32)
    product[:, : photo.shape[1] - 8] = 1.0  # only an 8 px strip is left to carry the mark
    mask = torch.from_numpy(np.stack([product, np.zeros_like(product)]))  # the second image protects nothing
    image, ids, report = BackdropWatermark().mark(images, product_mask=mask, **MARK_DEFAULTS)
    first, second = ids.split("\n")
    assert first == "" and len(second) == 16 and torch.equal(image[0], images[0])
    assert "image 1: left unmarked: the mark did not read back" in report and "image 2: marked" in report
    with pytest.raises(ImageTooSmallError, match="did not read back"):
        BackdropWatermark().mark(images, product_mask=mask, **{**MARK_DEFAULTS, "if_too_small": "error"})


def test_too_small_and_already_marked(env, photos):
    small = image_batch(studio_product_photo(MIN_SIDE - 32, MIN_SIDE, seed=3)[0])
    image, ids, report = BackdropWatermark().mark(small, **MARK_DEFAULTS)
    assert torch.equal(image, small) and ids == ""
    assert f"at least {MIN_SIDE} px" in report and "left unmarked" in report
    with pytest.raises(ImageTooSmallError, match=f"at least {MIN_SIDE} px"):
        BackdropWatermark().mark(small, **{**MARK_DEFAULTS, "if_too_small": "error"})

    marked, first_id, _ = BackdropWatermark().mark(photos[:1], **MARK_DEFAULTS)
    with pytest.raises(AlreadyMarkedError, match=first_id):
        BackdropWatermark().mark(marked, **MARK_DEFAULTS)
    kept, kept_id, report = BackdropWatermark().mark(marked, **{**MARK_DEFAULTS, "if_already_marked": "keep"})
    assert kept_id == first_id and torch.equal(kept, marked) and "kept existing mark" in report


def test_save_then_verify_the_file(env, photos):
    marked, ids, _ = BackdropWatermark().mark(photos, **MARK_DEFAULTS)
    prompt = {"7": {"class_type": "KSampler", "inputs": {"seed": 42}}}
    extra = {"workflow": {"nodes": [{"id": 7}]}}
    result = BackdropSave().save(marked, prompt=prompt, extra_pnginfo=extra, **SAVE_DEFAULTS)
    entries = result["ui"]["images"]
    assert [e["filename"] for e in entries] == ["Backdrop_00001_.png", "Backdrop_00002_.png"]
    assert all(e["subfolder"] == "" and e["type"] == "output" for e in entries)
    first = env / "output" / "Backdrop_00001_.png"
    with Image.open(first) as picture:
        assert json.loads(picture.text["prompt"]) == prompt
        assert json.loads(picture.text["workflow"]) == extra["workflow"]
    manifest = read_manifest(first, keys=get_service().keys)
    assert manifest.state == "Trusted" and manifest.watermark_ids == [ids.split("\n")[0]]

    original = first.read_bytes()
    again = BackdropSave().save(marked[:1], **{**SAVE_DEFAULTS, "format": "jpeg", "filename_prefix": "Backdrop"})
    assert again["ui"]["images"][0]["filename"] == "Backdrop_00003_.jpg" and first.read_bytes() == original

    (env / "input" / "delivered.png").write_bytes(original)
    assert "delivered.png" in BackdropVerify.INPUT_TYPES()["required"]["file"][0]
    found, wids, _, records, signatures, chains, reports, presence = BackdropVerify().verify(
        file="delivered.png")["result"]
    assert found == [True] and wids == [ids.split("\n")[0]] and signatures == ["valid"] and chains == ["intact"]
    assert presence[0].shape == (1, 256, 256) and presence[0].min() > 0.5 and presence[0].mean() > 0.95
    assert "C2PA manifest trusted" in reports[0] and json.loads(records[0])["account"] == "acme"
    assert "identical to the marked image" in reports[0], "the saved PNG holds exactly the recorded pixels"


# ---- issue 14 --------------------------------------------------------------------------------------------------------

def test_a_refused_image_anywhere_in_a_batch_leaves_no_record(env, photos):
    """Before: a batch [unmarked, marked] with refuse recorded the first image, then failed."""
    marked, marked_id, _ = BackdropWatermark().mark(photos[:1], **MARK_DEFAULTS)
    count = len(get_service().ledger)
    mixed = torch.cat([photos[1:], marked])
    with pytest.raises(AlreadyMarkedError, match=rf"BackdropWatermark: image 2 of 2: .*{marked_id}") as caught:
        BackdropWatermark().mark(mixed, **MARK_DEFAULTS)
    assert "set if_already_marked to 'keep'" in str(caught.value) and "remark=" not in str(caught.value)
    assert caught.value.existing_payload == int(marked_id, 16)
    assert len(get_service().ledger) == count, "all or nothing: the unmarked first image got no record either"
    _, ids, report = BackdropWatermark().mark(mixed, **{**MARK_DEFAULTS, "if_already_marked": "keep"})
    first, second = ids.split("\n")
    assert second == marked_id and "kept existing mark" in report
    assert len(get_service().ledger) == count + 1 and get_service().ledger.get(int(first, 16)) is not None


def test_deeply_nested_metadata_is_a_clear_error(env, photos):
    """Before: metadata JSON nested 2,000 deep raised a raw RecursionError."""
    count = len(get_service().ledger)
    for depth in (2000, 100):
        deep = "[" * depth + "]" * depth
        with pytest.raises(InvalidInputError, match="BackdropWatermark: metadata is .*nested .*at most 32"):
            BackdropWatermark().mark(photos[:1], **{**MARK_DEFAULTS, "metadata": '{"a": ' + deep + "}"})
    assert len(get_service().ledger) == count
    _, ids, _ = BackdropWatermark().mark(photos[:1], **{**MARK_DEFAULTS, "metadata": '{"a": [[["ok"]]]}'})
    assert get_service().ledger.get(int(ids, 16)).metadata == {"a": [[["ok"]]], "watermark_version": 3}
