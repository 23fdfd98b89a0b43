"""Engine cache keys change with every input they cover; manifests round-trip and are never overwritten;
a repeated export request finds the engine already built."""

from __future__ import annotations

import dataclasses
import json

import pytest

from comfyui_backdrop.export.cache import EngineCache, EngineKey
from comfyui_backdrop.export.engine_export import BaseIdentity, EngineRequest, export_engine
from comfyui_backdrop.runtime.engines.load import open_backend
from comfyui_backdrop.runtime.engines.manifest import EngineManifest, manifest_path, read_manifest, write_manifest
from comfyui_backdrop.runtime.engines.profile import ShapeProfile
from comfyui_backdrop.runtime.engines.spec import UNetSpec
from comfyui_backdrop.runtime.errors import InvalidModelError, MissingModelError
from tests.fixtures.tiny_unets import tiny_sd15_unet

SPEC = UNetSpec(family="sd15", in_channels=9, out_channels=4, context_dim=768, latent_multiple=8,
                config={"block_out_channels": [320, 640, 1280, 1280]})
PROFILE = ShapeProfile.from_resolutions([(512, 512), (768, 768)], batch=(1, 2, 4))
BASE_KEY = EngineKey(base_fingerprint="aaaa", loras=(("style.safetensors", "f00d", 0.8),), spec=SPEC,
                     profile=PROFILE, precision="fp16", format="tensorrt", tensorrt_version="10.13.0",
                     compute_capability="9.0", builder=(("optimization_level", 3), ("refittable", False)))

VARIANTS = {
    "base model": {"base_fingerprint": "bbbb"},
    "lora strength": {"loras": (("style.safetensors", "f00d", 0.75),)},
    "lora file content": {"loras": (("style.safetensors", "beef", 0.8),)},
    "lora name": {"loras": (("other.safetensors", "f00d", 0.8),)},
    "lora added": {"loras": (("style.safetensors", "f00d", 0.8), ("b.safetensors", "cafe", 1.0))},
    "lora order": {"loras": (("b.safetensors", "cafe", 1.0), ("style.safetensors", "f00d", 0.8))},
    "no lora": {"loras": ()},
    "profile max size": {"profile": ShapeProfile.from_resolutions([(512, 512), (1024, 768)], batch=(1, 2, 4))},
    "profile opt size": {"profile": ShapeProfile.from_resolutions([(768, 768), (512, 512)], batch=(1, 2, 4))},
    "profile batch": {"profile": ShapeProfile.from_resolutions([(512, 512), (768, 768)], batch=(1, 2, 8))},
    "profile tokens": {"profile": ShapeProfile.from_resolutions([(512, 512), (768, 768)], batch=(1, 2, 4),
                                                                tokens=(77, 77, 154))},
    "precision": {"precision": "bf16"},
    "format": {"format": "onnx"},
    "tensorrt version": {"tensorrt_version": "10.14.1"},
    "gpu compute capability": {"compute_capability": "8.9"},
    "builder level": {"builder": (("optimization_level", 5), ("refittable", False))},
    "refittable": {"builder": (("optimization_level", 3), ("refittable", True))},
    "unet channels": {"spec": dataclasses.replace(SPEC, in_channels=4)},
    "unet config": {"spec": dataclasses.replace(SPEC, config={"block_out_channels": [320, 640, 1280]})},
    "onnx target": {"optimized_for": "cpu"},
}


def test_same_inputs_same_key():
    again = EngineKey(**{f.name: getattr(BASE_KEY, f.name) for f in dataclasses.fields(EngineKey)})
    assert again.digest() == BASE_KEY.digest()
    assert len(BASE_KEY.digest()) == 16 and int(BASE_KEY.digest(), 16) >= 0


@pytest.mark.parametrize("change", list(VARIANTS))
def test_any_input_changes_the_key(change):
    assert dataclasses.replace(BASE_KEY, **VARIANTS[change]).digest() != BASE_KEY.digest()


def test_all_variant_keys_are_distinct():
    digests = {dataclasses.replace(BASE_KEY, **v).digest() for v in VARIANTS.values()}
    assert len(digests) == len(VARIANTS) and BASE_KEY.digest() not in digests


def manifest_for(name: str, key: str) -> EngineManifest:
    return EngineManifest(format="onnx", file=name, spec=SPEC, precision="fp32", key=key, profile=PROFILE,
                          base_model="checkpoints/x.safetensors", base_fingerprint="aaaa",
                          loras=(("style.safetensors", "f00d", 0.8),), refit_map={"w": {"params": ["a.weight"]}})


def test_manifest_round_trip_and_no_overwrite(tmp_path):
    engine = tmp_path / "unet.onnx"
    engine.write_bytes(b"graph")
    manifest = manifest_for("unet.onnx", "k1")
    path = write_manifest(manifest, engine)
    assert path == manifest_path(engine) == tmp_path / "unet.onnx.json"
    loaded = read_manifest(engine)
    assert loaded.to_dict() | {"created": ""} == manifest.to_dict() | {"created": ""}
    assert loaded.spec == SPEC and loaded.profile == PROFILE and loaded.loras == manifest.loras
    before = path.read_bytes()
    with pytest.raises(InvalidModelError, match="already exists"):
        write_manifest(manifest_for("unet.onnx", "k2"), engine)
    assert path.read_bytes() == before


def test_manifest_errors_name_the_fix(tmp_path):
    engine = tmp_path / "lonely.engine"
    engine.write_bytes(b"x")
    with pytest.raises(MissingModelError, match="BackdropExportEngine"):
        read_manifest(engine)
    manifest_path(engine).write_text("{not json")
    with pytest.raises(InvalidModelError, match="not a readable JSON manifest"):
        read_manifest(engine)
    other = tmp_path / "renamed.onnx"
    other.write_bytes(b"x")
    manifest_path(other).write_text(json.dumps(manifest_for("original.onnx", "k").to_dict()))
    with pytest.raises(InvalidModelError, match="keep the names"):
        read_manifest(other)


def test_cache_finds_engines_by_key(tmp_path):
    for name, key in (("a.onnx", "k1"), ("b.onnx", "k2")):
        (tmp_path / name).write_bytes(b"x")
        write_manifest(manifest_for(name, key), tmp_path / name)
    write_manifest(manifest_for("gone.onnx", "k3"), tmp_path / "gone.onnx")  # engine file missing
    (tmp_path / "junk.onnx").write_bytes(b"x")
    manifest_path(tmp_path / "junk.onnx").write_text("[]")
    cache = EngineCache([tmp_path / "missing-folder", tmp_path])
    assert cache.find("k2")[0] == tmp_path / "b.onnx"
    assert cache.find("k3") is None and cache.find("nope") is None


def test_export_engine_reuses_a_matching_engine(tmp_path):
    unet = tiny_sd15_unet()
    base = BaseIdentity(name="checkpoints/tiny.safetensors", fingerprint="1234")
    request = EngineRequest(format="onnx", precision="fp32", profile=ShapeProfile.from_resolutions(
        [(128, 128)], batch=2, latent_multiple=2))
    first = export_engine(unet, base, request, tmp_path)
    assert not first.cached and first.path.parent == tmp_path
    assert first.path.name.startswith("unet_sd15_inpaint_fp32_") and first.manifest.key in first.path.name
    assert read_manifest(first.path).refit_map  # portable exports can take new weights by name
    again = export_engine(unet, base, request, tmp_path)
    assert again.cached and again.path == first.path
    other = export_engine(unet, dataclasses.replace(base, loras=(("l.safetensors", "ab", 1.0),)), request, tmp_path)
    assert not other.cached and other.path != first.path
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [first.path.name, first.path.name + ".json", other.path.name, other.path.name + ".json"])
    backend = open_backend(first.path)
    assert backend.name == "onnxruntime-cpu" and backend.spec.in_channels == 9
