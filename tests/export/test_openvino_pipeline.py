"""A whole pipeline on OpenVINO engines: text encoder(s), VAE encoder and decoder match torch; the nodes and
`backdrop run --engine` (a named engine, and `auto` from the bench's choice) produce the torch images with the
product pixels exact. Uses the tiny SD1.5/SDXL models the inpainting tests load through the real loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_backdrop.export.attach import attach_engine
from comfyui_backdrop.export.engine_choice import EngineChoice, choose, default_choice_path, write_choice
from comfyui_backdrop.export.engine_export import BaseIdentity, EngineRequest, export_engine
from comfyui_backdrop.export.pipeline_export import export_components
from comfyui_backdrop.nodes.engines import BackdropExportEngine, BackdropLoadEngine, engine_choices
from comfyui_backdrop.runtime.engines.components import EngineTextEncoder, EngineVAE
from comfyui_backdrop.runtime.engines.openvino_backend import OpenVinoModel
from comfyui_backdrop.runtime.engines.precision import cpu_info
from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.inpainting.generate import InpaintSettings, inpaint_backgrounds
from comfyui_backdrop.runtime.inpainting.loader import load_pipeline

pytest.importorskip("openvino", reason="the cpu-engines extra (openvino) is not installed")
SD15 = "checkpoints/tiny-sd15-inpaint.safetensors"
SDXL = "checkpoints/tiny-sdxl-inpaint.safetensors"
FAST = InpaintSettings(prompt="a marble table, soft light", steps=2, resolution=128, seed=3)
WHOLE = "whole pipeline (text encoders, VAE too)"
TOL = 2e-3  # image space, 0..1


@pytest.fixture()
def photo(product_photo):
    image, mask = product_photo
    return image.astype(np.float32) / 255.0, mask.astype(np.float32)


def rel(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("model", [SD15, SDXL])
def test_text_encoders_and_vae_engines_match_torch(inpaint_models, tmp_path, model):
    handle = load_pipeline(model)
    pipe = handle.pipe
    # the UNet engine goes to the session's models folder, where the node and CLI tests below find it
    unet = export_engine(pipe.unet, BaseIdentity(handle.name, handle.fingerprint), EngineRequest(format="openvino"),
                         inpaint_models / "openvino")
    parts = export_components(pipe, unet.manifest.spec, unet.manifest, tmp_path)
    expected = {"text_encoder", "vae_encoder", "vae_decoder"} | ({"text_encoder_2"} if "sdxl" in model else set())
    assert set(parts) == expected and not any(cached for _, _, cached in parts.values())
    ids = torch.randint(0, 40, (2, 77), generator=torch.Generator().manual_seed(0))
    image = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1)) * 2 - 1
    latents = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for name in expected & {"text_encoder", "text_encoder_2"}:
            module = getattr(pipe, name)
            engine = EngineTextEncoder(OpenVinoModel(parts[name][0]), module.config)
            ref, ours = module(ids, output_hidden_states=True), engine(ids, output_hidden_states=True)
            assert rel(ours[0], ref[0]) <= 1e-4 and rel(ours.hidden_states[-2], ref.hidden_states[-2]) <= 1e-4
            with pytest.raises(InvalidInputError, match="clip_skip"):
                ours.hidden_states[-3]
        vae = EngineVAE(OpenVinoModel(parts["vae_encoder"][0]), OpenVinoModel(parts["vae_decoder"][0]), pipe.vae)
        assert rel(vae.encode(image).latent_dist.mean, pipe.vae.encode(image).latent_dist.mean) <= 1e-4
        assert rel(vae.decode(latents, return_dict=False)[0], pipe.vae.decode(latents, return_dict=False)[0]) <= 1e-4
    assert vae.config.scaling_factor == pipe.vae.config.scaling_factor
    decoder_ops = {op.get_type_name() for op in vae.decoder_engine.ir.get_ops()}
    assert "ConvolutionBackpropData" in decoder_ops and "Interpolate" not in decoder_ops  # fp32: export_rewrites
    again = export_components(pipe, unet.manifest.spec, unet.manifest, tmp_path)
    assert all(cached for _, _, cached in again.values())  # found by key, not rebuilt


def export_node(handle, **widgets):
    defaults = {"format": "openvino", "precision": "fp32", "resolutions": "128x128", "images_per_batch": 1,
                "onnx_target": "portable (refittable, TensorRT input)", "refittable": False,
                "optimization_level": 3, "components": WHOLE}
    return BackdropExportEngine().export(handle, **{**defaults, **widgets})[0]


def test_nodes_run_the_whole_pipeline_on_openvino_with_the_product_exact(inpaint_models, photo):
    handle = load_pipeline(SD15)
    engine = export_node(handle)
    assert engine.startswith("openvino/unet_sd15_inpaint_fp32_") and engine in engine_choices()
    assert not any(c.startswith(("openvino/vae_", "openvino/text_encoder")) for c in engine_choices())
    on_engines = BackdropLoadEngine().load(handle, engine=engine, provider="auto", threads=1, components=WHOLE)[0]
    pipe = on_engines.pipe
    assert isinstance(pipe.text_encoder, EngineTextEncoder) and isinstance(pipe.vae, EngineVAE)
    assert pipe.unet.backend.name == "openvino-fp32"
    image, mask = photo
    reference = inpaint_backgrounds(handle, [image], [mask], FAST).images[0]
    ours = inpaint_backgrounds(on_engines, [image], [mask], FAST).images[0]
    assert np.abs(ours - reference).max() <= TOL
    product = mask >= 0.5
    assert np.array_equal(ours[product], image[product])  # the paste-back is untouched


def test_int8_whole_pipeline_stays_close(inpaint_models, photo):
    handle = load_pipeline(SD15)
    engine = export_node(handle, precision="int8")
    on_engines = BackdropLoadEngine().load(handle, engine=engine, provider="cpu", threads=1, components=WHOLE)[0]
    image, mask = photo
    reference = inpaint_backgrounds(handle, [image], [mask], FAST).images[0]
    ours = inpaint_backgrounds(on_engines, [image], [mask], FAST).images[0]
    assert 0 < np.abs(ours - reference).max() <= 0.1


def test_missing_component_engines_and_other_formats_are_named(inpaint_models):
    handle = load_pipeline(SD15)
    unet_only = export_node(handle, precision="int8", components="unet only")
    path = inpaint_models / unet_only
    # the int8 parts may exist from another test: ask for a format that has none
    onnx = export_node(handle, format="onnx", precision="fp32", components="unet only")
    with pytest.raises(InvalidInputError, match="OpenVINO engines"):
        attach_engine(handle, inpaint_models / onnx, components=True)
    with pytest.raises(InvalidInputError, match="whole-pipeline engines"):
        export_node(handle, format="onnx", precision="fp32")
    assert path.is_file()


def test_backdrop_run_with_a_named_engine_and_with_auto(tmp_path, product_photo, inpaint_models):
    from comfyui_backdrop.cli.main import main
    from tests.cli.test_run import _quick_run, _read, _write

    handle = load_pipeline(SD15)
    engine = export_node(handle)
    photo, _ = product_photo
    _write(tmp_path / "bottle.png", photo)
    common = _quick_run(tmp_path / "bottle.png", inpaint_models, "tiny-sd15-inpaint.safetensors")
    assert main([*common, "--out", str(tmp_path / "torch")]) == 0
    assert main([*common, "--out", str(tmp_path / "ov"), "--engine", engine, "--engine-components"]) == 0
    choice = EngineChoice(backend="openvino", precision="fp32", label="OpenVINO fp32", p50_s=1.0, speedup=1.2,
                          max_rel_error=2e-6, error_budget=2e-2, cpu=cpu_info().to_dict())
    write_choice(choice, default_choice_path(inpaint_models))
    assert main([*common, "--out", str(tmp_path / "auto"), "--engine", "auto", "--engine-components"]) == 0
    name = "bottle_minimal-studio.png"
    reference = _read(tmp_path / "torch" / name).astype(int)
    mask = _read(tmp_path / "torch" / "bottle_mask.png") >= 128
    for out in ("ov", "auto"):
        ours = _read(tmp_path / out / name).astype(int)
        assert np.abs(ours - reference).max() <= 2  # 8-bit PNGs of the same image
        assert np.array_equal(ours[mask], photo[mask])
    default_choice_path(inpaint_models).unlink()


def test_engine_options_are_checked_before_any_photo(tmp_path, product_photo, inpaint_models, capsys):
    from comfyui_backdrop.cli.main import main
    from tests.cli.test_run import _write

    _write(tmp_path / "p.png", product_photo[0])
    base = ["run", str(tmp_path / "p.png"), "--models-dir", str(inpaint_models), "--out", str(tmp_path / "o"),
            "--checkpoint", "tiny-sd15-inpaint.safetensors"]
    assert main([*base, "--engine-components"]) == 2 and "needs --engine" in capsys.readouterr().err
    assert main([*base, "--engine", "warp/x.xml"]) == 2 and "openvino/<file>.xml" in capsys.readouterr().err
    assert main([*base, "--engine", "auto"]) != 0 and "backdrop bench --backends" in capsys.readouterr().err
    other = EngineChoice(backend="openvino", precision="fp32", label="x", p50_s=1, speedup=1, max_rel_error=0,
                         error_budget=2e-2, cpu={"model": "Some Other CPU", "isa": "AMX"})
    write_choice(other, default_choice_path(inpaint_models))
    try:
        assert main([*base, "--engine", "auto"]) != 0 and "on this machine first" in capsys.readouterr().err
    finally:
        default_choice_path(inpaint_models).unlink()


def test_choose_takes_the_fastest_row_within_the_budget():
    rows = [{"label": "a", "p50_s": 1.0, "max_rel_error": 0.05}, {"label": "b", "p50_s": 2.0, "max_rel_error": 0.01},
            {"label": "c", "p50_s": 3.0, "max_rel_error": 0.0}]
    best, rejected = choose(rows, 2e-2)
    assert best["label"] == "b" and rejected == ["a: error 5.00e-02 over the budget 2e-02"]
    assert choose(rows, 1e-3)[0]["label"] == "c" and choose(rows[:1], 1e-3)[0] is None


def test_a_choice_is_refused_on_a_cpu_with_other_units():
    """Two CPUs can share a model name and ISA class and still differ in a unit that decides the engine: the
    AVX-512 EPYC with AVX512_BF16 runs OpenVINO bf16 natively, one without it would not."""
    from comfyui_backdrop.runtime.engines.precision import CpuInfo

    flags = {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
    with_bf16, without = CpuInfo("AMD EPYC", frozenset(flags | {"avx512_bf16"})), CpuInfo("AMD EPYC", frozenset(flags))
    assert with_bf16.isa == without.isa == "AVX-512"
    choice = EngineChoice(backend="openvino", precision="bf16", label="OpenVINO bf16", p50_s=2.2, speedup=3.0,
                          max_rel_error=1.3e-2, error_budget=2e-2, cpu=with_bf16.to_dict())
    choice.check_cpu(with_bf16)
    with pytest.raises(InvalidInputError, match="AVX512_BF16.*on this machine first"):
        choice.check_cpu(without)
    legacy = EngineChoice(**{**choice.to_dict(), "cpu": {"model": "AMD EPYC", "isa": "AVX-512"}})
    legacy.check_cpu(without)  # a choice file written before units were compared: model and ISA as before


def test_a_whole_pipeline_export_counts_its_parts_and_stops_between_them(inpaint_models, tmp_path):
    """Progress counts the UNet and each part (ComfyUI's bar, the CLI's); a Cancel raised from it stops between
    parts, and every part written by then is whole and found by the next export."""
    from comfyui_backdrop.export.engine_export import export_pipeline_engine
    from comfyui_backdrop.runtime.errors import Interrupted

    handle = load_pipeline(SD15)
    seen: list[tuple[int, int]] = []
    exported = export_pipeline_engine(handle, EngineRequest(format="openvino"), components=True,
                                      progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (4, 4) and {t for _, t in seen} == {4}  # the UNet, a text encoder, VAE encoder and decoder
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)

    pipe = handle.pipe  # the parts again, into an empty folder (the UNet engine is found in the models folder)
    unet = export_engine(pipe.unet, BaseIdentity(handle.name, handle.fingerprint), EngineRequest(format="openvino"),
                         tmp_path, search=[exported.path.parent])
    assert unet.cached and not any(tmp_path.iterdir())

    def cancel_after_one(done: int, total: int) -> None:
        if done == 1:
            raise Interrupted("interrupted by the user")

    with pytest.raises(Interrupted):
        export_components(pipe, unet.manifest.spec, unet.manifest, tmp_path, progress=cancel_after_one)
    written = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("text_encoder", "vae_")))
    assert len(written) == 3 and {p.rsplit(".", 1)[-1] for p in written} == {"xml", "bin", "json"}  # one part, whole
    parts = export_components(pipe, unet.manifest.spec, unet.manifest, tmp_path)
    assert sorted(cached for _, _, cached in parts.values()) == [False, False, True]
