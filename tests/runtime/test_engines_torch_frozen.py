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


def test_each_frozen_unet_keeps_its_own_weights(tmp_path):
    """A frozen graph has its weights baked in: after a plain compile of the same UNet (the bench's rows), and for
    a second UNet of the same shapes, each frozen backend still freezes, and computes its own UNet."""
    tokenizer = write_tiny_tokenizer(tmp_path)
    unets = [build_tiny_pipeline("sd15", tokenizer, seed=s).unet for s in (4, 5)]
    sample, context, timestep = torch.randn(1, 9, 8, 8), torch.randn(1, 77, 32), torch.tensor([50])
    TorchUNetBackend(unets[0], compile=True).run(sample, timestep, context)  # an unfrozen graph of the same UNet
    outputs = []
    for unet in unets:
        reference = TorchUNetBackend(unet).run(sample, timestep, context)
        frozen = TorchUNetBackend(unet, freeze=True)
        outputs.append((frozen, frozen.run(sample, timestep, context)))
        assert (outputs[-1][1] - reference).abs().max() <= 1e-4 * reference.abs().max()
    assert (outputs[0][1] - outputs[1][1]).abs().max() > 1e-3
    with torch.no_grad():
        for unet in unets:
            unet.conv_out.weight.mul_(2.0)
    for frozen, out in outputs:  # frozen (the weights were folded in), not the plain compile's graph
        assert torch.equal(frozen.run(sample, timestep, context), out)
