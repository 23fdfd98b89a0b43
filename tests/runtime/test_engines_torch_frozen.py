"""The bench's frozen torch.compile row: Inductor freezing computes the eager UNet's function, really freezes, and
never shares a graph with a plain torch.compile of the same UNet or with another UNet of the same shapes."""

from __future__ import annotations

import torch

from comfyui_backdrop.runtime.engines.torch_backend import TorchUNetBackend
from tests.fixtures.inpaint_fixtures import build_tiny_pipeline, write_tiny_tokenizer


def test_frozen_compile_matches_eager_freezes_and_keeps_each_unet_its_own(tmp_path):
    tokenizer = write_tiny_tokenizer(tmp_path)
    unets = [build_tiny_pipeline("sd15", tokenizer, seed=s).unet for s in (4, 5)]
    before = {name: p.detach().clone() for name, p in unets[0].named_parameters()}
    sample, context, timestep = torch.randn(2, 9, 8, 8), torch.randn(2, 77, 32), torch.tensor([7, 700])
    sample_in = sample.clone()
    TorchUNetBackend(unets[0], compile=True).run(sample, timestep, context)  # the bench's plain row comes first
    outputs = []
    for unet in unets:
        reference = TorchUNetBackend(unet).run(sample, timestep, context)
        frozen = TorchUNetBackend(unet, freeze=True)
        assert frozen.name == "torch.compile (frozen)"
        out = frozen.run(sample, timestep, context)
        assert out.shape == reference.shape == (2, 4, 8, 8)
        assert (out - reference).abs().max() <= 1e-4 * reference.abs().max()  # fp32: the same function
        outputs.append((frozen, out))
    assert (outputs[0][1] - outputs[1][1]).abs().max() > 1e-3  # each UNet its own graph
    other = outputs[0][0].run(torch.randn(2, 9, 8, 8), timestep, context)
    assert (other - outputs[0][1]).abs().max() > 1e-3  # another input, another output (not a cached constant)
    assert torch.equal(sample, sample_in)  # the input is not mutated
    assert all(torch.equal(p, before[name]) for name, p in unets[0].named_parameters())  # nor the weights
    with torch.no_grad():  # frozen: the weights were folded into the graph, so a later change is not seen
        for unet in unets:
            unet.conv_out.weight.mul_(2.0)
    for frozen, out in outputs:
        assert torch.equal(frozen.run(sample, timestep, context), out)
    assert (TorchUNetBackend(unets[0]).run(sample, timestep, context) - outputs[0][1]).abs().max() > 1e-3
