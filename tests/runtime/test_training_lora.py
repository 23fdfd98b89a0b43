"""Stage-1 training on the tiny inpainting models: learning, frozen base, export, reload, resume."""

from __future__ import annotations

import pytest
import torch

from comfyui_backdrop.runtime.errors import Interrupted, InvalidInputError
from comfyui_backdrop.runtime.training.dataset import prepare_dataset
from comfyui_backdrop.runtime.training.export import read_metadata
from comfyui_backdrop.runtime.training.lora_setup import ALL_UNET_TARGETS
from comfyui_backdrop.runtime.training.trainer import TrainConfig, evaluation_loss, train_lora, training_unet
from tests.fixtures.training_fixtures import locator_with_loras, write_product_folder

SD15 = "checkpoints/tiny-sd15-inpaint.safetensors"


def tiny_config(**overrides) -> TrainConfig:
    settings = {"steps": 30, "rank": 4, "resolution": 64, "learning_rate": 5e-3, "caption_dropout": 0.1}
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def setup(inpaint_models_root, tmp_path_factory):
    """Locator (private loras folder), a prepared 4-image dataset, and the SD1.5 handle."""
    from comfyui_backdrop.runtime.inpainting.loader import load_pipeline
    from comfyui_backdrop.runtime.models import set_locator

    tmp = tmp_path_factory.mktemp("training")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BACKDROP_CLIP_TOKENIZER", str(inpaint_models_root["tokenizer"]))
        set_locator(locator_with_loras(inpaint_models_root["root"], tmp / "loras"))
        entries = prepare_dataset(write_product_folder(tmp / "photos"), tmp / "prepared").entries
        yield {"tmp": tmp, "entries": entries, "handle": load_pipeline(SD15), "loras": tmp / "loras"}
        set_locator(None)


@pytest.fixture(scope="module")
def trained(setup):
    handle = setup["handle"]
    before = {k: v.clone() for k, v in handle.pipe.unet.state_dict().items()}
    result = train_lora(handle, setup["entries"], tiny_config())
    return {"result": result, "base_before": before}


def test_loss_decreases(setup, trained):
    handle, config = setup["handle"], tiny_config()
    before = evaluation_loss(handle, training_unet(handle), setup["entries"], config)
    after = evaluation_loss(handle, trained["result"].unet, setup["entries"], config)
    assert after < 0.8 * before, (before, after)
    assert len(trained["result"].losses) == 30


def test_only_lora_parameters_change(setup, trained):
    result, handle = trained["result"], setup["handle"]
    for key, value in handle.pipe.unet.state_dict().items():  # the cached pipeline is untouched
        assert torch.equal(value, trained["base_before"][key]), key
    trained_state = result.unet.state_dict()
    base_keys = [k for k in trained_state if "lora_" not in k]
    assert len(base_keys) == len(trained["base_before"])
    for key in base_keys:
        assert torch.equal(trained_state[key], trained["base_before"][key.replace(".base_layer.", ".")]), key
    changed = [k for k, v in result.lora.items() if k.endswith("lora_B.weight") and v.abs().max() > 0]
    assert len(changed) == len(result.lora) // 2  # peft starts lora_B at zero: every B moved


def test_lora_covers_every_unet_layer_kind(trained):
    modules = {k.rpartition(".lora_")[0] for k in trained["result"].lora}
    for kind in ("attn1.to_q", "attn2.to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out",
                 "resnets.0.conv1", "conv2", "conv_shortcut", "time_emb_proj", "time_embedding.linear_1",
                 "time_embedding.linear_2"):
        assert any(m.endswith(kind) or f".{kind}." in f"{m}." for m in modules), kind
    assert trained["result"].targets == ALL_UNET_TARGETS


def test_saved_lora_reloads_to_the_same_outputs(setup, trained):
    from comfyui_backdrop.runtime.inpainting.loras import activated, add_lora

    result, handle = trained["result"], setup["handle"]
    path = result.save("bg_stage1")
    assert path.parent == setup["loras"] and path.name == "bg_stage1.safetensors"
    assert result.save("bg_stage1").name == "bg_stage1-1.safetensors"  # never overwrites
    meta = read_metadata(path)
    assert meta["backdrop.base_model"] == SD15 and meta["backdrop.base_fingerprint"] == handle.fingerprint
    assert meta["backdrop.rank"] == "4" and meta["backdrop.alpha"] == "4" and meta["backdrop.steps"] == "30"
    assert meta["backdrop.dataset_hash"] == result.dataset_hash and "time_emb_proj" in meta["backdrop.targets"]
    torch.manual_seed(5)
    sample = torch.randn(2, 9, 8, 8)
    timestep = torch.tensor([10, 700])
    context = torch.randn(2, 77, 32)
    with torch.no_grad():
        expected = result.unet(sample, timestep, encoder_hidden_states=context).sample
        with activated(add_lora(handle, "bg_stage1.safetensors", 1.0)) as pipe:
            got = pipe.unet(sample, timestep, encoder_hidden_states=context).sample
        with activated(handle) as pipe:
            base = pipe.unet(sample, timestep, encoder_hidden_states=context).sample
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (base - expected).abs().max() > 1e-3  # the LoRA really changes the output


def test_saved_keys_follow_comfyui_lora_key_mapping(setup, trained):
    """Rebuild ComfyUI's model_lora_keys_unet mapping for a diffusers-layout UNet (``lora_unet_`` +
    the diffusers weight key without ``.weight``, dots as underscores) and check every saved key."""
    from safetensors.torch import load_file

    result = trained["result"]
    path = result.save("bg_keys")
    clean = training_unet(setup["handle"]).state_dict()
    key_map = {"lora_unet_" + k[: -len(".weight")].replace(".", "_"): k for k in clean if k.endswith(".weight")}
    saved = load_file(str(path))
    modules = {k.split(".", 1)[0] for k in saved}
    assert modules and all(m in key_map for m in modules), sorted(modules - set(key_map))[:5]
    for module in modules:  # ComfyUI reads exactly these three keys per module
        down, up = saved[f"{module}.lora_down.weight"], saved[f"{module}.lora_up.weight"]
        assert saved[f"{module}.alpha"].numel() == 1
        weight = clean[key_map[module]]
        assert up.shape[0] == weight.shape[0] and down.shape[1] == weight.shape[1]
    assert len(modules) == len(result.lora) // 2


def test_resume_continues_from_the_checkpoint_step(setup):
    handle, entries = setup["handle"], setup["entries"]
    folder = setup["tmp"] / "ckpt"
    straight = train_lora(handle, entries, tiny_config(steps=6))

    def stop_at_4(done, total):
        if done == 4:
            raise Interrupted("stop")

    with pytest.raises(Interrupted):
        train_lora(handle, entries, tiny_config(steps=6, checkpoint_every=2, checkpoint_dir=str(folder)),
                   progress=stop_at_4)
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-000002.pt", "checkpoint-000004.pt"]
    seen = []
    resumed = train_lora(handle, entries, tiny_config(steps=6), on_loss=lambda step, loss: seen.append(step),
                         resume_from=folder / "checkpoint-000004.pt")
    assert seen == [5, 6]
    assert resumed.losses == pytest.approx(straight.losses, abs=1e-6)
    for key, value in straight.lora.items():
        torch.testing.assert_close(resumed.lora[key], value, atol=1e-6, rtol=0)
    with pytest.raises(InvalidInputError, match="another rank"):
        train_lora(handle, entries, tiny_config(steps=6, rank=2), resume_from=folder / "checkpoint-000004.pt")


def test_four_channel_base_model_trains_the_plain_variant(setup):
    from comfyui_backdrop.runtime.inpainting.loader import load_pipeline
    from comfyui_backdrop.runtime.inpainting.loras import activated, add_lora

    handle = load_pipeline("checkpoints/tiny-sd15-base.safetensors")
    assert handle.unet_in_channels == 4
    result = train_lora(handle, setup["entries"], tiny_config(steps=3))
    path = result.save("bg_plain")
    assert read_metadata(path)["backdrop.unet_in_channels"] == "4"
    sample, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 32)
    with torch.no_grad(), activated(add_lora(handle, path.name, 1.0)) as pipe:
        torch.testing.assert_close(pipe.unet(sample, t, encoder_hidden_states=ctx).sample,
                                   result.unet(sample, t, encoder_hidden_states=ctx).sample, atol=1e-5, rtol=0)


def test_bad_settings_are_refused(setup):
    with pytest.raises(InvalidInputError, match="no entries"):
        train_lora(setup["handle"], [], tiny_config())
    with pytest.raises(InvalidInputError, match="multiple of 8"):
        train_lora(setup["handle"], setup["entries"], tiny_config(resolution=60))


def test_sdxl_trains_and_reloads(setup):
    from comfyui_backdrop.runtime.inpainting.loader import load_pipeline
    from comfyui_backdrop.runtime.inpainting.loras import activated, add_lora

    handle = load_pipeline("checkpoints/tiny-sdxl-inpaint.safetensors")
    result = train_lora(handle, setup["entries"], tiny_config(steps=3))
    assert all(loss == loss for loss in result.losses)
    path = result.save("bg_sdxl")
    assert read_metadata(path)["ss_base_model_version"] == "sdxl_base_v1-0"
    torch.manual_seed(2)
    args = (torch.randn(1, 9, 8, 8), torch.tensor([300]))
    kwargs = {"encoder_hidden_states": torch.randn(1, 77, 96),
              "added_cond_kwargs": {"text_embeds": torch.randn(1, 64), "time_ids": torch.tensor([[64.0] * 6])}}
    with torch.no_grad(), activated(add_lora(handle, path.name, 1.0)) as pipe:
        torch.testing.assert_close(pipe.unet(*args, **kwargs).sample, result.unet(*args, **kwargs).sample,
                                   atol=1e-5, rtol=0)


def test_gradient_checkpointing_gives_the_same_training(setup):
    """The GPU memory saver, forced on the CPU: same losses and LoRA as without it."""
    plain = train_lora(setup["handle"], setup["entries"], tiny_config(steps=3, gradient_checkpointing=False))
    saved = train_lora(setup["handle"], setup["entries"], tiny_config(steps=3, gradient_checkpointing=True))
    assert saved.losses == pytest.approx(plain.losses, abs=1e-6)
    for key, value in plain.lora.items():
        torch.testing.assert_close(saved.lora[key], value, atol=1e-6, rtol=0)


def test_training_works_where_comfyui_runs_nodes_under_inference_mode(setup):
    """ComfyUI executes every node inside torch.inference_mode(): the model is loaded there (its weights
    are inference tensors) and training is called there too."""
    from comfyui_backdrop.runtime.inpainting.loader import load_pipeline
    from comfyui_backdrop.runtime.models import free_models

    free_models()  # load afresh, the way the loader node would inside ComfyUI
    with torch.inference_mode():
        handle = load_pipeline("diffusers/tiny-sd15-inpaint")
        assert next(handle.pipe.unet.parameters()).is_inference()
        result = train_lora(handle, setup["entries"], tiny_config(steps=3))
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    assert any(v.abs().sum() > 0 for k, v in result.lora.items() if "lora_B" in k or "lora_up" in k)
    free_models()
