"""onnxruntime UNet fusions (with the NumPy-2 fix) keep fp32 parity; int8 quantization is reported, not hidden."""

from __future__ import annotations

import onnx
import pytest

from comfyui_backdrop.export.onnx_export import example_inputs, export_unet_onnx
from comfyui_backdrop.export.optimize import fusion_options, optimize_unet_onnx, quantize_unet_int8
from comfyui_backdrop.runtime.engines.ort_backend import OrtUNetBackend
from comfyui_backdrop.runtime.engines.torch_backend import TorchUNetBackend
from comfyui_backdrop.runtime.errors import InvalidInputError
from tests.fixtures.tiny_unets import tiny_sd15_unet


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    unet = tiny_sd15_unet(seed=11)
    return unet, export_unet_onnx(unet, tmp_path_factory.mktemp("opt") / "unet.onnx")


def outputs(unet, backend, batch=2, h=16, w=8):
    feeds = example_inputs(backend.spec, batch=batch, latent=(h, w), tokens=7, seed=3)
    args = (feeds["sample"], feeds["timestep"], feeds["encoder_hidden_states"])
    return TorchUNetBackend(unet).run(*args), backend.run(*args)


def test_cpu_fusions_apply_and_keep_fp32_parity(tmp_path, monkeypatch):
    """Fused attention/norms plus Winograd convolutions, fp32 parity; large weights never loaded while fusing."""
    import comfyui_backdrop.export.optimize as optimize

    monkeypatch.setattr(optimize, "SMALL_TENSOR", 4096)  # tiny model: make its conv and linear weights "large"
    unet = tiny_sd15_unet(seed=12)
    plain = export_unet_onnx(unet, tmp_path / "with data" / "unet.onnx", external_data=True)
    model = onnx.load(str(plain.path), load_external_data=False)
    inlined = optimize.inline_fusion_inputs(model, plain.path.parent)
    still_external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert inlined > 0 and len(still_external) > 10  # conv and feed-forward weights are not loaded
    optimized = optimize_unet_onnx(plain.path, tmp_path / "fused.onnx", target="cpu")
    # self- and cross-attention both on the flash MultiHeadAttention kernel, none left on Attention
    assert optimized.fused_ops.get("MultiHeadAttention", 0) >= 8 and "Attention" not in optimized.fused_ops
    assert optimized.fused_ops.get("SkipLayerNormalization", 0) > 0
    assert optimized.fused_ops.get("WinogradConv", 0) >= 4  # 3x3 convolutions of 32+ channels at 64x64 latents
    model = onnx.load(str(optimized.path))
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"GroupNorm", "BiasSplitGelu", "NhwcConv", "BiasAdd", "Attention"}  # no GPU-only kernels
    assert any(o.domain == "com.microsoft" for o in model.opset_import)
    backend = OrtUNetBackend(optimized.path, plain.spec, threads=1)
    for batch, h, w in [(1, 8, 8), (2, 16, 8), (1, 24, 16)]:
        ref, out = outputs(unet, backend, batch, h, w)
        assert float((ref - out).abs().max()) <= 1e-4


def test_int8_quantization_changes_matmuls_and_reports_its_error(exported, tmp_path):
    unet, plain = exported
    quantized = quantize_unet_int8(plain.path, tmp_path / "int8.onnx")
    assert quantized.precision == "int8" and quantized.fused_ops["DynamicQuantizeMatMul"] > 0
    ref, out = outputs(unet, OrtUNetBackend(quantized.path, plain.spec, threads=1))
    rel = float((ref - out).abs().max() / ref.abs().max())
    assert 1e-4 < rel < 0.5  # a real approximation: measurably off, still the same function


def test_gpu_fusions_are_chosen_for_cuda_only():
    cpu, cuda = fusion_options("cpu"), fusion_options("cuda", fp16=True)
    assert not cpu.enable_group_norm and not cpu.enable_nhwc_conv and not cpu.enable_packed_qkv
    assert cuda.enable_group_norm and cuda.enable_bias_splitgelu and cuda.enable_packed_qkv
    with pytest.raises(InvalidInputError, match="cpu, cuda"):
        fusion_options("npu")

