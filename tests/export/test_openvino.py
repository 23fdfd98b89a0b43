"""OpenVINO engines: UNet parity per precision against fp32 torch, the engine cache and manifests in models/openvino,
the text encoders and VAE on engines, and the node and CLI paths running a whole pipeline on them.

Tolerances (relative error = max |out - fp32 torch| / max |fp32 torch|), from runtime/engines/precision.py:
fp32 1e-4, bf16 2e-2, int8 5e-2. bf16 runs only where the CPU has AVX512_BF16 or AMX-BF16; elsewhere the
test checks the refusal instead (and says so in its skip reason).
"""

from __future__ import annotations

import json

import pytest
import torch

from comfyui_backdrop.export.engine_export import BaseIdentity, EngineRequest, export_engine
from comfyui_backdrop.export.onnx_export import example_inputs
from comfyui_backdrop.runtime.engines.load import open_backend
from comfyui_backdrop.runtime.engines.manifest import read_manifest
from comfyui_backdrop.runtime.engines.openvino_backend import OpenVinoUNetBackend
from comfyui_backdrop.runtime.engines.precision import ERROR_CLASS, UnsupportedPrecisionError, native_support
from comfyui_backdrop.runtime.engines.spec import OUTPUT
from comfyui_backdrop.runtime.engines.torch_backend import TorchUNetBackend
from comfyui_backdrop.runtime.errors import InvalidInputError
from tests.fixtures.tiny_unets import tiny_sd15_unet, tiny_sdxl_unet

pytest.importorskip("openvino", reason="the cpu-engines extra (openvino) is not installed")
BASE = BaseIdentity(name="checkpoints/tiny.safetensors", fingerprint="tinyfp")
CALL = ("sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids")


@pytest.fixture(scope="module")
def unets():
    return {"sd15": tiny_sd15_unet(), "sdxl": tiny_sdxl_unet()}


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("openvino")


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


def run_both(unet, backend, batch=2, latent=None):
    feeds = example_inputs(backend.spec, batch=batch, latent=latent, seed=5)
    call = [feeds.get(n) for n in CALL]
    return backend.run(*call), TorchUNetBackend(unet).run(*call)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("precision", ["fp32", "int8", "bf16"])
def test_unet_parity_per_precision(unets, engine_dir, family, precision):
    unet = unets[family]
    request = EngineRequest(format="openvino", precision=precision)
    native, why = native_support(precision)
    if not native:
        with pytest.raises(UnsupportedPrecisionError, match="native"):
            export_engine(unet, BASE, request, engine_dir)
        pytest.skip(f"{precision} is refused on this CPU, as it must be: {why}")
    result = export_engine(unet, BASE, request, engine_dir)
    backend = open_backend(result.path)
    assert isinstance(backend, OpenVinoUNetBackend) and backend.name == f"openvino-{precision}"
    out, ref = run_both(unet, backend)
    err = rel_error(out, ref)
    assert err <= ERROR_CLASS[precision], f"{precision} {family}: {err:.2e}"
    if precision == "int8":
        assert err > 1e-6  # the weights really are int8: not an fp32 engine under another name
        assert result.manifest.extra["weight_compression"] == "int8_asym"
        assert "u8" in backend.kernels()["runtime_precisions"] or "i8" in backend.kernels()["runtime_precisions"]
    report = backend.kernels()
    expected = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}[precision]
    assert report["applied_precision"] == expected  # OpenVINO's own word on what it compiled
    assert any(k.startswith(("Convolution:", "FullyConnected:", "MatMul:")) for k in report["primitives"])


def test_fp32_engine_takes_other_sizes_and_batches(unets, engine_dir):
    unet = unets["sd15"]
    backend = open_backend(export_engine(unet, BASE, EngineRequest(format="openvino"), engine_dir).path)
    out, ref = run_both(unet, backend, batch=3, latent=(8, 16))
    assert out.shape == (3, 4, 8, 16) and rel_error(out, ref) <= 1e-4


def test_kernel_report_names_this_cpus_units(unets, engine_dir):
    from comfyui_backdrop.runtime.engines.precision import cpu_info

    backend = open_backend(export_engine(unets["sd15"], BASE, EngineRequest(format="openvino"), engine_dir).path)
    primitives = " ".join(backend.kernels()["primitives"]).lower()
    isa = cpu_info().isa
    if isa == "AVX2":
        assert "avx2" in primitives and "avx512" not in primitives and "amx" not in primitives
    elif isa in ("AVX-512", "AMX"):
        assert "avx512" in primitives or "amx" in primitives


def test_cache_and_manifest_round_trip_through_the_models_folder(unets, models_dir):
    from comfyui_backdrop.export.engine_export import export_pipeline_engine  # noqa: F401  (same module the node uses)
    from comfyui_backdrop.runtime.models import get_locator

    folder = get_locator().folders("openvino")[0]
    first = export_engine(unets["sd15"], BASE, EngineRequest(format="openvino", precision="int8"), folder)
    assert not first.cached and first.path.parent == folder and first.path.suffix == ".xml"
    assert first.path.with_suffix(".bin").is_file()
    shallow = first.manifest.extra["shallow"]  # the feature cache's shallow UNet, exported beside it
    assert shallow.startswith("unet_shallow_sd15_inpaint_int8_")
    assert get_locator().list("openvino") == sorted([first.path.name, shallow])  # no manifests, no .bin
    assert read_manifest(folder / shallow).component == "unet_shallow"
    manifest = read_manifest(first.path)
    assert (manifest.format, manifest.precision, manifest.component) == ("openvino", "int8", "unet")
    assert manifest.key == first.manifest.key and manifest.exporter["openvino"]
    assert json.loads(first.path.with_name(first.path.name + ".json").read_text())["format"] == "openvino"
    again = export_engine(unets["sd15"], BASE, EngineRequest(format="openvino", precision="int8"), folder)
    assert again.cached and again.path == first.path
    fp32 = export_engine(unets["sd15"], BASE, EngineRequest(format="openvino", precision="fp32"), folder)
    assert fp32.manifest.key != first.manifest.key and not fp32.cached


def test_openvino_refuses_gpu_providers_and_unknown_precisions(unets, engine_dir):
    path = export_engine(unets["sd15"], BASE, EngineRequest(format="openvino"), engine_dir).path
    with pytest.raises(InvalidInputError, match="runs on the CPU"):
        open_backend(path, provider="cuda")
    with pytest.raises(InvalidInputError, match="openvino engine is built in"):
        EngineRequest(format="openvino", precision="fp8").validate()
    with pytest.raises(InvalidInputError, match="onnx engine is built in fp32, fp16"):
        EngineRequest(format="onnx", precision="int8").validate()


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_engine_feature_cache_matches_the_torch_feature_cache(unets, engine_dir, family):
    from comfyui_backdrop.runtime.engines.adapter import BackendUNet
    from comfyui_backdrop.runtime.inpainting.feature_cache import feature_cache

    unet = unets[family]
    backend = open_backend(export_engine(unet, BASE, EngineRequest(format="openvino"), engine_dir).path)
    assert backend.supports_feature_cache
    engine = BackendUNet(backend)
    feeds = example_inputs(backend.spec, batch=2, seed=7)
    added = {"text_embeds": feeds["text_embeds"], "time_ids": feeds["time_ids"]} if family == "sdxl" else None

    def steps(module):
        with torch.no_grad(), feature_cache(module, 3):
            return [module(feeds["sample"] + 0.01 * i, 900 - 10 * i, feeds["encoder_hidden_states"],
                           added_cond_kwargs=added).sample for i in range(5)]

    reference, ours = steps(unet), steps(engine)
    for i, (a, b) in enumerate(zip(reference, ours, strict=True)):
        assert rel_error(b, a) <= 1e-4, f"step {i}"
    assert backend.cache_interval == 0  # switched off again when the block ends


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_time_embeddings_are_engine_inputs_computed_in_fp32(unets, engine_dir, family):
    from comfyui_backdrop.runtime.engines.time_embedding import TIME_IDS_EMBEDDING, TIMESTEP_EMBEDDING

    backend = open_backend(export_engine(unets[family], BASE, EngineRequest(format="openvino"), engine_dir).path)
    names = backend.model.input_names
    assert TIMESTEP_EMBEDDING in names and "timestep" not in names
    assert (TIME_IDS_EMBEDDING in names) == (family == "sdxl")
    for t in (0.0, 999.0):  # sin/cos of a large timestep is where low precision used to go wrong
        feeds = example_inputs(backend.spec, seed=3)
        call = [feeds.get(n) for n in CALL]
        call[1] = torch.full_like(call[1], t)
        assert rel_error(backend.run(*call), TorchUNetBackend(unets[family]).run(*call)) <= 1e-4


def test_bf16_engine_error_does_not_grow_with_the_timestep(unets, engine_dir):
    """bf16 on OpenVINO's CPU plugin used to reach 9e-2 at t=999 (sin of a bf16 timestep); torch bf16 stays ~1.5e-2."""
    native, why = native_support("bf16")
    if not native:
        pytest.skip(f"no native bf16 here: {why}")
    unet = unets["sd15"]
    backend = open_backend(export_engine(unet, BASE, EngineRequest(format="openvino", precision="bf16"),
                                         engine_dir).path)
    for t in (1.0, 500.0, 999.0):
        feeds = example_inputs(backend.spec, seed=6)
        call = [feeds.get(n) for n in CALL]
        call[1] = torch.full_like(call[1], t)
        assert rel_error(backend.run(*call), TorchUNetBackend(unet).run(*call)) <= ERROR_CLASS["bf16"], t


def test_an_engine_exported_with_a_timestep_input_still_runs(unets, tmp_path):
    from comfyui_backdrop.export.openvino_export import UNET_DYNAMIC, DeepFeatureUNet, convert_module, save_ir
    from comfyui_backdrop.runtime.engines.spec import OUTPUT, UNetSpec

    unet = unets["sdxl"]
    spec = UNetSpec.from_unet(unet)
    feeds = example_inputs(spec)
    model = convert_module(DeepFeatureUNet(unet, sdxl=True), {n: feeds[n] for n in spec.input_names}, UNET_DYNAMIC,
                           [OUTPUT, "deep_features"])
    older = OpenVinoUNetBackend(save_ir(model, tmp_path / "older.xml", "fp32").path, spec)
    assert "timestep" in older.model.input_names
    out, ref = run_both(unet, older)
    assert rel_error(out, ref) <= 1e-4


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_realistic_sizes_run_a_static_copy_within_the_error_class(unets, engine_dir, precision):
    """From a 4x4 deepest level up the UNet runs a copy compiled for the call's shapes; smaller, the dynamic IR."""
    from comfyui_backdrop.runtime.engines.openvino_backend import STATIC_MIN_LEVELS

    if not native_support(precision)[0]:
        pytest.skip(f"no native {precision} here")
    unet = unets["sdxl"]
    backend = open_backend(export_engine(unet, BASE, EngineRequest(format="openvino", precision=precision),
                                         engine_dir).path)
    side = STATIC_MIN_LEVELS * backend.spec.latent_multiple
    out, ref = run_both(unet, backend, latent=(side, side + backend.spec.latent_multiple))
    assert rel_error(out, ref) <= ERROR_CLASS[precision]
    compiled = list(backend.model._compiled)  # keys: (shapes, outputs computed)
    assert len(compiled) == 1 and dict(compiled[0][0])["sample"] == (2, 9, side, side + backend.spec.latent_multiple)
    assert compiled[0][1] == (OUTPUT,)  # no feature cache: the deep features are not computed
    run_both(unet, backend, latent=(side // 2, side // 2))  # below the floor: the dynamic IR (shapes ())
    assert ((), (OUTPUT,)) in backend.model._compiled and len(backend.model._compiled) == 2


def test_an_engine_that_cannot_be_written_says_so_and_leaves_nothing(tmp_path):
    """A write that fails (here: the file-size limit, as a full disk would) is an OutputWriteError naming the folder
    and its free space, and neither a staged nor a published file remains."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import resource, signal
        from comfyui_backdrop.export.openvino_export import export_unet_openvino
        from comfyui_backdrop.runtime.errors import OutputWriteError
        from tests.fixtures.tiny_unets import tiny_sd15_unet
        unet = tiny_sd15_unet()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))
        try:
            export_unet_openvino(unet, {str(tmp_path / "engines" / "unet.xml")!r})
        except OutputWriteError as exc:
            print("ERROR:", exc)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert "ERROR: the OpenVINO engine unet.xml could not be written to" in done.stdout, done.stderr[-2000:]
    assert "GiB free there" in done.stdout
    assert not [p for p in (tmp_path / "engines").rglob("*") if p.is_file()]


SIGNAL_AFTER_TWO_MODELS = """
import gc, os, signal, sys
import numpy as np
import openvino as ov
import openvino.opset13 as ops
from comfyui_backdrop.runtime.engines.openvino_backend import OpenVinoModel

p = ops.parameter([1, 8], np.float32, name="x")
ov.save_model(ov.Model([ops.relu(p)], [p]), sys.argv[1])
first, second = OpenVinoModel(sys.argv[1], threads=1), OpenVinoModel(sys.argv[1], threads=1)
assert first.run({"x": np.ones((1, 8), np.float32)})[0].shape == (1, 8)
assert second.run({"x": np.ones((1, 8), np.float32)})[0].shape == (1, 8)
del first  # the older model (and whatever it holds) goes first
gc.collect()
del second
gc.collect()
signal.signal(signal.SIGINT, lambda *_: print("handled", flush=True))
os.kill(os.getpid(), signal.SIGINT)
print("alive", flush=True)
"""


def test_a_signal_after_models_are_released_does_not_crash(tmp_path):
    """Every model shares one Core: with a Core each, releasing the older first left the CPU plugin's alternate
    signal stack dangling, and the next Ctrl-C crashed the process (segmentation fault) instead of stopping it."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_TWO_MODELS, str(tmp_path / "relu.xml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["handled", "alive"]


def test_a_conversion_runs_the_module_once_and_keeps_its_dynamic_axes():
    """torch.jit.trace's check (OpenVINO's default) would run the module twice more; the exports skip it."""
    from comfyui_backdrop.export.openvino_export import convert_module
    from comfyui_backdrop.runtime.engines.openvino_backend import import_openvino

    class Counted(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear, self.calls = torch.nn.Linear(4, 3), 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.linear(x) * 2

    module, x = Counted(), torch.randn(2, 4)
    model = convert_module(module, {"x": x}, {"x": (0,)}, ["y"])
    assert module.calls == 1
    assert str(model.inputs[0].get_partial_shape()) == "[?,4]" and model.outputs[0].get_any_name() == "y"
    compiled = import_openvino().Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    batch = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(compiled(batch.numpy())[0]), module(batch), atol=1e-5)
