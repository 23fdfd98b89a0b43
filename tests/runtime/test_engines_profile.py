"""Shape profiles: built from user resolutions, out-of-profile errors that name the profile, batch splitting."""

from __future__ import annotations

import pytest
import torch

from comfyui_backdrop.export.onnx_export import example_inputs
from comfyui_backdrop.runtime.engines.base import ProfiledBackend, unet_feeds
from comfyui_backdrop.runtime.engines.profile import OutOfProfileError, ShapeProfile
from comfyui_backdrop.runtime.engines.spec import UNetSpec
from comfyui_backdrop.runtime.engines.torch_backend import TorchUNetBackend
from comfyui_backdrop.runtime.errors import InvalidInputError
from tests.fixtures.tiny_unets import tiny_sd15_unet


def test_profile_from_user_resolutions():
    profile = ShapeProfile.from_resolutions([(768, 512), (512, 512), (1024, 768)], batch=(1, 2, 4))
    assert profile.width == (64, 96, 128)  # latent units; the first resolution is the optimum
    assert profile.height == (64, 64, 96)
    assert profile.batch == (1, 2, 4) and profile.tokens == (77, 77, 77)
    assert ShapeProfile.from_dict(profile.to_dict()) == profile
    text = profile.describe()
    assert "512..1024" in text and "512..768" in text and "batch 1..4" in text


def test_resolutions_must_fit_the_unet():
    with pytest.raises(InvalidInputError, match="multiples of 64"):
        ShapeProfile.from_resolutions([(500, 512)])
    with pytest.raises(InvalidInputError, match="min <= opt <= max"):
        ShapeProfile(batch=(2, 1, 4), height=(8, 8, 8), width=(8, 8, 8))


def test_out_of_profile_error_names_the_profile():
    profile = ShapeProfile.from_resolutions([(512, 512), (768, 768)], batch=4)
    with pytest.raises(OutOfProfileError) as err:
        profile.check(height=128, width=64, tokens=77)
    message = str(err.value)
    assert "latent height 128 (1024 px)" in message
    assert profile.describe() in message and "Export an engine" in message
    with pytest.raises(OutOfProfileError, match="154 text tokens"):
        profile.check(height=64, width=64, tokens=154)
    profile.check(height=96, width=64, tokens=77)  # inside: no error


def test_batch_chunks_split_and_pad():
    profile = ShapeProfile(batch=(2, 2, 4), height=(8, 8, 8), width=(8, 8, 8))
    assert profile.batch_chunks(4) == [(0, 4, 0)]
    assert profile.batch_chunks(9) == [(0, 4, 0), (4, 8, 0), (8, 9, 1)]
    assert profile.batch_chunks(1) == [(0, 1, 1)]


def test_input_shapes_for_a_tensorrt_profile():
    spec = UNetSpec(family="sdxl", in_channels=9, out_channels=4, context_dim=2048, latent_multiple=4,
                    text_embeds_dim=1280, time_ids_dim=6)
    shapes = ShapeProfile.from_resolutions([(1024, 1024), (768, 1344)], batch=(1, 2, 2)).input_shapes(spec)
    assert shapes["sample"] == ((1, 9, 128, 96), (2, 9, 128, 128), (2, 9, 168, 128))
    assert shapes["encoder_hidden_states"][2] == (2, 77, 2048)
    assert shapes["text_embeds"][0] == (1, 1280) and shapes["time_ids"][2] == (2, 6)


class ProfiledTorch(ProfiledBackend):
    """A real backend (the torch UNet) behind a profile, recording the batch of every chunk it runs."""

    name = "profiled-torch"

    def __init__(self, unet, profile):
        self.inner = TorchUNetBackend(unet)
        super().__init__(self.inner.spec, profile)
        self.chunks = []

    def _run_chunk(self, feeds):
        self.chunks.append(feeds["sample"].shape[0])
        return self.inner._run_chunk(feeds)


@pytest.fixture(scope="module")
def unet():
    return tiny_sd15_unet()


def test_batches_are_split_to_fit_and_give_the_unsplit_result(unet):
    profile = ShapeProfile(batch=(2, 2, 3), height=(8, 8, 16), width=(8, 8, 16), tokens=(1, 7, 77))
    backend = ProfiledTorch(unet, profile)
    feeds = example_inputs(backend.spec, batch=7, latent=(16, 8), tokens=7)
    feeds["timestep"] = torch.linspace(10, 900, 7)  # one timestep per row must stay with its row
    out = backend.run(feeds["sample"], feeds["timestep"], feeds["encoder_hidden_states"])
    assert backend.chunks == [3, 3, 2]  # 7 = 3 + 3 + 1, the last chunk padded to the minimum of 2
    whole = TorchUNetBackend(unet).run(feeds["sample"], feeds["timestep"], feeds["encoder_hidden_states"])
    assert out.shape == whole.shape == (7, 4, 16, 8)
    assert torch.allclose(out, whole, atol=1e-5)


def test_out_of_profile_latent_is_refused_by_the_backend(unet):
    backend = ProfiledTorch(unet, ShapeProfile(batch=(1, 1, 2), height=(8, 8, 8), width=(8, 8, 8)))
    feeds = example_inputs(backend.spec, batch=1, latent=(16, 8), tokens=77)
    with pytest.raises(OutOfProfileError, match=r"latent height 16 \(128 px\).*image width 64 x height 64 px"):
        backend.run(feeds["sample"], feeds["timestep"], feeds["encoder_hidden_states"])
    assert backend.chunks == []


def test_unet_feeds_validate_and_broadcast(unet):
    spec = UNetSpec.from_unet(unet)
    sample = torch.zeros(3, 9, 8, 8)
    context = torch.zeros(1, 7, 32)
    feeds = unet_feeds(spec, sample, 500, context)
    assert feeds["timestep"].shape == (3,) and feeds["timestep"].dtype == torch.float32
    assert feeds["encoder_hidden_states"].shape == (3, 7, 32)
    with pytest.raises(InvalidInputError, match="multiple of 2"):
        unet_feeds(spec, torch.zeros(1, 9, 7, 8), 1, context)
    with pytest.raises(InvalidInputError, match=r"\[batch, 9, h, w\]"):
        unet_feeds(spec, torch.zeros(1, 4, 8, 8), 1, context)
    with pytest.raises(InvalidInputError, match="one value or one per row"):
        unet_feeds(spec, sample, torch.tensor([1.0, 2.0]), context)
    with pytest.raises(InvalidInputError, match=r"\[batch, tokens, 32\]"):
        unet_feeds(spec, sample, 1, torch.zeros(3, 7, 16))


def test_parse_resolutions():
    from comfyui_backdrop.runtime.engines.profile import parse_resolutions

    assert parse_resolutions("512x512, 768X512;1024x 768") == [(512, 512), (768, 512), (1024, 768)]
    with pytest.raises(InvalidInputError, match="WIDTHxHEIGHT"):
        parse_resolutions("512 by 512")
    with pytest.raises(InvalidInputError, match="at least one"):
        parse_resolutions(" , ")
