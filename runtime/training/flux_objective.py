"""The FLUX.1 Fill / Kontext training objective: rectified flow on packed latent tokens, background-weighted.

A batch is built the way diffusers' pipelines build the transformer's input at inference, so a LoRA
trained here sees what it will see when it runs:

- latents: ``(vae.encode(image).mode() - shift_factor) * scaling_factor``, packed 2x2 into tokens
  (``_pack_latents``), positions from ``_prepare_latent_image_ids``;
- FLUX.1 Fill: ``FluxFillPipeline.prepare_mask_latents`` packs the masked image's latents (64 channels) and the
  pixel mask (8x8 pixels per latent, 2x2 latents per token: 256 channels); the input is
  ``cat(noisy, masked_latents, mask)`` = 384 channels, in the pipeline's order;
- FLUX.1 Kontext: the reference image's tokens (ids with first coordinate 1) follow the noisy tokens in the
  sequence, as in ``FluxKontextInpaintPipeline``; only the first part of the output is the prediction. The
  reference is the masked image (the product, background blanked): with the photo itself as reference the
  target would be a copy of the reference and the LoRA would learn to copy.

Rectified flow as in diffusers' ``train_dreambooth_lora_flux.py``: ``x_t = (1 - t) * x0 + t * noise``,
target ``noise - x0``; ``u`` from ``compute_density_for_timestep_sampling("logit_normal", mean 0, std 1)``
(the SD3 paper's choice, more steps at middle noise levels), mapped to the scheduler's training timesteps
and sigmas; the transformer gets ``timestep / 1000`` and the guidance embedding the configured guidance.
The squared error is weighted per latent pixel by the same background/product weights as the SD path
(the mask resized to the latent grid, then packed like the latents).
"""

from __future__ import annotations

from typing import Any

TIMESTEP_SAMPLING = "logit_normal"
LOGIT_MEAN, LOGIT_STD = 0.0, 1.0
MAX_SEQUENCE_LENGTH = 512  # what FluxFillPipeline / FluxKontextInpaintPipeline use by default at inference


def flux_scheduler(handle) -> Any:
    """A fresh training copy of the pipeline's flow-match scheduler (1000 training timesteps, no inference shift)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(handle.pipe.scheduler.config)


def flux_text_conditioning(pipe, handle, captions: set[str]) -> dict[str, dict]:
    """``encode_prompt`` once per caption (text encoders frozen): T5 embeddings, pooled CLIP and text ids."""
    import torch

    out = {}
    with torch.no_grad():
        for caption in sorted(captions):
            embeds, pooled, text_ids = pipe.encode_prompt(prompt=caption, prompt_2=None, device=handle.device,
                                                          num_images_per_prompt=1,
                                                          max_sequence_length=MAX_SEQUENCE_LENGTH)
            out[caption] = {"embeds": embeds, "pooled": pooled, "text_ids": text_ids}
    return out


def _pack(pipe, latents):
    b, c, h, w = latents.shape
    return pipe._pack_latents(latents, b, c, h, w)


def make_flux_batch(handle, image, mask, captions: list[str], conditioning: dict) -> dict:
    """Encode a pixel batch (``image`` in -1..1, ``mask`` 1 = background to paint) into the transformer's inputs."""
    import torch
    import torch.nn.functional as F

    pipe, vae = handle.pipe, handle.pipe.vae
    shift, scale = float(vae.config.shift_factor), float(vae.config.scaling_factor)
    batch_size, _, height, width = image.shape
    with torch.no_grad():
        latents = (vae.encode(image).latent_dist.mode() - shift) * scale
        masked = vae.encode(image * (mask < 0.5)).latent_dist.mode()  # raw: prepare_mask_latents shifts and scales
    channels, lh, lw = latents.shape[1:]
    img_ids = pipe._prepare_latent_image_ids(batch_size, lh // 2, lw // 2, handle.device, latents.dtype)
    batch = {"latents": latents, "img_ids": img_ids, "condition": None, "reference": None}
    if handle.family == "flux-fill":
        packed_mask, masked_latents = pipe.prepare_mask_latents(mask, masked, batch_size, channels, 1, height, width,
                                                                latents.dtype, handle.device, None)
        batch["condition"] = torch.cat((masked_latents, packed_mask), dim=-1)
    else:
        reference = (masked - shift) * scale
        ref_ids = pipe._prepare_latent_image_ids(batch_size, lh // 2, lw // 2, handle.device, latents.dtype)
        ref_ids[..., 0] = 1
        batch["reference"] = _pack(pipe, reference)
        batch["img_ids"] = torch.cat([img_ids, ref_ids], dim=0)
    latent_mask = F.interpolate(mask, size=(lh, lw))  # the SD path's per-latent-pixel weights
    batch["mask"] = _pack(pipe, latent_mask.expand(-1, channels, -1, -1).contiguous())
    batch["embeds"] = torch.cat([conditioning[c]["embeds"] for c in captions])
    batch["pooled"] = torch.cat([conditioning[c]["pooled"] for c in captions])
    batch["text_ids"] = conditioning[captions[0]]["text_ids"]
    return batch


def flux_batch_loss(transformer, batch: dict, generator, scheduler, handle, background_weight: float,
                    product_weight: float, guidance: float, amp_dtype):
    """The background-weighted rectified-flow loss of one batch; noise and timesteps come from ``generator``."""
    import torch
    from diffusers.training_utils import compute_density_for_timestep_sampling

    pipe, device = handle.pipe, handle.device
    latents = batch["latents"]
    noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
    u = compute_density_for_timestep_sampling(TIMESTEP_SAMPLING, latents.shape[0], logit_mean=LOGIT_MEAN,
                                              logit_std=LOGIT_STD, generator=generator)
    indices = (u * scheduler.config.num_train_timesteps).long().clamp_(0, len(scheduler.timesteps) - 1)
    timesteps = scheduler.timesteps[indices].to(device)
    sigmas = scheduler.sigmas[indices].to(device, torch.float32).view(-1, 1, 1, 1)
    noisy = ((1.0 - sigmas) * latents.float() + sigmas * noise.float()).to(latents.dtype)
    tokens = _pack(pipe, noisy)
    target = _pack(pipe, noise.float() - latents.float())
    if batch["condition"] is not None:
        hidden = torch.cat((tokens, batch["condition"]), dim=2)
    elif batch["reference"] is not None:
        hidden = torch.cat((tokens, batch["reference"]), dim=1)
    else:
        hidden = tokens
    guidance_in = None
    if transformer.config.guidance_embeds:
        guidance_in = torch.full((latents.shape[0],), float(guidance), device=device, dtype=torch.float32)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        prediction = transformer(hidden_states=hidden.to(handle.dtype), timestep=(timesteps / 1000).to(handle.dtype),
                                 guidance=guidance_in, pooled_projections=batch["pooled"],
                                 encoder_hidden_states=batch["embeds"], txt_ids=batch["text_ids"],
                                 img_ids=batch["img_ids"], return_dict=False)[0]
    prediction = prediction[:, : tokens.shape[1]]
    weight = background_weight * batch["mask"] + product_weight * (1 - batch["mask"])
    error = (prediction.float() - target.float()) ** 2 * weight
    return error.sum() / weight.sum().clamp_min(1e-8)
