"""The FLUX transformer through the engine machinery: ONNX and OpenVINO exports with dynamic axes, engine-backed
FLUX Fill / Kontext inpainting with the product exact, the engine cache, LoRA stacks and broken engine files.

Uses the tiny FLUX.1 Fill and Kontext folders of tests/fixtures/flux_fixtures.py, loaded through
``load_pipeline`` like a user's model; engines go to models/onnx and models/openvino of a private models
dir (the other model kinds come from the shared tiny models).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from comfyui_backdrop.export.attach import attach_engine
from comfyui_backdrop.export.engine_export import EngineRequest, export_pipeline_engine
from comfyui_backdrop.export.flux_export import example_inputs, export_patches
from comfyui_backdrop.runtime.engines.flux_adapter import BackendFluxTransformer
from comfyui_backdrop.runtime.engines.flux_backend import TorchFluxBackend
from comfyui_backdrop.runtime.engines.flux_spec import FluxSpec
from comfyui_backdrop.runtime.engines.load import open_backend
from comfyui_backdrop.runtime.engines.manifest import manifest_path, read_manifest
from comfyui_backdrop.runtime.engines.precision import ERROR_CLASS
from comfyui_backdrop.runtime.engines.profile import ShapeProfile
from comfyui_backdrop.runtime.errors import InvalidInputError, InvalidModelError
from comfyui_backdrop.runtime.inpainting.generate import InpaintSettings, inpaint_backgrounds
from comfyui_backdrop.runtime.inpainting.loader import load_pipeline
from comfyui_backdrop.runtime.inpainting.loras import add_lora
from comfyui_backdrop.runtime.models import ModelLocator, set_locator
from tests.fixtures.images import studio_product_photo

FILL, KONTEXT = "diffusers/tiny-flux-fill", "diffusers/tiny-flux-kontext"
BOTH = pytest.mark.parametrize("model", [FILL, KONTEXT])
# max |engine - eager| / max |eager| for an fp32 engine: the fp32 error class of runtime/engines/precision.py
FP32_REL = ERROR_CLASS["fp32"]  # 1e-4
# (batch, image tokens, text tokens): two shapes, neither the one traced at export (2, 16, 8)
SHAPES = ((1, 36, 12), (3, 20, 7))
# background pixels (0..1) of a whole inpaint on an fp32 engine vs eager torch: two steps of ~1e-6 relative
# transformer error, decoded by the VAE, stay far below one 8-bit level (1/255 ~ 3.9e-3)
IMAGE_TOL = 2e-3
SETTINGS = InpaintSettings(prompt="a marble table, soft light", steps=2, resolution=128, cfg=30.0, seed=4)


@pytest.fixture(scope="module")
def engines_root(tmp_path_factory):
    return tmp_path_factory.mktemp("flux_engines")


@pytest.fixture()
def models(flux_models_root, engines_root):
    """The tiny FLUX models, with models/onnx and models/openvino in this module's own folder."""
    root = flux_models_root["root"]
    set_locator(ModelLocator(lambda kind: [engines_root / kind] if kind in ("onnx", "openvino") else [root / kind],
                             description="flux engine tests"))
    yield root
    set_locator(None)


@pytest.fixture(scope="module")
def photo():
    image, mask = studio_product_photo(77, 101, seed=5)
    return image.astype(np.float32) / 255.0, mask.astype(np.float32)


def export(handle, fmt="onnx", precision="fp32"):
    return export_pipeline_engine(handle, EngineRequest(format=fmt, precision=precision))


def inpaint(handle, photo):
    image, mask = photo
    return inpaint_backgrounds(handle, [image], [mask], SETTINGS).images[0]


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


def check_parity(handle, engine_path, budget):
    """Engine vs eager torch on the same inputs at every shape of SHAPES; returns the errors."""
    backend = open_backend(engine_path)
    reference = TorchFluxBackend(handle.denoiser)
    errors = []
    for batch, img_tokens, txt_tokens in SHAPES:
        feeds = example_inputs(backend.spec, batch=batch, img_tokens=img_tokens, txt_tokens=txt_tokens, seed=batch)
        out, ref = backend.run(**feeds), reference.run(**feeds)
        assert out.shape == ref.shape == (batch, img_tokens, backend.spec.out_channels)
        errors.append(rel_error(out, ref))
    assert max(errors) <= budget, errors
    return errors


@BOTH
def test_onnx_export_matches_eager_at_two_batches_and_lengths(models, model):
    handle = load_pipeline(model)
    result = export(handle)
    manifest = result.manifest
    assert result.path.name.startswith("transformer_flux_") and result.path.suffix == ".onnx"
    assert manifest.component == "transformer" and manifest.profile is None
    assert manifest.spec == FluxSpec.from_transformer(handle.denoiser)
    assert manifest.spec.in_channels == (384 if model == FILL else 64) and manifest.spec.guidance
    assert manifest.exporter["opset"] == 17 and manifest.refit_map  # refittable by initializer name
    check_parity(handle, result.path, FP32_REL)


@BOTH
def test_openvino_fp32_export_matches_eager(models, model):
    handle = load_pipeline(model)
    result = export(handle, "openvino", "fp32")
    assert result.path.suffix == ".xml" and result.path.with_suffix(".bin").is_file()
    backend = open_backend(result.path)
    assert backend.name == "openvino-fp32" and backend.kernels()["applied_precision"] == "f32"
    check_parity(handle, result.path, FP32_REL)


def test_openvino_int8_weights_within_the_int8_class(models):
    handle = load_pipeline(FILL)
    result = export(handle, "openvino", "int8")
    assert result.manifest.extra["weight_compression"] == "int8_asym"
    errors = check_parity(handle, result.path, ERROR_CLASS["int8"])
    assert max(errors) > FP32_REL  # the weights really are compressed


def test_export_patches_leave_the_torch_model_unchanged(models):
    from diffusers.models.transformers import transformer_flux

    handle = load_pipeline(FILL)
    transformer = handle.denoiser
    feeds = example_inputs(FluxSpec.from_transformer(transformer), batch=1, img_tokens=9, txt_tokens=4)
    before = TorchFluxBackend(transformer).run(**feeds)
    original = transformer_flux.apply_rotary_emb
    with export_patches(transformer):
        patched = TorchFluxBackend(transformer).run(**feeds)
        assert transformer_flux.apply_rotary_emb is not original
    assert transformer_flux.apply_rotary_emb is original
    assert not any("forward" in vars(m) for m in transformer.modules() if isinstance(m, torch.nn.RMSNorm))
    assert rel_error(patched, before) <= 1e-6  # the same math, written traceably
    assert torch.equal(TorchFluxBackend(transformer).run(**feeds), before)


@BOTH
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_inpainting_on_the_engine_keeps_the_product_exact(models, photo, model, fmt):
    handle = load_pipeline(model)
    on_engine = attach_engine(handle, export(handle, fmt).path)
    assert isinstance(on_engine.pipe.transformer, BackendFluxTransformer) and on_engine.pipe is not handle.pipe
    assert type(handle.pipe.transformer).__name__ == "FluxTransformer2DModel"  # the input handle is untouched
    image, mask = photo
    ours, reference = inpaint(on_engine, photo), inpaint(handle, photo)
    product = mask >= 0.5
    assert np.array_equal(ours[product], image[product])  # bit for bit
    assert np.abs(ours[~product] - image[~product]).mean() > 0.02  # a new background
    assert np.abs(ours - reference).max() <= IMAGE_TOL


def test_second_load_reuses_the_cached_engine(models, engines_root):
    first = export(load_pipeline(KONTEXT), "openvino")
    files = sorted(p.name for p in (engines_root / "openvino").iterdir())
    stamp = first.path.stat().st_mtime_ns
    again = export(load_pipeline(KONTEXT), "openvino")
    assert again.cached and again.path == first.path and again.path.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (engines_root / "openvino").iterdir()) == files  # nothing new written


def test_lora_stack_is_in_the_key_and_refit_into_the_portable_onnx(models, photo):
    handle = load_pipeline(FILL)
    base = export(handle)
    styled = add_lora(handle, "flux_style_a.safetensors", 0.8)
    fused = export(styled)
    assert not fused.cached and fused.path != base.path and fused.manifest.key != base.manifest.key
    assert [name for name, _, _ in read_manifest(fused.path).loras] == ["flux_style_a.safetensors"]
    reference = inpaint(styled, photo)
    assert np.abs(reference - inpaint(handle, photo)).max() > 10 * IMAGE_TOL  # the LoRA is visible
    assert np.abs(inpaint(attach_engine(styled, fused.path), photo) - reference).max() <= IMAGE_TOL
    # the base engine takes the stack's weights by initializer name (a refit), as SD's portable exports do
    assert np.abs(inpaint(attach_engine(styled, base.path), photo) - reference).max() <= IMAGE_TOL


def test_openvino_engine_refuses_another_lora_stack(models):
    handle = load_pipeline(FILL)
    engine = export(handle, "openvino").path
    styled = add_lora(handle, "flux_style_b.safetensors", 1.0)
    with pytest.raises(InvalidInputError, match=r"baked in.*flux_style_b.safetensors@1"):
        attach_engine(styled, engine)


def test_stale_and_corrupt_engine_files(models, engines_root, tmp_path):
    handle = load_pipeline(KONTEXT)
    result = export(handle)
    # corrupt: a copy with its manifest, bytes cut short -> a clear error naming the file, nothing attached
    broken_dir = tmp_path / "broken"
    broken_dir.mkdir()
    broken = broken_dir / result.path.name
    broken.write_bytes(result.path.read_bytes()[:1000])
    shutil.copy(manifest_path(result.path), manifest_path(broken))
    with pytest.raises(InvalidModelError, match=f"{broken.name} could not be opened by onnxruntime"):
        attach_engine(handle, broken)
    # stale: the engine file is gone but its manifest stayed -> not a cache hit; exported again under a free
    # name, the old manifest left untouched
    old_manifest = manifest_path(result.path).read_bytes()
    result.path.unlink()
    again = export(handle)
    assert not again.cached and again.path != result.path and again.path.stem.endswith("-1")
    assert manifest_path(result.path).read_bytes() == old_manifest
    check_parity(handle, again.path, FP32_REL)


def test_engines_that_do_not_fit_are_refused(models):
    fill, kontext = load_pipeline(FILL), load_pipeline(KONTEXT)
    with pytest.raises(InvalidInputError, match="in_channels: engine 64, pipeline 384"):
        attach_engine(fill, export(kontext).path)
    with pytest.raises(InvalidInputError, match="FLUX transformer ONNX export is the portable fp32 graph"):
        export_pipeline_engine(fill, EngineRequest(format="onnx", optimize_for="cpu"))
    with pytest.raises(InvalidInputError, match="exported as onnx or openvino"):
        export_pipeline_engine(fill, EngineRequest(format="tensorrt", precision="fp16",
                                                   profile=ShapeProfile.from_resolutions([(128, 128)])))


def test_backdrop_run_with_a_flux_engine_named_or_auto(tmp_path, flux_models_root):
    import cv2

    from comfyui_backdrop.cli.main import main
    from comfyui_backdrop.export.engine_choice import EngineChoice, default_choice_path, write_choice
    from comfyui_backdrop.runtime.engines.precision import cpu_info
    from tests.cli.test_run import _quick_run

    models = tmp_path / "models"
    models.mkdir()
    for kind in ("diffusers", "loras"):
        (models / kind).symlink_to(flux_models_root["root"] / kind)
    photo, _ = studio_product_photo(77, 101, seed=5)
    cv2.imwrite(str(tmp_path / "bottle.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    common = _quick_run(tmp_path / "bottle.png", models, "diffusers/tiny-flux-fill")
    assert main([*common, "--out", str(tmp_path / "torch")]) == 0
    # auto: the bench chose onnxruntime (its CPU-optimised graph is UNet-only, so FLUX gets the portable export)
    choice = EngineChoice(backend="ort", precision="fp32", label="onnxruntime (optimized) fp32", p50_s=1.0,
                          speedup=1.1, max_rel_error=1e-6, error_budget=2e-2, cpu=cpu_info().to_dict())
    write_choice(choice, default_choice_path(models))
    assert main([*common, "--out", str(tmp_path / "auto"), "--engine", "auto"]) == 0
    [onnx_engine] = [p.name for p in (models / "onnx").glob("transformer_flux_384ch_fp32_*.onnx")]
    # named: an OpenVINO engine exported beforehand (the export node / export_pipeline_engine)
    set_locator(ModelLocator.from_models_dir(models))
    try:
        ov_engine = export(load_pipeline(FILL), "openvino").path.name
    finally:
        set_locator(None)
    assert main([*common, "--out", str(tmp_path / "ov"), "--engine", f"openvino/{ov_engine}"]) == 0
    assert main([*common, "--out", str(tmp_path / "named"), "--engine", f"onnx/{onnx_engine}"]) == 0
    name = "bottle_minimal-studio.png"
    mask = cv2.imread(str(tmp_path / "torch" / "bottle_mask.png"), cv2.IMREAD_GRAYSCALE) >= 128
    reference = cv2.imread(str(tmp_path / "torch" / name)).astype(int)
    assert mask.any()
    for out in ("auto", "ov", "named"):
        ours = cv2.imread(str(tmp_path / out / name)).astype(int)
        assert np.abs(ours - reference).max() <= 2  # 8-bit PNGs of the same picture
        assert np.array_equal(cv2.cvtColor(ours.astype(np.uint8), cv2.COLOR_BGR2RGB)[mask], photo[mask])


def test_backdrop_bench_times_the_flux_transformer_step(tmp_path, flux_models_root):
    import json

    from comfyui_backdrop.cli.bench import main as bench_main

    code = bench_main(["bench", "--model", "diffusers/tiny-flux-kontext", "--models-dir",
                       str(flux_models_root["root"]), "--backends", "eager,ort,openvino", "--precisions", "fp32,int8",
                       "--size", "128", "--batch", "1", "--tokens", "16", "--rounds", "2", "--threads", "1",
                       "--out", str(tmp_path / "out")])
    assert code == 0
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    rows = {r["name"]: r for r in report["sections"]["transformer step"]}
    assert list(rows) == ["torch eager fp32", "onnxruntime (plain export) fp32", "OpenVINO fp32", "OpenVINO int8"]
    assert all(len(r["times_s"]) == 2 and r["p50_s"] > 0 for r in rows.values())
    assert rows["torch eager fp32"]["max_abs_error"] == 0.0
    assert rows["onnxruntime (plain export) fp32"]["max_rel_error"] <= FP32_REL
    assert rows["OpenVINO fp32"]["max_rel_error"] <= FP32_REL
    assert FP32_REL < rows["OpenVINO int8"]["max_rel_error"] <= ERROR_CLASS["int8"]
    skipped = {s["name"]: s["reason"] for s in report["skipped"]["transformer step"]}
    assert "for SD UNets" in skipped["onnxruntime (plain export) int8"]
    assert report["title"].startswith("FLUX transformer backends")
    assert "UNet step" not in report["sections"] and "pipeline" not in report["sections"]
