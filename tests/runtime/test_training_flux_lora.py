"""LoRA training on the tiny FLUX.1 Fill (and Kontext) transformers: learning, background weighting, resume,
saved file loaded back through add_lora, and the saved keys checked against ComfyUI's FLUX LoRA key map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_backdrop.runtime.errors import Interrupted, InvalidInputError
from comfyui_backdrop.runtime.training.dataset import prepare_dataset
from comfyui_backdrop.runtime.training.export import read_metadata
from comfyui_backdrop.runtime.training.lora_setup import ALL_FLUX_TARGETS
from comfyui_backdrop.runtime.training.trainer import TrainConfig, evaluation_loss, train_lora, training_unet
from tests.fixtures.images import studio_product_photo
from tests.fixtures.training_fixtures import locator_with_loras, write_product_folder

FILL = "diffusers/tiny-flux-fill"
KONTEXT = "diffusers/tiny-flux-kontext"


def tiny_config(**overrides) -> TrainConfig:
    settings = {"steps": 25, "rank": 4, "alpha": 2.0, "resolution": 64, "learning_rate": 5e-3, "caption_dropout": 0.1}
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def setup(flux_models_root, tmp_path_factory):
    """Locator over the tiny FLUX models (private loras folder), a prepared 3-image dataset, the Fill handle."""
    from comfyui_backdrop.runtime.inpainting.loader import load_pipeline
    from comfyui_backdrop.runtime.models import set_locator

    tmp = tmp_path_factory.mktemp("flux_training")
    set_locator(locator_with_loras(flux_models_root["root"], tmp / "loras"))
    try:
        entries = prepare_dataset(write_product_folder(tmp / "photos", count=3), tmp / "prepared").entries
        yield {"tmp": tmp, "entries": entries, "handle": load_pipeline(FILL), "loras": tmp / "loras"}
    finally:
        set_locator(None)


@pytest.fixture(scope="module")
def trained(setup):
    handle = setup["handle"]
    before = {k: v.clone() for k, v in handle.pipe.transformer.state_dict().items()}
    result = train_lora(handle, setup["entries"], tiny_config())
    return {"result": result, "base_before": before}


def test_loss_decreases_on_fixed_batches(setup, trained):
    handle, config = setup["handle"], tiny_config()
    before = evaluation_loss(handle, training_unet(handle), setup["entries"], config, batches=4)
    after = evaluation_loss(handle, trained["result"].unet, setup["entries"], config, batches=4)
    assert after < 0.8 * before, (before, after)
    assert len(trained["result"].losses) == 25 and trained["result"].guidance == 30.0  # Fill [dev]'s own


def test_every_block_layer_and_embedder_has_a_lora_and_nothing_else_changes(setup, trained):
    result, handle = trained["result"], setup["handle"]
    for key, value in handle.pipe.transformer.state_dict().items():  # the cached pipeline is untouched
        assert torch.equal(value, trained["base_before"][key]), key
    linears = {n for n, m in handle.pipe.transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    modules = {k.rpartition(".lora_")[0] for k in result.lora}
    assert modules == linears - {"norm_out.linear", "proj_out"}  # every block, embedder and modulation linear
    assert {"x_embedder", "context_embedder", "single_transformer_blocks.0.proj_out",
            "transformer_blocks.0.attn.add_k_proj", "time_text_embed.guidance_embedder.linear_2"} <= modules
    assert result.targets == ALL_FLUX_TARGETS
    moved = [k for k, v in result.lora.items() if k.endswith("lora_B.weight") and v.abs().max() > 0]
    assert len(moved) == len(modules)  # peft starts lora_B at zero: every B moved


def _weighted_output_grad(setup, background: float, product: float):
    """The gradient of one batch's loss with respect to the transformer's output tokens, and the batch."""
    from comfyui_backdrop.runtime.training import trainer

    handle = setup["handle"]
    config = tiny_config(background_weight=background, product_weight=product, caption_dropout=0.0)
    samples = trainer.load_samples(setup["entries"], config.resolution)
    conditioning = trainer._text_conditioning(handle, {s.caption for s in samples}, config.resolution)
    weights = torch.ones(len(samples), dtype=torch.float64)
    generator = torch.Generator().manual_seed(7)
    transformer = training_unet(handle)
    transformer.requires_grad_(False)
    transformer.proj_out.weight.requires_grad_(True)
    captured = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["out"] = output

    transformer.proj_out.register_forward_hook(keep)
    batch = trainer._make_batch(samples, weights, config, generator, handle, handle.pipe.vae, 1.0, conditioning)
    loss = trainer._batch_loss(transformer, batch, generator, trainer._training_scheduler(handle), handle, config,
                               None)
    loss.backward()
    return captured["out"].grad, batch["mask"], transformer.proj_out.weight.grad


def test_background_weighting_scales_the_gradient_per_token_as_designed(setup):
    """d loss / d prediction = 2 w (pred - target) / sum(w): with the same batch and noise, the ratio of the
    gradients under weights (1, 0) and (1, 1) is exactly w / mean(w): 0 on product latents."""
    only_background, mask = _weighted_output_grad(setup, 1.0, 0.0)[:2]
    uniform, mask_again, _ = _weighted_output_grad(setup, 1.0, 1.0)
    assert torch.equal(mask, mask_again) and 0 < float(mask.mean()) < 1  # a real mix of product and background
    product = mask == 0
    assert float(only_background[product].abs().max()) == 0.0
    assert float(only_background[~product].abs().min()) > 0
    ratio = only_background[~product] / uniform[~product]
    torch.testing.assert_close(ratio, torch.full_like(ratio, mask.numel() / float(mask.sum())), rtol=1e-4, atol=0)
    weighted = _weighted_output_grad(setup, 1.0, 0.1)[2]
    assert not torch.allclose(weighted, _weighted_output_grad(setup, 1.0, 1.0)[2])


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(setup):
    handle, entries = setup["handle"], setup["entries"]
    folder = setup["tmp"] / "ckpt"
    straight = train_lora(handle, entries, tiny_config(steps=4))

    def stop_at_2(done, total):
        if done == 2:
            raise Interrupted("stop")

    with pytest.raises(Interrupted):
        train_lora(handle, entries, tiny_config(steps=4, checkpoint_dir=str(folder)), progress=stop_at_2)
    assert [p.name for p in folder.iterdir()] == ["checkpoint-000002.pt"]
    seen = []
    resumed = train_lora(handle, entries, tiny_config(steps=4), on_loss=lambda step, loss: seen.append(step),
                         resume_from=folder / "checkpoint-000002.pt")
    assert seen == [3, 4]
    assert resumed.losses == pytest.approx(straight.losses, abs=1e-6)
    for key, value in straight.lora.items():
        torch.testing.assert_close(resumed.lora[key], value, atol=1e-6, rtol=0)
    with pytest.raises(InvalidInputError, match="another guidance"):
        train_lora(handle, entries, tiny_config(steps=4, guidance=3.5), resume_from=folder / "checkpoint-000002.pt")


def transformer_output(transformer, in_channels: int = 384) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    hidden, context = torch.randn(1, 16, in_channels, generator=generator), torch.randn(1, 8, 32, generator=generator)
    pooled = torch.randn(1, 32, generator=generator)
    img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"),
                          dim=-1).reshape(16, 3)
    with torch.no_grad():
        return transformer(hidden_states=hidden, encoder_hidden_states=context, pooled_projections=pooled,
                           timestep=torch.tensor([0.5]), img_ids=img_ids, txt_ids=torch.zeros(8, 3),
                           guidance=torch.tensor([30.0]), return_dict=False)[0]


def test_saved_lora_loads_with_add_lora_and_changes_the_inpaint_but_not_the_product(setup, trained):
    from comfyui_backdrop.runtime.inpainting.generate import InpaintSettings, inpaint_backgrounds
    from comfyui_backdrop.runtime.inpainting.loras import activated, add_lora

    result, handle = trained["result"], setup["handle"]
    path = result.save("flux_bg")
    assert path.parent == setup["loras"] and result.save("flux_bg").name == "flux_bg-1.safetensors"
    meta = read_metadata(path)
    assert meta["backdrop.family"] == "flux-fill" and meta["backdrop.unet_in_channels"] == "384"
    assert meta["ss_base_model_version"] == "flux1" and meta["backdrop.guidance"] == "30"
    assert meta["backdrop.rank"] == "4" and meta["backdrop.alpha"] == "2" and meta["backdrop.base_model"] == FILL
    styled = add_lora(handle, "flux_bg.safetensors", 1.0)
    with activated(styled) as pipe:  # alpha/rank = 0.5 is honoured: the loaded adapter is the trained one
        torch.testing.assert_close(transformer_output(pipe.transformer), transformer_output(result.unet),
                                   atol=1e-5, rtol=0)
    image, mask = studio_product_photo(72, 88, seed=4)
    image, mask = image.astype(np.float32) / 255.0, mask.astype(np.float32)
    settings = InpaintSettings(prompt="a marble table", steps=2, resolution=64, cfg=30.0, seed=3)

    def paint(h):
        return inpaint_backgrounds(h, [image], [mask], settings).images[0]

    base = paint(handle)
    with_lora = paint(styled)
    at_zero = paint(add_lora(handle, "flux_bg.safetensors", 0.0))
    product = mask >= 0.5
    assert np.abs(with_lora - base).max() > 1e-3  # the trained LoRA changes the background
    assert np.array_equal(with_lora[product], image[product]) and np.array_equal(at_zero, base)


# ------------------------------------------------------------------------- ComfyUI's FLUX LoRA key map

def swap_scale_shift(weight: torch.Tensor) -> torch.Tensor:
    shift, scale = weight.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


def comfy_flux_to_diffusers(depth: int, depth_single: int, hidden: int) -> dict[str, object]:
    """ComfyUI 0.8.0's ``comfy.utils.flux_to_diffusers`` for a FLUX transformer (no ControlNet input), rewritten
    here: diffusers name -> BFL name under ``diffusion_model.``, or ``(bfl_key, (dim, offset, size))`` for q/k/v
    and proj_mlp (slices of the fused weights), or ``(bfl_key, None, function)`` for norm_out."""
    out: dict[str, object] = {}
    prefix = "diffusion_model."
    for i in range(depth):
        src, dst = f"transformer_blocks.{i}", f"{prefix}double_blocks.{i}"
        for end in ("weight", "bias"):
            for stream, names in (("img", ("to_q", "to_k", "to_v")), ("txt", ("add_q_proj", "add_k_proj",
                                                                                "add_v_proj"))):
                for j, name in enumerate(names):
                    out[f"{src}.attn.{name}.{end}"] = (f"{dst}.{stream}_attn.qkv.{end}", (0, j * hidden, hidden))
        block = {"attn.to_out.0": "img_attn.proj", "norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
                 "attn.to_add_out": "txt_attn.proj", "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
                 "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2"}
        for a, b in block.items():
            for end in ("weight", "bias"):
                out[f"{src}.{a}.{end}"] = f"{dst}.{b}.{end}"
        for a, b in {"attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
                     "attn.norm_added_q": "txt_attn.norm.query_norm",
                     "attn.norm_added_k": "txt_attn.norm.key_norm"}.items():
            out[f"{src}.{a}.weight"] = f"{dst}.{b}.scale"
    for i in range(depth_single):
        src, dst = f"single_transformer_blocks.{i}", f"{prefix}single_blocks.{i}"
        for end in ("weight", "bias"):
            for j, name in enumerate(("to_q", "to_k", "to_v")):
                out[f"{src}.attn.{name}.{end}"] = (f"{dst}.linear1.{end}", (0, j * hidden, hidden))
            out[f"{src}.proj_mlp.{end}"] = (f"{dst}.linear1.{end}", (0, 3 * hidden, 4 * hidden))
            out[f"{src}.norm.linear.{end}"] = f"{dst}.modulation.lin.{end}"
            out[f"{src}.proj_out.{end}"] = f"{dst}.linear2.{end}"
        out[f"{src}.attn.norm_q.weight"] = f"{dst}.norm.query_norm.scale"
        out[f"{src}.attn.norm_k.weight"] = f"{dst}.norm.key_norm.scale"
    basic = {"proj_out": "final_layer.linear", "x_embedder": "img_in", "context_embedder": "txt_in",
             "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
             "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
             "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
             "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
             "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
             "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer"}
    for a, b in basic.items():
        for end in ("weight", "bias"):
            out[f"{a}.{end}"] = f"{prefix}{b}.{end}"
    for end in ("weight", "bias"):
        out[f"norm_out.linear.{end}"] = (f"{prefix}final_layer.adaLN_modulation.1.{end}", None, swap_scale_shift)
    return out


def bfl_state_dict(diffusers_state: dict, mapping: dict) -> dict[str, torch.Tensor]:
    """The transformer's weights in BFL layout (what ComfyUI holds), assembled slice by slice with ``mapping``."""
    parts: dict[str, list] = {}
    for key, value in diffusers_state.items():
        target = mapping[key]  # every diffusers weight of the model has a BFL home
        if isinstance(target, tuple) and target[1] is None:
            parts.setdefault(target[0], []).append((0, target[2](value)))
        elif isinstance(target, tuple):
            name, (dim, offset, size) = target
            assert dim == 0 and value.shape[0] == size, key
            parts.setdefault(name, []).append((offset, value))
        else:
            parts.setdefault(target, []).append((0, value))
    state = {}
    for name, pieces in parts.items():
        pieces.sort(key=lambda p: p[0])
        offsets = [p[0] for p in pieces]
        assert offsets == [sum(p[1].shape[0] for p in pieces[:i]) for i in range(len(pieces))], name  # no gaps
        state[name] = torch.cat([p[1] for p in pieces])
    return state


def comfy_lora_key_map(mapping: dict) -> dict[str, object]:
    """``model_lora_keys_unet`` for a Flux model, diffusers part: ``transformer.<name>`` -> BFL key (or slice)."""
    return {f"transformer.{k[:-len('.weight')]}": v for k, v in mapping.items() if k.endswith(".weight")}


def test_saved_keys_map_onto_comfyuis_flux_lora_key_map_with_matching_shapes(setup, trained):
    """Every saved module is a ``transformer.*`` key of ComfyUI's FLUX map; ``lora_B @ lora_A`` has exactly the
    shape of the (sliced) BFL weight; and patching the BFL weights the way ComfyUI does, then mapping back,
    gives the trained transformer's output."""
    from safetensors.torch import load_file

    result, handle = trained["result"], setup["handle"]
    config = handle.pipe.transformer.config
    hidden = config.num_attention_heads * config.attention_head_dim
    mapping = comfy_flux_to_diffusers(config.num_layers, config.num_single_layers, hidden)
    clean = training_unet(handle)
    bfl = bfl_state_dict(clean.state_dict(), mapping)
    assert bfl["diffusion_model.double_blocks.0.img_attn.qkv.weight"].shape == (3 * hidden, hidden)
    assert bfl["diffusion_model.single_blocks.0.linear1.weight"].shape == (7 * hidden, hidden)
    key_map = comfy_lora_key_map(mapping)
    saved = load_file(str(result.save("flux_keys")))
    modules = {k.rsplit(".", 1)[0].removesuffix(".lora_A").removesuffix(".lora_B") for k in saved}
    assert len(modules) == len(result.lora) // 2 and modules <= set(key_map), sorted(modules - set(key_map))[:5]
    patched = {k: v.clone() for k, v in bfl.items()}
    for module in modules:  # ComfyUI reads exactly these three keys per module
        down, up = saved[f"{module}.lora_A.weight"], saved[f"{module}.lora_B.weight"]
        alpha = float(saved[f"{module}.alpha"].item())
        target = key_map[module]
        assert not isinstance(target, tuple) or target[1] is not None, module  # no norm_out (a swapped weight)
        name, (dim, offset, size) = target if isinstance(target, tuple) else (target, (0, 0, None))
        weight = bfl[name].narrow(dim, offset, size if size is not None else bfl[name].shape[dim])
        assert (up @ down).shape == weight.shape, module
        patched[name].narrow(dim, offset, weight.shape[dim]).add_((alpha / down.shape[0]) * (up @ down))
    back = {}
    for key, target in mapping.items():  # BFL -> diffusers, as ComfyUI's model would compute with it
        if key not in clean.state_dict():
            continue
        if isinstance(target, tuple) and target[1] is None:
            back[key] = target[2](patched[target[0]])  # the swap is its own inverse
            continue
        name, (dim, offset, size) = target if isinstance(target, tuple) else (target, (0, 0, None))
        back[key] = patched[name] if size is None else patched[name].narrow(dim, offset, size)
    clean.load_state_dict(back, strict=True)
    torch.testing.assert_close(transformer_output(clean), transformer_output(result.unet), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------- Kontext, stage 2, errors

def test_kontext_trains_saves_and_reloads(setup):
    from comfyui_backdrop.runtime.inpainting.loader import load_pipeline
    from comfyui_backdrop.runtime.inpainting.loras import activated, add_lora

    handle = load_pipeline(KONTEXT)
    result = train_lora(handle, setup["entries"], tiny_config(steps=3))
    assert result.guidance == 2.5 and all(np.isfinite(result.losses))
    path = result.save("kontext_bg")
    assert read_metadata(path)["backdrop.unet_in_channels"] == "64"
    with activated(add_lora(handle, path.name, 1.0)) as pipe:
        got = transformer_output(pipe.transformer, in_channels=64)
    expected = transformer_output(result.unet, in_channels=64)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    with activated(handle) as pipe:
        assert (transformer_output(pipe.transformer, in_channels=64) - expected).abs().max() > 1e-4


def test_stage2_continues_from_the_saved_flux_lora(setup, trained):
    from comfyui_backdrop.runtime.training.stage2 import stage2_config

    path = trained["result"].save("flux_stage1")
    frozen = train_lora(setup["handle"], setup["entries"][:1],
                        stage2_config(tiny_config(), path, steps=1, learning_rate=0.0))
    assert (frozen.rank, frozen.alpha) == (4, 2.0)
    for key, value in trained["result"].lora.items():
        torch.testing.assert_close(frozen.lora[key], value, atol=0, rtol=0)


def test_flux_settings_are_checked(setup):
    with pytest.raises(InvalidInputError, match="multiples of 16"):
        train_lora(setup["handle"], setup["entries"], tiny_config(resolution=72))
    with pytest.raises(InvalidInputError, match="guidance must be"):
        train_lora(setup["handle"], setup["entries"], tiny_config(guidance=-1.0))


def test_flux_training_works_under_inference_mode(setup):
    """ComfyUI loads and runs nodes inside torch.inference_mode(): the transformer copy must not hold
    inference tensors."""
    from comfyui_backdrop.runtime.inpainting.loader import load_pipeline
    from comfyui_backdrop.runtime.models import free_models

    free_models()
    with torch.inference_mode():
        handle = load_pipeline(FILL)
        assert next(handle.pipe.transformer.parameters()).is_inference()
        result = train_lora(handle, setup["entries"], tiny_config(steps=2))
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    assert any(v.abs().sum() > 0 for k, v in result.lora.items() if "lora_B" in k)
    free_models()


def test_gradient_checkpointing_gives_the_same_flux_training(setup):
    """The GPU memory saver, forced on the CPU: same losses and LoRA as without it."""
    plain = train_lora(setup["handle"], setup["entries"], tiny_config(steps=2, gradient_checkpointing=False))
    saved = train_lora(setup["handle"], setup["entries"], tiny_config(steps=2, gradient_checkpointing=True))
    assert saved.losses == pytest.approx(plain.losses, abs=1e-6)
    for key, value in plain.lora.items():
        torch.testing.assert_close(saved.lora[key], value, atol=1e-6, rtol=0)
