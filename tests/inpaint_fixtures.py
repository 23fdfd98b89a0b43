"""Tiny SD1.5-style and SDXL-style inpainting pipelines built from the real diffusers/transformers classes.

Each is saved twice, the two ways users have models: as a diffusers folder, and as a single-file
checkpoint in the original LDM layout (written by ``to_ldm``, the inverse of diffusers' single-file
converters). Sizes follow the rules the single-file probe uses for what shapes cannot tell: SD1.x
has 8 heads per attention, SDXL and CLIP use 64-wide heads (so 1 head at these widths). SDXL's two
text encoders differ in width, as in the real model (diffusers tells them apart by width).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TOKENIZER_VOCAB = ["<|startoftext|>", "<|endoftext|>", "!"]
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789,.'-"


def write_tiny_tokenizer(folder: Path) -> Path:
    """A character-level CLIP BPE vocabulary (vocab.json + merges.txt) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = list(TOKENIZER_VOCAB) + [c for c in _CHARS if c != "!"] + [c + "</w>" for c in _CHARS]
    merges = ["t h", "th e</w>", "a n", "an d</w>"]
    tokens += ["th", "the</w>", "an", "and</w>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


def _tokenizer(folder: Path, pad: str):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=pad,
                         model_max_length=77)


def _text_config(vocab: int, act: str, hidden: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=1, max_position_embeddings=77, hidden_act=act,
                          projection_dim=hidden, bos_token_id=0, eos_token_id=2, pad_token_id=1)


def _vae(scaling: float):
    from diffusers import AutoencoderKL

    # Four levels, so latents are 1/8 of the image as in the real models.
    return AutoencoderKL(block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=1,
                         norm_num_groups=32, sample_size=32, scaling_factor=scaling)


def build_tiny_pipeline(family: str, tokenizer_dir: Path, in_channels: int = 9, seed: int = 0):
    """A random-weight inpainting pipeline of the given family ("sd15" or "sdxl")."""
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionXLInpaintPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = _tokenizer(tokenizer_dir, "<|endoftext|>")
    vocab = len(tokenizer)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    if family == "sd15":
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, in_channels=in_channels, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
            attention_head_dim=8, norm_num_groups=32, sample_size=16)
        return StableDiffusionInpaintPipeline(
            vae=_vae(0.18215), text_encoder=CLIPTextModel(_text_config(vocab, "quick_gelu")),
            tokenizer=tokenizer, unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, in_channels=in_channels, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=96,
        attention_head_dim=(1, 1), transformer_layers_per_block=(1, 2), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=112,
        norm_num_groups=32, sample_size=16)
    return StableDiffusionXLInpaintPipeline(
        vae=_vae(0.13025), text_encoder=CLIPTextModel(_text_config(vocab, "quick_gelu")),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(vocab, "gelu", hidden=64)), tokenizer=tokenizer,
        tokenizer_2=_tokenizer(tokenizer_dir, "!"), unet=unet, scheduler=scheduler,
        requires_aesthetics_score=False, force_zeros_for_empty_prompt=True)


# ------------------------------------------------------------------------------- diffusers -> LDM layout

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    cfg = unet.config
    per = cfg.layers_per_block + 1
    names: dict[str, str] = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
                             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
                             "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
                             "mid_block.resnets.1": "middle_block.2"}
    for b in range(len(cfg.block_out_channels)):
        for j in range(cfg.layers_per_block):
            names[f"down_blocks.{b}.resnets.{j}"] = f"input_blocks.{1 + b * per + j}.0"
            names[f"down_blocks.{b}.attentions.{j}"] = f"input_blocks.{1 + b * per + j}.1"
        names[f"down_blocks.{b}.downsamplers.0.conv"] = f"input_blocks.{(b + 1) * per}.0.op"
        has_attn = "CrossAttn" in cfg.up_block_types[b]
        for j in range(per):
            names[f"up_blocks.{b}.resnets.{j}"] = f"output_blocks.{b * per + j}.0"
            names[f"up_blocks.{b}.attentions.{j}"] = f"output_blocks.{b * per + j}.1"
        names[f"up_blocks.{b}.upsamplers.0.conv"] = f"output_blocks.{b * per + per - 1}.{2 if has_attn else 1}.conv"
    out = {}
    for key, value in unet.state_dict().items():
        module, leaf = _split_module(key, names)
        if ".resnets." in module or module.startswith("mid_block.resnets"):
            head, _, rest = leaf.partition(".")
            leaf = f"{_RESNET.get(head, head)}.{rest}"
        out["model.diffusion_model." + names[module] + "." + leaf] = value
    return out


def _split_module(key: str, names: dict[str, str]) -> tuple[str, str]:
    """The longest mapped module prefix of ``key`` and the rest of the key."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:cut])
        if module in names:
            return module, ".".join(parts[cut:])
    raise KeyError(key)


def _vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    levels = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        new = key.replace("conv_norm_out", "norm_out")
        for side in ("encoder", "decoder"):
            new = new.replace(f"{side}.mid_block.resnets.0", f"{side}.mid.block_1")
            new = new.replace(f"{side}.mid_block.resnets.1", f"{side}.mid.block_2")
            if f"{side}.mid_block.attentions.0." in new:
                rest = new.split(f"{side}.mid_block.attentions.0.")[1]
                module, _, leaf = rest.rpartition(".")
                new = f"{side}.mid.attn_1.{_VAE_ATTN[module]}.{leaf}"
                if value.dim() == 2:
                    value = value[:, :, None, None]
        for i in range(levels):
            new = new.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
            new = new.replace(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
            new = new.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{levels - 1 - i}.block.")
            new = new.replace(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample.")
        out["first_stage_model." + new.replace("conv_shortcut", "nin_shortcut")] = value
    return out


def _clip_to_ldm(model, prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + ("" if k.startswith("text_model.") else "text_model.") + k: v
            for k, v in model.state_dict().items()}


def _open_clip_to_ldm(model, prefix: str) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    out = {prefix + "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
           prefix + "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
           prefix + "ln_final.weight": state["text_model.final_layer_norm.weight"],
           prefix + "ln_final.bias": state["text_model.final_layer_norm.bias"],
           prefix + "text_projection": state["text_projection.weight"].T.contiguous()}
    renames = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
               "self_attn.out_proj": "attn.out_proj"}
    for i in range(model.config.num_hidden_layers):
        src = f"text_model.encoder.layers.{i}."
        dst = f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat(
                [state[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
            for old, new in renames.items():
                out[dst + f"{new}.{kind}"] = state[src + f"{old}.{kind}"]
    return out


def to_ldm(pipe) -> dict[str, torch.Tensor]:
    """The pipeline's weights as an original-layout single-file checkpoint."""
    state = {**_unet_to_ldm(pipe.unet), **_vae_to_ldm(pipe.vae)}
    if hasattr(pipe, "text_encoder_2"):
        state.update(_clip_to_ldm(pipe.text_encoder, "conditioner.embedders.0.transformer."))
        state.update(_open_clip_to_ldm(pipe.text_encoder_2, "conditioner.embedders.1.model."))
    else:
        state.update(_clip_to_ldm(pipe.text_encoder, "cond_stage_model.transformer."))
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def save_single_file(pipe, path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(to_ldm(pipe), str(path))
    return path


# ------------------------------------------------------------------------------------------------ LoRAs

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "conv_shortcut", "time_emb_proj", "linear_1", "linear_2"]


def build_lora_state(pipe, seed: int, rank: int = 4) -> dict[str, torch.Tensor]:
    """A random (non-zero) peft LoRA over every UNet layer kind, in diffusers/peft format (``unet.`` keys)."""
    import copy

    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = copy.deepcopy(pipe.unet)
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS, init_lora_weights=False))
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.mul_(0.5)
    return {"unet." + k: v.detach().clone() for k, v in get_peft_model_state_dict(unet).items()}


def to_kohya(state: dict[str, torch.Tensor], rank: int = 4) -> dict[str, torch.Tensor]:
    """The same LoRA in the kohya/ComfyUI layout (``lora_unet_<module>.lora_down/lora_up`` + alpha)."""
    out = {}
    for key, value in state.items():
        module, role = key.removeprefix("unet.").rsplit(".lora_", 1)
        base = "lora_unet_" + module.replace(".", "_")
        out[f"{base}.{'lora_down' if role.startswith('A') else 'lora_up'}.weight"] = value
        out[f"{base}.alpha"] = torch.tensor(float(rank))
    return out


def build_inpaint_models(root: Path) -> dict[str, Path]:
    """models/{checkpoints,diffusers,loras} with tiny SD1.5/SDXL inpainting models, a 4-channel SD1.5, and LoRAs."""
    from safetensors.torch import save_file

    for kind in ("checkpoints", "diffusers", "loras"):
        (root / kind).mkdir(parents=True, exist_ok=True)
    tokenizer = write_tiny_tokenizer(root.parent / "clip_tokenizer")
    sd15 = build_tiny_pipeline("sd15", tokenizer, seed=0)
    sd15.save_pretrained(root / "diffusers" / "tiny-sd15-inpaint")
    save_single_file(sd15, root / "checkpoints" / "tiny-sd15-inpaint.safetensors")
    save_single_file(build_tiny_pipeline("sd15", tokenizer, in_channels=4, seed=1),
                     root / "checkpoints" / "tiny-sd15-base.safetensors")
    sdxl = build_tiny_pipeline("sdxl", tokenizer, seed=2)
    save_single_file(sdxl, root / "checkpoints" / "tiny-sdxl-inpaint.safetensors")
    lora_a, lora_b = build_lora_state(sd15, seed=10), build_lora_state(sd15, seed=11)
    save_file(lora_a, str(root / "loras" / "style_a.safetensors"))
    save_file(to_kohya(lora_a), str(root / "loras" / "style_a_kohya.safetensors"))
    save_file(lora_b, str(root / "loras" / "style_b.safetensors"))
    save_file(build_lora_state(sdxl, seed=12), str(root / "loras" / "sdxl_only.safetensors"))
    return {"root": root, "tokenizer": tokenizer}
