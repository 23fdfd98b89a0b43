"""Few-step schedulers (LCM, TCD) are selectable everywhere schedulers are; the DeepCache-style feature cache skips
the deep blocks between full steps, stays close to the full schedule, keeps the product exact and leaves the UNet
as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.inpainting.feature_cache import deep_blocks, feature_cache
from comfyui_backdrop.runtime.inpainting.generate import InpaintSettings, inpaint_backgrounds
from comfyui_backdrop.runtime.inpainting.loader import load_pipeline
from comfyui_backdrop.runtime.inpainting.schedulers import SCHEDULERS, make_scheduler
from tests.fixtures.tiny_unets import tiny_sd15_unet, tiny_sdxl_unet

SD15 = "checkpoints/tiny-sd15-inpaint.safetensors"
BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
         "steps_offset": 1, "skip_prk_steps": True}


@pytest.mark.parametrize(("name", "cls"), [("lcm", "LCMScheduler"), ("tcd", "TCDScheduler")])
def test_few_step_schedulers_are_registered_and_keep_the_models_noise_schedule(name, cls):
    scheduler = make_scheduler(name, BETAS)
    assert type(scheduler).__name__ == cls and scheduler.config.beta_end == 0.012
    scheduler.set_timesteps(4)
    assert len(scheduler.timesteps) == 4


def test_the_node_and_the_cli_offer_lcm_and_tcd():
    import argparse

    from comfyui_backdrop.cli.inpaint_options import add_inpaint_arguments

    parser = argparse.ArgumentParser()
    add_inpaint_arguments(parser)
    args = parser.parse_args(["--scheduler", "tcd", "--feature-cache", "3"])
    assert (args.scheduler, args.feature_cache) == ("tcd", 3)
    with pytest.raises(SystemExit):
        parser.parse_args(["--scheduler", "warp"])
    assert {"lcm", "tcd"} <= set(SCHEDULERS)
    from comfyui_backdrop.nodes.inpainting import BackdropInpaint

    widgets = BackdropInpaint.INPUT_TYPES()
    assert {"lcm", "tcd"} <= set(widgets["required"]["scheduler"][0])
    assert list(widgets["optional"])[-1] == "feature_cache"  # appended last: saved workflows keep their order


@pytest.mark.parametrize("make", [tiny_sd15_unet, tiny_sdxl_unet])
def test_cache_runs_the_deep_blocks_only_on_full_steps_and_restores_the_unet(make):
    unet = make()
    sdxl = unet.config.addition_embed_type == "text_time"
    calls = {name: 0 for name in deep_blocks(unet)}
    # a block that returns its cached output never calls its own layers: count its first resnet
    hooks = [block.resnets[0].register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
             for name, block in deep_blocks(unet).items()]
    x = torch.randn(2, 9, 16, 16, generator=torch.Generator().manual_seed(0))
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    added = {"text_embeds": torch.randn(2, 16), "time_ids": torch.ones(2, 6)} if sdxl else None

    def step(i: int) -> torch.Tensor:
        return unet(x + 0.01 * i, 900 - 10 * i, context, added_cond_kwargs=added).sample

    with torch.no_grad():
        full = [step(i) for i in range(6)]
        for name in calls:
            calls[name] = 0
        with feature_cache(unet, 3) as state:
            cached = [step(i) for i in range(6)]
    assert (state.full_calls, state.shallow_calls) == (2, 4)
    assert set(calls.values()) == {2}  # the deep blocks ran on steps 0 and 3 only
    for i, (a, b) in enumerate(zip(full, cached, strict=True)):
        err = float((a - b).abs().max() / a.abs().max())
        assert (err == 0.0) if i % 3 == 0 else (0 < err < 0.3)
    assert not any("forward" in block.__dict__ for block in deep_blocks(unet).values())  # restored
    for hook in hooks:
        hook.remove()


def test_cache_refuses_bad_intervals_and_engine_unets():
    unet = tiny_sd15_unet()
    with pytest.raises(InvalidInputError, match="2..10"), feature_cache(unet, 11):
        pass
    with feature_cache(unet, 1) as state:
        assert state is None  # 1 = every step in full = off
    with pytest.raises(InvalidInputError, match="torch UNet"), feature_cache(torch.nn.Identity(), 2):
        pass
    with pytest.raises(InvalidInputError, match="feature_cache"):
        InpaintSettings(prompt="x", feature_cache=12).validate()


def test_inpainting_with_the_cache_stays_close_and_keeps_the_product_exact(inpaint_models, product_photo):
    image, mask = product_photo
    image, mask = image.astype(np.float32) / 255.0, mask.astype(np.float32)
    handle = load_pipeline(SD15)
    settings = InpaintSettings(prompt="a marble table", steps=6, resolution=128, seed=3)
    full = inpaint_backgrounds(handle, [image], [mask], settings).images[0]
    cached = inpaint_backgrounds(handle, [image], [mask], InpaintSettings(**{**settings.__dict__, "feature_cache": 2}))
    ours = cached.images[0]
    diff = np.abs(ours - full)
    assert diff.max() > 0 and diff.mean() < 0.05  # close to the full schedule, not identical
    product = mask >= 0.5
    assert np.array_equal(ours[product], image[product])
    again = inpaint_backgrounds(handle, [image], [mask], settings).images[0]
    assert np.array_equal(again, full)  # the cache left nothing behind in the shared pipeline
    lcm = inpaint_backgrounds(handle, [image], [mask], InpaintSettings(**{**settings.__dict__, "scheduler": "lcm",
                                                                        "steps": 2}))
    assert np.array_equal(lcm.images[0][product], image[product])
