"""The bench's frozen torch.compile row: Inductor freezing computes the eager UNet's function."""

from __future__ import annotations

import torch

from comfyui_backdrop.runtime.engines.torch_backend import TorchUNetBackend
from tests.fixtures.inpaint_fixtures import build_tiny_pipeline, write_tiny_tokenizer


def test_frozen_compile_matches_eager_and_leaves_the_unet_alone(tmp_path):
    unet = build_tiny_pipeline("sd15", write_tiny_tokenizer(tmp_path), seed=3).unet
    before = {name: p.detach().clone() for name, p in unet.named_parameters()}
    sample, context = torch.randn(2, 9, 8, 8), torch.randn(2, 77, 32)
    timestep = torch.tensor([7, 700])
    sample_in = sample.clone()
    eager = TorchUNetBackend(unet)
    frozen = TorchUNetBackend(unet, freeze=True)
    assert frozen.name == "torch.compile (frozen)"
    reference = eager.run(sample, timestep, context)
    out = frozen.run(sample, timestep, context)
    assert out.shape == reference.shape == (2, 4, 8, 8)
    assert (out - reference).abs().max() <= 1e-4 * reference.abs().max()  # fp32: the same function
    other = frozen.run(torch.randn(2, 9, 8, 8), timestep, context)
    assert (other - out).abs().max() > 1e-3  # another input, another output (not a cached constant)
    assert torch.equal(sample, sample_in)  # the input is not mutated
    assert all(torch.equal(p, before[name]) for name, p in unet.named_parameters())  # nor the weights
    with torch.no_grad():  # frozen: the weights are constants of the compiled graph, so a later change is not seen
        unet.conv_out.weight.mul_(2.0)
    assert torch.equal(frozen.run(sample, timestep, context), out)
    assert (eager.run(sample, timestep, context) - reference).abs().max() > 1e-3
