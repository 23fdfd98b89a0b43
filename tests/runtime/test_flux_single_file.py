"""FLUX.1 Fill / Kontext from ComfyUI-style single files: the same pixels as from the diffusers folder."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_backdrop.runtime.errors import InvalidInputError, InvalidModelError, MissingModelError
from comfyui_backdrop.runtime.inpainting.generate import InpaintSettings, inpaint_backgrounds
from comfyui_backdrop.runtime.inpainting.loader import available_models, default_cfg, load_pipeline
from comfyui_backdrop.runtime.models import ModelLocator, set_locator
from tests.fixtures.flux_single_file_fixtures import CHECKPOINT_FILE, FILL_FILE, KONTEXT_FILE
from tests.fixtures.images import studio_product_photo

FAST = {"prompt": "a marble table, soft light", "steps": 2, "resolution": 128, "cfg": 30.0, "variations": 2,
        "seed": 3}


@pytest.fixture(scope="module")
def photo():
    image, mask = studio_product_photo(77, 101, seed=5)
    return image.astype(np.float32) / 255.0, mask.astype(np.float32)


def run(handle, photo, **overrides):
    image, mask = photo
    return np.stack(inpaint_backgrounds(handle, [image], [mask], InpaintSettings(**{**FAST, **overrides})).images)


def partial_root(tmp_path, flux_sf_root, files: dict[str, str]) -> ModelLocator:
    """A models dir holding copies of some of the tiny files: {"<kind>/<name>": "<kind>/<source name>"}."""
    root = tmp_path / "models"
    for target, source in files.items():
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(flux_sf_root["root"] / source, root / target)
    return ModelLocator.from_models_dir(root)


@pytest.mark.parametrize(("single", "folder", "family", "cfg"), [
    (f"diffusion_models/{FILL_FILE}", "diffusers/tiny-flux-fill", "flux-fill", 30.0),
    (f"diffusion_models/{KONTEXT_FILE}", "diffusers/tiny-flux-kontext", "flux-kontext", 2.5),  # prefixed BFL keys
    (f"checkpoints/{CHECKPOINT_FILE}", "diffusers/tiny-flux-fill", "flux-fill", 30.0),  # all-in-one
])
def test_single_files_give_the_diffusers_folders_pixels(flux_sf, photo, single, folder, family, cfg):
    handle = load_pipeline(single, device="cpu")
    reference = load_pipeline(folder, device="cpu")
    assert handle.family == family and type(handle.pipe) is type(reference.pipe)
    assert default_cfg(single) == cfg
    config, expected = dict(handle.denoiser.config), dict(reference.denoiser.config)
    for key in ("in_channels", "num_layers", "num_single_layers", "attention_head_dim", "num_attention_heads",
                "joint_attention_dim", "pooled_projection_dim", "guidance_embeds", "axes_dims_rope"):
        assert config[key] == expected[key], key
    out, ref = run(handle, photo, cfg=cfg), run(reference, photo, cfg=cfg)
    assert np.array_equal(out, ref)  # bit-exact: same weights, same configs, same tokenizers
    image, mask = photo
    product = mask >= 0.5
    for picture in out:
        assert np.array_equal(picture[product], image[product])
    assert not np.array_equal(out[0], out[1])


def test_the_new_folders_are_listed_and_the_cache_key_covers_every_file(flux_sf, flux_sf_root, tmp_path):
    assert {f"diffusion_models/{FILL_FILE}", f"diffusion_models/{KONTEXT_FILE}",
            f"checkpoints/{CHECKPOINT_FILE}"} <= set(available_models())
    first = load_pipeline(f"diffusion_models/{FILL_FILE}", device="cpu")
    assert load_pipeline(f"diffusion_models/{FILL_FILE}", device="cpu").pipe is first.pipe  # cached
    # the same transformer with another T5 file (one weight changed) is another pipeline with another fingerprint
    locator = partial_root(tmp_path, flux_sf_root, {
        f"diffusion_models/{FILL_FILE}": f"diffusion_models/{FILL_FILE}",
        "text_encoders/clip_l.safetensors": "text_encoders/clip_l.safetensors",
        "vae/ae.safetensors": "vae/ae.safetensors", "diffusers/tiny-flux-fill/tokenizer_2/tokenizer.json":
            "diffusers/tiny-flux-fill/tokenizer_2/tokenizer.json",
        "diffusers/tiny-flux-fill/tokenizer_2/tokenizer_config.json":
            "diffusers/tiny-flux-fill/tokenizer_2/tokenizer_config.json"})
    t5 = load_file(str(flux_sf_root["root"] / "text_encoders" / "t5xxl_fp16.safetensors"))
    t5["shared.weight"][0, 0] += 1.0
    save_file(t5, str(locator.folders("text_encoders")[0] / "t5_other.safetensors"))
    set_locator(locator)
    other = load_pipeline(f"diffusion_models/{FILL_FILE}", device="cpu")
    assert other.pipe is not first.pipe and other.fingerprint != first.fingerprint
    assert other.pipe.transformer is not first.pipe.transformer


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_bf16_and_fp8_files_are_upcast_to_the_run_dtype(flux_sf, flux_sf_root, tmp_path, monkeypatch, photo, dtype):
    root = tmp_path / "models"
    for kind in ("diffusion_models", "text_encoders", "vae"):
        (root / kind).mkdir(parents=True)
    tag = "bf16" if dtype == torch.bfloat16 else "fp8_e4m3fn"
    source = flux_sf_root["root"]
    transformer = load_file(str(source / "diffusion_models" / FILL_FILE))
    save_file({k: v.to(dtype) for k, v in transformer.items()},
              str(root / "diffusion_models" / f"fill_{tag}.safetensors"))
    t5 = load_file(str(source / "text_encoders" / "t5xxl_fp16.safetensors"))
    save_file({k: v.to(dtype) for k, v in t5.items()}, str(root / "text_encoders" / f"t5xxl_{tag}.safetensors"))
    shutil.copyfile(source / "text_encoders" / "clip_l.safetensors", root / "text_encoders" / "clip_l.safetensors")
    shutil.copyfile(source / "vae" / "ae.safetensors", root / "vae" / "ae.safetensors")
    monkeypatch.setenv("BACKDROP_T5_TOKENIZER",
                       str(flux_sf_root["root"] / "diffusers" / "tiny-flux-fill" / "tokenizer_2"))
    set_locator(ModelLocator.from_models_dir(root))
    handle = load_pipeline(f"diffusion_models/fill_{tag}.safetensors", device="cpu")
    assert handle.dtype == torch.float32
    loaded = handle.pipe.transformer.state_dict()
    reference = flux_sf_root["fill"].transformer.state_dict()
    for key in ("x_embedder.weight", "single_transformer_blocks.1.proj_mlp.weight",
                "transformer_blocks.0.attn.to_k.bias"):
        assert loaded[key].dtype == torch.float32
        assert torch.equal(loaded[key], reference[key].to(dtype).float())  # exactly the stored values, upcast
    encoder = handle.pipe.text_encoder_2.state_dict()["encoder.block.0.layer.0.SelfAttention.q.weight"]
    original = flux_sf_root["fill"].text_encoder_2.state_dict()["encoder.block.0.layer.0.SelfAttention.q.weight"]
    assert torch.equal(encoder, original.to(dtype).float())
    out = run(handle, photo)
    image, mask = photo
    assert np.isfinite(out).all() and np.array_equal(out[0][mask >= 0.5], image[mask >= 0.5])


def test_comfyui_scaled_fp8_files_are_unscaled(flux_sf, flux_sf_root, tmp_path):
    from comfyui_backdrop.runtime.inpainting.flux_single_file import cast_state

    weight = torch.randn(8, 4)
    scale = torch.tensor(0.25)
    stored = {"a.weight": (weight / scale).to(torch.float8_e4m3fn), "a.scale_weight": scale,
              "a.bias": torch.ones(8, dtype=torch.bfloat16), "scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    out = cast_state(stored, torch.float32)
    assert set(out) == {"a.weight", "a.bias"}
    assert torch.equal(out["a.weight"], stored["a.weight"].float() * 0.25)
    assert torch.allclose(out["a.weight"], weight, rtol=0.07, atol=0.02)  # fp8's 3-bit mantissa


def test_a_missing_text_encoder_names_the_folder(flux_sf, flux_sf_root, tmp_path):
    set_locator(partial_root(tmp_path, flux_sf_root, {f"diffusion_models/{FILL_FILE}": f"diffusion_models/{FILL_FILE}",
                                                 "vae/ae.safetensors": "vae/ae.safetensors"}))
    with pytest.raises(MissingModelError) as err:
        load_pipeline(f"diffusion_models/{FILL_FILE}", device="cpu")
    text = str(err.value)
    assert "CLIP-L text encoder" in text and "models/text_encoders" in text and "clip_l.safetensors" in text
    assert "Nothing is downloaded" in text


def test_two_fitting_t5_files_are_listed_unless_one_is_named(flux_sf, flux_sf_root, tmp_path, monkeypatch):
    t5 = "text_encoders/t5xxl_fp16.safetensors"
    set_locator(partial_root(tmp_path, flux_sf_root, {
        f"unet/{FILL_FILE}": f"diffusion_models/{FILL_FILE}", "text_encoders/clip_l.safetensors":
            "text_encoders/clip_l.safetensors", "text_encoders/t5xxl_fp16.safetensors": t5,
        "clip/t5xxl_fp8_e4m3fn.safetensors": t5, "vae/ae.safetensors": "vae/ae.safetensors",
        "text_encoders/vae_in_the_wrong_folder.safetensors": "vae/ae.safetensors"}))
    monkeypatch.setenv("BACKDROP_T5_TOKENIZER",
                       str(flux_sf_root["root"] / "diffusers" / "tiny-flux-fill" / "tokenizer_2"))
    with pytest.raises(InvalidInputError) as err:
        load_pipeline(f"unet/{FILL_FILE}", device="cpu")  # the legacy folder name
    text = str(err.value)
    assert "text_encoders/t5xxl_fp16.safetensors" in text and "clip/t5xxl_fp8_e4m3fn.safetensors" in text
    assert "--text-encoders" in text
    handle = load_pipeline(f"unet/{FILL_FILE}", device="cpu", text_encoders=["t5xxl_fp8_e4m3fn.safetensors"])
    assert handle.family == "flux-fill"
    with pytest.raises(InvalidInputError, match="two T5-XXL"):
        load_pipeline(f"unet/{FILL_FILE}", device="cpu",
                      text_encoders=["t5xxl_fp16.safetensors", "clip/t5xxl_fp8_e4m3fn.safetensors"])
    with pytest.raises(InvalidModelError, match="is not a CLIP-L text encoder or T5-XXL text encoder"):
        load_pipeline(f"unet/{FILL_FILE}", device="cpu", text_encoders=["vae_in_the_wrong_folder.safetensors"])


def test_truncated_and_mislabelled_files_are_clear_errors(flux_sf, flux_sf_root, tmp_path):
    locator = partial_root(tmp_path, flux_sf_root, {
        f"diffusion_models/{FILL_FILE}": f"diffusion_models/{FILL_FILE}",
        "diffusion_models/flux1-dev.safetensors": f"diffusion_models/{KONTEXT_FILE}",
        "vae/ae.safetensors": "vae/ae.safetensors"})
    set_locator(locator)
    broken = locator.resolve("diffusion_models", FILL_FILE)
    broken.write_bytes(broken.read_bytes()[:1000])
    with pytest.raises(InvalidModelError, match=f"{FILL_FILE} could not be read as a safetensors file"):
        load_pipeline(f"diffusion_models/{FILL_FILE}", device="cpu")
    (locator.folders("diffusion_models")[0] / "garbage.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(InvalidModelError, match="garbage.safetensors could not be read"):
        load_pipeline("diffusion_models/garbage.safetensors", device="cpu")
    with pytest.raises(InvalidModelError, match="name containing 'kontext'"):  # 64 channels: Kontext or [dev]?
        load_pipeline("diffusion_models/flux1-dev.safetensors", device="cpu")
    not_flux = locator.folders("diffusion_models")[0] / "vae_by_mistake.safetensors"
    shutil.copyfile(flux_sf_root["root"] / "vae" / "ae.safetensors", not_flux)
    with pytest.raises(InvalidModelError, match="is not a FLUX.1 transformer"):
        load_pipeline("diffusion_models/vae_by_mistake.safetensors", device="cpu")
