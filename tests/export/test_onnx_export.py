"""UNet -> ONNX export: onnxruntime parity on tiny SD1.5 / SDXL / 4-channel UNets, LoRA fused and refit by name,
external data through an awkward path, fp16 conversion, never overwriting."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import onnx
import pytest
import torch
from peft.tuners.lora import LoraLayer

from comfyui_backdrop.export.onnx_export import example_inputs, export_unet_onnx, fused_active_loras
from comfyui_backdrop.export.refit import base_parameters, effective_lora_weights, refit_weights
from comfyui_backdrop.runtime.engines.ort_backend import OrtUNetBackend
from comfyui_backdrop.runtime.engines.torch_backend import TorchUNetBackend
from comfyui_backdrop.runtime.errors import InvalidModelError
from tests.fixtures.tiny_unets import SD15_LORA_TARGETS, add_random_lora, tiny_sd15_unet, tiny_sdxl_unet

TOL = 1e-4
SHAPES = [(1, 16, 16), (2, 8, 24), (3, 24, 8)]  # (batch, latent h, latent w): square and non-square


def run_both(torch_backend, ort_backend, spec, batch, h, w, seed=0, tokens=7):
    feeds = example_inputs(spec, batch=batch, latent=(h, w), tokens=tokens, seed=seed)
    args = (feeds["sample"], feeds["timestep"] * (seed + 1) / 3, feeds["encoder_hidden_states"],
            feeds.get("text_embeds"), feeds.get("time_ids"))
    return torch_backend.run(*args), ort_backend.run(*args)


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    unet = tiny_sd15_unet(in_channels=9)
    exported = export_unet_onnx(unet, tmp_path_factory.mktemp("sd15") / "unet.onnx")
    return unet, exported


@pytest.mark.parametrize(("batch", "h", "w"), SHAPES)
def test_sd15_inpaint_parity_across_shapes(sd15, batch, h, w):
    unet, exported = sd15
    ours = OrtUNetBackend(exported.path, exported.spec, threads=1)
    ref, out = run_both(TorchUNetBackend(unet), ours, exported.spec, batch, h, w, seed=batch)
    assert out.shape == (batch, 4, h, w)
    assert max_error(ref, out) <= TOL
    assert ref.abs().max() > 0.1  # a real signal, not zeros compared with zeros


def test_export_metadata_and_names(sd15):
    unet, exported = sd15
    model = onnx.load(str(exported.path))
    assert [i.name for i in model.graph.input] == ["sample", "timestep", "encoder_hidden_states"]
    assert [o.name for o in model.graph.output] == ["noise_pred"]
    assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] == 17
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 9, "height", "width"]
    assert not exported.external_data and exported.files == [exported.path]
    # every weight the graph uses is reachable by its torch name
    mapped = {p for entry in exported.refit_map.values() for p in entry.params}
    assert mapped == set(base_parameters(unet))
    assert any(entry.transpose for entry in exported.refit_map.values())  # Linear weights were folded transposed


def test_four_channel_unet(tmp_path):
    unet = tiny_sd15_unet(in_channels=4, seed=1)
    exported = export_unet_onnx(unet, tmp_path / "base.onnx")
    ref, out = run_both(TorchUNetBackend(unet), OrtUNetBackend(exported.path, exported.spec, threads=1),
                        exported.spec, 2, 16, 8)
    assert exported.spec.in_channels == 4 and out.shape == (2, 4, 16, 8)
    assert max_error(ref, out) <= TOL


def test_sdxl_unet_with_text_embeds_and_time_ids(tmp_path):
    unet = tiny_sdxl_unet()
    exported = export_unet_onnx(unet, tmp_path / "xl.onnx")
    spec = exported.spec
    assert (spec.family, spec.text_embeds_dim, spec.time_ids_dim) == ("sdxl", 16, 6)
    names = [i.name for i in onnx.load(str(exported.path)).graph.input]
    assert names == ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"]
    ours = OrtUNetBackend(exported.path, spec, threads=1)
    for batch, h, w in [(1, 8, 8), (2, 16, 8)]:
        ref, out = run_both(TorchUNetBackend(unet), ours, spec, batch, h, w, seed=batch)
        assert max_error(ref, out) <= TOL
    # the added conditioning really reaches the graph: other time ids, other output
    feeds = example_inputs(spec, batch=1, latent=(8, 8), tokens=7)
    other = feeds["time_ids"].clone()
    other[:, 0] = 512.0
    a = ours.run(feeds["sample"], feeds["timestep"], feeds["encoder_hidden_states"], feeds["text_embeds"],
                 feeds["time_ids"])
    b = ours.run(feeds["sample"], feeds["timestep"], feeds["encoder_hidden_states"], feeds["text_embeds"], other)
    assert max_error(a, b) > 1e-3


def test_fused_lora_export_matches_torch_with_lora_and_restores_the_model(tmp_path):
    unet = tiny_sd15_unet(seed=3)
    add_random_lora(unet, "style", seed=4)
    before = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    torch_with_lora = TorchUNetBackend(unet)
    exported = export_unet_onnx(unet, tmp_path / "fused.onnx")
    assert exported.fused_adapters == ["style"]
    after = unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights restored bit for bit
    assert all(not m.merged_adapters for m in unet.modules() if hasattr(m, "merged_adapters"))
    ours = OrtUNetBackend(exported.path, exported.spec, threads=1)
    ref, out = run_both(torch_with_lora, ours, exported.spec, 2, 16, 8, seed=5)
    assert max_error(ref, out) <= TOL
    with unet_without_lora(unet):
        base, _ = run_both(TorchUNetBackend(unet), ours, exported.spec, 2, 16, 8, seed=5)
    assert max_error(base, ref) > 100 * TOL  # the LoRA changes the output, and the export carries it


@contextmanager
def unet_without_lora(unet):
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


def test_refit_by_initializer_name_simulates_a_lora_swap(sd15, tmp_path):
    """Export the base once, then swap a LoRA's merged weights in by ONNX initializer name (no re-export)."""
    _, exported = sd15
    unet = tiny_sd15_unet(in_channels=9)  # same seed: the same base weights
    # convolutions too: onnxruntime re-lays out conv weights on the CPU, which must not keep the old values
    add_random_lora(unet, "swap", seed=7, targets=[*SD15_LORA_TARGETS, "conv1", "conv2", "proj_in", "time_emb_proj"])
    lora_layers = effective_lora_weights(unet)
    assert sum(k.endswith(".weight") for k in lora_layers) == sum(isinstance(m, LoraLayer) for m in unet.modules())
    weights = refit_weights(exported.refit_map, lora_layers)
    assert weights and all(name in exported.refit_map for name in weights)
    # 1) onnxruntime: override initializers when the session is created
    refit = OrtUNetBackend(exported.path, exported.spec, threads=1, initializer_overrides=weights)
    ref, out = run_both(TorchUNetBackend(unet), refit, exported.spec, 2, 16, 16, seed=8)
    assert max_error(ref, out) <= TOL
    plain = OrtUNetBackend(exported.path, exported.spec, threads=1)
    _, stale = run_both(TorchUNetBackend(unet), plain, exported.spec, 2, 16, 16, seed=8)
    assert max_error(ref, stale) > 100 * TOL
    # 2) the same swap written into the file by name
    model = onnx.load(str(exported.path))
    for init in model.graph.initializer:
        if init.name in weights:
            init.CopyFrom(onnx.numpy_helper.from_array(weights[init.name], init.name))
    rewritten = tmp_path / "refit.onnx"
    onnx.save(model, str(rewritten))
    _, out_file = run_both(TorchUNetBackend(unet), OrtUNetBackend(rewritten, exported.spec, threads=1),
                           exported.spec, 2, 16, 16, seed=8)
    assert max_error(ref, out_file) <= TOL


def test_refit_refuses_to_split_a_deduplicated_initializer(sd15):
    """Equal tensors share one initializer; giving them different values must fail loudly."""
    unet, exported = sd15
    shared = next(e for e in exported.refit_map.values() if len(e.params) > 1)
    params = base_parameters(unet)
    changed = {shared.params[0]: params[shared.params[0]] + 1.0}
    with pytest.raises(InvalidModelError, match="cannot take these new values"):
        refit_weights(exported.refit_map, changed)


def test_external_data_round_trip_through_spaces_and_non_ascii(sd15, tmp_path):
    unet, _ = sd15
    folder = tmp_path / "my models" / "ünïcødé 模型 ✓"
    exported = export_unet_onnx(unet, folder / "unet inpaint é.onnx", external_data=True)
    data = folder / "unet inpaint é.onnx.data"
    assert exported.files == [folder / "unet inpaint é.onnx", data] and exported.external_data
    assert data.stat().st_size > exported.path.stat().st_size * 10  # the weights live in the .data file
    onnx.checker.check_model(str(exported.path), full_check=True)
    graph = onnx.load(str(exported.path), load_external_data=False).graph
    large = [t for t in graph.initializer if np.prod(t.dims) * 4 >= 1024]
    assert large and all(t.data_location == onnx.TensorProto.EXTERNAL for t in large)
    ref, out = run_both(TorchUNetBackend(unet), OrtUNetBackend(exported.path, exported.spec, threads=1),
                        exported.spec, 1, 8, 16)
    assert max_error(ref, out) <= TOL
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_export_never_overwrites(sd15, tmp_path):
    unet, _ = sd15
    target = tmp_path / "unet.onnx"
    target.write_bytes(b"precious")
    (tmp_path / "unet-1.onnx.data").write_bytes(b"also precious")
    exported = export_unet_onnx(unet, target)
    assert target.read_bytes() == b"precious"
    assert (tmp_path / "unet-1.onnx.data").read_bytes() == b"also precious"
    assert exported.path == tmp_path / "unet-2.onnx"


def test_fp16_conversion_keeps_fragile_ops_in_fp32(sd15, tmp_path):
    unet, _ = sd15
    exported = export_unet_onnx(unet, tmp_path / "half.onnx", precision="fp16")
    assert exported.precision == "fp16"
    model = onnx.load(str(exported.path))
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in model.graph.input)
    weights = {init.name: init.data_type for init in model.graph.initializer}
    assert weights["unet.conv_in.weight"] == onnx.TensorProto.FLOAT16
    assert {e.dtype for e in exported.refit_map.values()} <= {"float16", "float32"}
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    time_math = [n for n in model.graph.node if "/time_proj/" in n.name and n.op_type in ("Mul", "Sin", "Cos")]
    fragile = [n for n in model.graph.node if n.op_type == "InstanceNormalization"]
    assert time_math and fragile
    assert all(types[n.output[0]] == onnx.TensorProto.FLOAT for n in time_math + fragile)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert all(types.get(n.output[0]) == onnx.TensorProto.FLOAT16 for n in convs)


def test_fused_loras_context_skips_disabled_and_already_merged(tmp_path):
    unet = tiny_sd15_unet(seed=9)
    add_random_lora(unet, "a", seed=1)
    unet.disable_adapters()
    with fused_active_loras(unet) as merged:
        assert merged == []
    unet.enable_adapters()
    unet.fuse_lora()  # merged already (e.g. the pipeline's fuse option)
    snapshot = {k: v.clone() for k, v in unet.state_dict().items()}
    with fused_active_loras(unet) as merged:
        assert merged == []
    assert all(torch.equal(snapshot[k], v) for k, v in unet.state_dict().items())


def test_refit_weights_report_unknown_layers(sd15):
    _, exported = sd15
    with pytest.raises(InvalidModelError, match="no initializer"):
        refit_weights(exported.refit_map, {"nonexistent.weight": torch.zeros(2, 2)})
    assert refit_weights(exported.refit_map, {"nonexistent.weight": torch.zeros(2, 2)},
                         optional={"nonexistent.weight"}) == {}


def test_numpy_arrays_of_overrides_are_float32(sd15):
    _, exported = sd15
    unet = tiny_sd15_unet()
    add_random_lora(unet, "x", seed=2)
    arrays = refit_weights(exported.refit_map, effective_lora_weights(unet))
    assert all(a.dtype == np.float32 and a.flags.c_contiguous for a in arrays.values())
