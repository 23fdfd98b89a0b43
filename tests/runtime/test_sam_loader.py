"""SAM checkpoints: architecture from shapes, safe offline loading, caching and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor, sam_model_registry

from comfyui_backdrop.runtime.errors import InvalidModelError, MissingModelError
from comfyui_backdrop.runtime.masking.sam_loader import (
    OFFICIAL_ARCHITECTURES,
    SamArchitecture,
    build_sam,
    detect_architecture,
    load_sam,
    state_dict_shapes,
)
from comfyui_backdrop.runtime.models import MODEL_CACHE, ModelLocator
from tests.fixtures.sam_fixtures import build_tiny_sam, save_sam

OFFICIAL = {  # (embed dim, depth, heads, global attention blocks) from segment_anything/build_sam.py
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}


class _Payload:
    """Unpickling this creates a marker file: proof that pickled code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="session")
def tiny():
    return build_tiny_sam(seed=0)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("models")
    sams = root / "sams"
    save_sam(tiny, sams / "tiny.pth")
    save_sam(tiny, sams / "nested" / "tiny.safetensors")
    (sams / "corrupt.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save(torch.nn.Linear(4, 3).state_dict(), sams / "linear.pth")
    state = tiny.state_dict()
    wrong = dict(state)
    key = "mask_decoder.output_hypernetworks_mlps.0.layers.2.weight"
    wrong[key] = torch.zeros(wrong[key].shape[0] + 1, wrong[key].shape[1])
    torch.save(wrong, sams / "wrong_shape.pth")
    dropped = "mask_decoder.output_hypernetworks_mlps.1.layers.0.bias"
    missing = {k: v for k, v in state.items() if k != dropped}
    torch.save(missing, sams / "missing_key.pth")
    torch.save({"weight": torch.zeros(2), "payload": _Payload(str(root / "pwned"))}, sams / "evil.pth")
    torch.save(state, root / "outside.pth")
    torch.save({f"module.{k}": v for k, v in state.items()}, sams / "ddp.pth")
    save_sam(build_tiny_sam(seed=0).half(), sams / "half.safetensors")
    return root


@pytest.fixture(scope="session")
def locator(models_dir):
    return ModelLocator.from_models_dir(models_dir)


def _predict(model, image):
    predictor = SamPredictor(model)
    predictor.set_image(image)
    box = np.array([20, 15, 90, 70])
    masks, iou, low = predictor.predict(box=box, multimask_output=True, return_logits=True)
    return predictor.features, masks, iou, low


# ----------------------------------------------------------------------------------- detection
@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_official_configs_are_detected(variant):
    with torch.device("meta"):
        model = sam_model_registry[variant]()
    arch = detect_architecture(state_dict_shapes(model.state_dict()))
    embed, depth, heads, global_idx = OFFICIAL[variant]
    assert arch.variant == variant
    assert (arch.encoder_embed_dim, arch.encoder_depth, arch.encoder_num_heads) == (embed, depth, heads)
    assert arch.encoder_global_attn_indexes == global_idx
    assert (arch.image_size, arch.patch_size, arch.encoder_window_size) == (1024, 16, 14)
    assert (arch.prompt_embed_dim, arch.decoder_mlp_dim, arch.iou_head_hidden_dim) == (256, 2048, 256)
    assert arch == OFFICIAL_ARCHITECTURES[variant]
    with torch.device("meta"):
        rebuilt = build_sam(arch)
    assert state_dict_shapes(rebuilt.state_dict()) == state_dict_shapes(model.state_dict())


def test_tiny_model_is_custom_with_its_own_dims(tiny):
    arch = detect_architecture(state_dict_shapes(tiny.state_dict()))
    assert arch.variant == "custom"
    assert (arch.encoder_embed_dim, arch.encoder_depth, arch.encoder_num_heads) == (32, 2, 2)
    assert (arch.encoder_global_attn_indexes, arch.encoder_window_size) == ((1,), 4)
    assert (arch.image_size, arch.patch_size, arch.image_embedding_size) == (128, 16, 8)
    assert (arch.prompt_embed_dim, arch.mask_in_chans, arch.decoder_mlp_dim) == (32, 8, 64)
    assert (arch.iou_head_depth, arch.iou_head_hidden_dim, arch.num_multimask_outputs) == (3, 32, 3)
    assert state_dict_shapes(build_sam(arch).state_dict()) == state_dict_shapes(tiny.state_dict())


def test_a_changed_official_dim_is_custom():
    shapes = dict(state_dict_shapes(_meta_state("vit_b")))
    shapes["mask_decoder.transformer.layers.0.mlp.lin1.weight"] = (1024, 256)
    arch = detect_architecture(shapes)
    assert arch.variant == "custom"
    assert arch.decoder_mlp_dim == 1024


def _meta_state(variant):
    with torch.device("meta"):
        return sam_model_registry[variant]().state_dict()


def test_non_sam_shapes_are_refused_with_what_was_expected():
    with pytest.raises(InvalidModelError) as info:
        detect_architecture({"weight": (3, 4), "bias": (3,)})
    message = str(info.value)
    assert "image_encoder.patch_embed.proj.weight" in message
    assert "not a segment-anything checkpoint" in message


def test_inconsistent_relative_positions_are_refused():
    shapes = dict(state_dict_shapes(_meta_state("vit_b")))
    shapes["image_encoder.blocks.3.attn.rel_pos_h"] = (21, 64)  # a third attention size
    with pytest.raises(InvalidModelError, match="relative position"):
        detect_architecture(shapes)


# ------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("name", ["tiny.pth", "nested/tiny.safetensors"])
def test_loaded_model_matches_the_in_memory_one(name, tiny, locator):
    loaded = load_sam(name, locator=locator)
    assert loaded.name == name and loaded.device == "cpu"
    assert loaded.architecture.variant == "custom"
    assert not loaded.model.training
    image = (np.random.default_rng(1).random((96, 120, 3)) * 255).astype(np.uint8)
    for got, want in zip(_predict(loaded.model, image), _predict(tiny, image), strict=True):
        got, want = torch.as_tensor(got), torch.as_tensor(want)
        assert torch.equal(got, want)


def test_half_precision_and_prefixed_checkpoints_load_as_float32(tiny, locator):
    half = load_sam("half.safetensors", locator=locator).model
    ddp = load_sam("ddp.pth", locator=locator).model
    reference = tiny.state_dict()
    for key, value in half.state_dict().items():
        assert value.dtype == reference[key].dtype
        assert torch.equal(value, reference[key].half().to(value.dtype))
        assert torch.equal(ddp.state_dict()[key], reference[key])


def test_second_load_returns_the_cached_object(locator):
    first = load_sam("tiny.pth", locator=locator)
    assert load_sam("tiny.pth", device="cpu", locator=locator) is first
    assert load_sam("nested/tiny.safetensors", locator=locator) is not first
    path = str(locator.resolve("sams", "tiny.pth").resolve())

    def is_tiny_pth(key):  # this test's file only: other tests cache their own tiny.pth
        return isinstance(key, tuple) and key[:1] == ("sam",) and key[1][0] == path

    assert any(is_tiny_pth(k) and k[2] == "cpu" for k in list(MODEL_CACHE._items))
    freed = MODEL_CACHE.free(is_tiny_pth)
    assert freed == 1
    assert load_sam("tiny.pth", locator=locator) is not first


def test_corrupt_file_is_invalid(locator):
    with pytest.raises(InvalidModelError, match=r"corrupt\.pth"):
        load_sam("corrupt.pth", locator=locator)


def test_non_sam_state_dict_gets_a_helpful_message(locator):
    with pytest.raises(InvalidModelError) as info:
        load_sam("linear.pth", locator=locator)
    message = str(info.value)
    assert "linear.pth" in message
    assert "not a segment-anything checkpoint" in message
    assert "image_encoder.patch_embed.proj.weight" in message


@pytest.mark.parametrize(("name", "problem"), [("wrong_shape.pth", "size mismatch"),
                                                ("missing_key.pth", "Missing key")])
def test_weights_that_do_not_fit_are_invalid(name, problem, locator):
    with pytest.raises(InvalidModelError) as info:
        load_sam(name, locator=locator)
    assert name in str(info.value) and problem in str(info.value)


def test_pickled_code_is_refused_and_never_runs(locator, models_dir):
    marker = models_dir / "pwned"
    with pytest.raises(InvalidModelError, match=r"evil\.pth"):
        load_sam("evil.pth", locator=locator)
    assert not marker.exists()
    # Control: an unsafe load really would have run it, so the check above is not vacuous.
    torch.load(models_dir / "sams" / "evil.pth", weights_only=False)
    assert marker.exists()
    marker.unlink()


def test_missing_model_names_the_folder_and_file_kinds(locator):
    with pytest.raises(MissingModelError) as info:
        load_sam("sam_vit_h_4b8939.pth", locator=locator)
    message = str(info.value)
    assert "models/sams" in message and ".pth" in message and ".safetensors" in message


@pytest.mark.parametrize("name", ["../outside.pth", "/etc/passwd", "nested/../tiny.pth"])
def test_names_outside_the_listing_are_refused(name, locator, models_dir):
    assert (models_dir / "outside.pth").exists()
    with pytest.raises(MissingModelError):
        load_sam(name, locator=locator)


def test_architecture_defaults_are_vit_b():
    assert SamArchitecture().named().variant == "vit_b"
