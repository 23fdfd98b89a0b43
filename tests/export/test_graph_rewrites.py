"""Export-time rewrites compute the same function as the diffusers modules they stand in for, and leave them as
they were; OpenVINO engines carry them (fp32: transposed-convolution upsamplers; every precision: split GEGLU)."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from comfyui_backdrop.export.graph_rewrites import (
    GEGLU_SPLIT,
    HELD,
    UPSAMPLE_CONV_TRANSPOSE,
    WINOGRAD,
    export_rewrites,
    rewrites_for,
    transposed_upsample_kernel,
    winograd_forward,
)
from tests.fixtures.tiny_unets import add_random_lora, tiny_sd15_unet


def geglus(model: torch.nn.Module) -> int:
    from diffusers.models.activations import GEGLU

    return sum(isinstance(m, GEGLU) for m in model.modules())


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


def upsampler(channels: int = 6, out_channels: int | None = None, seed: int = 0):
    from diffusers.models.upsampling import Upsample2D

    torch.manual_seed(seed)
    return Upsample2D(channels, use_conv=True, out_channels=out_channels).eval()


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (16, 16)])
def test_the_transposed_kernel_is_nearest_upsampling_then_the_convolution(size):
    module = upsampler(6, out_channels=4).double()
    x = torch.randn(2, 6, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = module(x)
        ours = torch.nn.functional.conv_transpose2d(x, transposed_upsample_kernel(module.conv.weight),
                                                    module.conv.bias, stride=2, padding=1)
    assert ours.shape == ref.shape == (2, 4, 2 * size[0], 2 * size[1])
    assert rel(ours, ref) <= 1e-12  # exact algebra: only the order of additions differs


def test_rewrites_match_in_fp32_and_put_the_modules_back():
    unet = tiny_sd15_unet()
    feeds = (torch.randn(2, 9, 16, 16, generator=torch.Generator().manual_seed(2)), torch.tensor([999, 999]),
             torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(3)))
    with torch.no_grad():
        ref = unet(*feeds).sample
        with export_rewrites(unet, "fp32") as counts:
            patched = [m for m in unet.modules() if "forward" in vars(m)]
            ours = unet(*feeds).sample
        after = unet(*feeds).sample
    # this UNet's native size (16 latent px) has no 32 px level: no Winograd
    assert counts == {GEGLU_SPLIT: geglus(unet), UPSAMPLE_CONV_TRANSPOSE: 1, WINOGRAD: 0}
    assert len(patched) == geglus(unet) + 1
    assert rel(ours, ref) <= 1e-5
    assert torch.equal(after, ref) and not [m for m in unet.modules() if "forward" in vars(m)]


def test_bf16_engines_keep_the_upsampling_convolution():
    """OpenVINO has no bf16 transposed convolution: bf16 engines would run it in fp32 and lose."""
    assert rewrites_for("bf16") == rewrites_for("fp16") == (GEGLU_SPLIT,)
    assert UPSAMPLE_CONV_TRANSPOSE in rewrites_for("fp32") and UPSAMPLE_CONV_TRANSPOSE in rewrites_for("int8")
    assert WINOGRAD in rewrites_for("fp32") and WINOGRAD not in rewrites_for("int8")  # int8 would quantize U
    unet = tiny_sd15_unet()
    with export_rewrites(unet, "bf16") as counts:
        assert counts == {GEGLU_SPLIT: geglus(unet)} and geglus(unet) > 0


def test_an_upsampler_asked_for_another_size_keeps_its_own_path():
    module = upsampler()
    x = torch.randn(1, 6, 5, 5, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref_odd, ref_double = module(x, (9, 11)), module(x, (10, 10))
        with export_rewrites(module, "fp32") as counts:
            odd, double = module(x, (9, 11)), module(x, (10, 10))
    assert counts[UPSAMPLE_CONV_TRANSPOSE] == 1
    assert torch.equal(odd, ref_odd)  # the interpolation the caller asked for, not 2x
    assert rel(double, ref_double) <= 1e-5


def test_a_live_lora_on_the_projection_is_left_to_its_own_forward():
    unet = tiny_sd15_unet()
    add_random_lora(unet, "style", seed=7, targets=["ff.net.0.proj"])
    with export_rewrites(unet, "bf16") as counts:
        assert counts == {GEGLU_SPLIT: 0}  # splitting the base weight alone would drop the adapter
    from comfyui_backdrop.export.onnx_export import fused_active_loras

    feeds = (torch.randn(1, 9, 16, 16, generator=torch.Generator().manual_seed(2)), torch.tensor([10]),
             torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(3)))
    with torch.no_grad():
        ref = unet(*feeds).sample
        with fused_active_loras(unet), export_rewrites(unet, "bf16") as counts:
            ours = unet(*feeds).sample  # merged: the base weight carries the adapter, so the split is exact
    assert counts == {GEGLU_SPLIT: geglus(unet)} and rel(ours, ref) <= 1e-5


def test_openvino_engines_carry_the_rewrites(tmp_path):
    pytest.importorskip("openvino", reason="the cpu-engines extra (openvino) is not installed")
    import openvino as ov

    from comfyui_backdrop.export.openvino_export import export_unet_openvino

    unet = tiny_sd15_unet()
    exported = export_unet_openvino(unet, tmp_path / "unet.xml", precision="fp32", shallow_path=tmp_path / "s.xml")
    assert exported.rewrites == {GEGLU_SPLIT: geglus(unet), UPSAMPLE_CONV_TRANSPOSE: 1, WINOGRAD: 0}
    for path in (exported.path, exported.shallow.path):
        types = {op.get_type_name() for op in ov.Core().read_model(str(path)).get_ops()}
        assert "VariadicSplit" not in types and "Split" not in types
    types = {op.get_type_name() for op in ov.Core().read_model(str(exported.path)).get_ops()}
    assert "ConvolutionBackpropData" in types and "Interpolate" not in types


@pytest.mark.parametrize("size", [(4, 4), (9, 13), (1, 2)])
def test_winograd_computes_the_convolution_at_any_size(size):
    torch.manual_seed(5)
    conv = torch.nn.Conv2d(5, 7, 3, padding=1).eval()
    x = torch.randn(2, 5, *size)
    with torch.no_grad():
        ref, ours = conv(x), winograd_forward(conv)(x)
    assert ours.shape == ref.shape and rel(ours, ref) <= 1e-5


def test_winograd_takes_the_32px_level_of_the_unet_and_engines_carry_it(tmp_path):
    """A UNet whose native latent is 32 px: its first level's resnet convolutions run as Winograd, in torch and
    in the OpenVINO fp32 engine, at sizes that are and are not multiples of the 4 px tile."""
    pytest.importorskip("openvino", reason="the cpu-engines extra (openvino) is not installed")
    import openvino as ov

    from comfyui_backdrop.export.onnx_export import example_inputs
    from comfyui_backdrop.export.openvino_export import export_unet_openvino
    from comfyui_backdrop.runtime.engines.openvino_backend import OpenVinoUNetBackend
    from comfyui_backdrop.runtime.engines.spec import UNetSpec
    from comfyui_backdrop.runtime.engines.torch_backend import TorchUNetBackend

    unet = tiny_sd15_unet(sample_size=32)
    feeds = (torch.randn(2, 9, 18, 22, generator=torch.Generator().manual_seed(2)), torch.tensor([999, 1]),
             torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(3)))
    with torch.no_grad():
        ref = unet(*feeds).sample
        with export_rewrites(unet, "fp32") as counts:
            ours = unet(*feeds).sample
    assert counts[WINOGRAD] == 6  # level 0: one down resnet and two up resnets, two convolutions each
    assert rel(ours, ref) <= 1e-5
    exported = export_unet_openvino(unet, tmp_path / "unet.xml", precision="fp32")
    assert exported.rewrites[WINOGRAD] == 6
    ops = [op.get_type_name() for op in ov.Core().read_model(str(exported.path)).get_ops()]
    assert ops.count("Convolution") < sum(isinstance(m, torch.nn.Conv2d) for m in unet.modules())
    spec = UNetSpec.from_unet(unet)
    backend = OpenVinoUNetBackend(exported.path, spec)
    for latent in ((16, 16), (18, 22), (8, 12)):
        call = example_inputs(spec, batch=2, latent=latent, seed=7)
        args = [call.get(n) for n in ("sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids")]
        out, expected = backend.run(*args), TorchUNetBackend(unet).run(*args)
        assert rel(out, expected) <= 1e-4, latent



def test_an_export_leaves_no_rewrite_tensors_behind(tmp_path, monkeypatch):
    """TorchScript keeps every traced graph, constants included, for the life of the process; the rewrites'
    tensors are module buffers while tracing (not graph constants), so they go when the export ends."""
    pytest.importorskip("openvino", reason="the cpu-engines extra (openvino) is not installed")
    from comfyui_backdrop.export import graph_rewrites
    from comfyui_backdrop.export.openvino_export import export_unet_openvino

    held = []
    init = graph_rewrites.RewrittenForward.__init__

    def recording(self, function, **tensors):
        init(self, function, **tensors)
        held.extend(weakref.ref(t) for t in tensors.values() if t is not None)

    monkeypatch.setattr(graph_rewrites.RewrittenForward, "__init__", recording)
    unet = tiny_sd15_unet(sample_size=32)
    exported = export_unet_openvino(unet, tmp_path / "unet.xml", precision="fp32")
    assert exported.rewrites[WINOGRAD] == 6 and exported.rewrites[GEGLU_SPLIT] == geglus(unet)
    gc.collect()
    assert len(held) > 6 and [ref for ref in held if ref() is not None] == []
    assert not any(name.endswith(HELD) for name, _ in unet.named_modules())
    assert all("forward" not in vars(m) for m in unet.modules())
