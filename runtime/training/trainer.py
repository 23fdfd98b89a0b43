"""Stage-1 (and stage-2) LoRA training for background inpainting on a loaded inpainting pipeline.

Each step takes a dataset image, augments its product mask into a regenerate-mask (1 = background),
VAE-encodes the image and the masked image, noises the image latents and trains a peft LoRA on all
UNet layers to predict the noise. A 9-channel UNet sees ``[noisy latents, mask, masked-image latents]``
as in diffusers' inpainting pipeline; a 4-channel UNet trains plain denoising. The loss is a
per-pixel weighted MSE: ``background_weight`` on the regenerate region, ``product_weight`` elsewhere.

FLUX.1 Fill and Kontext train the same way on every block of their transformer (``ALL_FLUX_TARGETS``),
with the rectified-flow objective of ``flux_objective`` (same dataset, mask augmentation, loss weights,
checkpoints, progress and interruption); their LoRA is saved in the diffusers ``transformer.*`` layout.

All randomness (sampling, augmentation, caption dropout, noise, timesteps) comes from one CPU
``torch.Generator``, saved in checkpoints, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, InvalidModelError
from ..progress import ProgressFn, report
from .augment import AUGMENTATIONS, background_mask, drop_caption
from .checkpoints import restore_checkpoint, save_checkpoint
from .dataset import dataset_hash
from .lora_setup import attach_lora, default_targets, load_lora_state, lora_state

LossFn = Callable[[int, float], None]
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")


@dataclass
class TrainConfig:
    """Training settings. ``checkpoint_every`` 0 saves checkpoints only on interruption."""

    steps: int = 1000
    rank: int = 16
    alpha: float | None = None
    learning_rate: float = 1e-4
    weight_decay: float = 1e-2
    batch_size: int = 1
    resolution: int = 512
    seed: int = 0
    background_weight: float = 1.0
    product_weight: float = 0.1
    caption_dropout: float = 0.1
    mask_augmentations: tuple[str, ...] = AUGMENTATIONS
    targets: list[str] | None = None  # None: all layers of the model's denoiser (ALL_UNET_TARGETS / ALL_FLUX_TARGETS)
    checkpoint_every: int = 0
    checkpoint_dir: str | None = None
    gradient_checkpointing: bool | None = None  # None: on a GPU only; True/False: always/never
    mixed_precision: str = "auto"  # GPU only: auto = bf16 where supported, else fp16
    max_grad_norm: float = 1.0
    init_lora: str | None = None  # a LoRA file to continue from (stage 2)
    guidance: float | None = None  # FLUX: the guidance embedding's value (None: the family's, 30 Fill / 2.5 Kontext)

    def check(self) -> None:
        if self.steps < 1:
            raise InvalidInputError(f"steps must be at least 1, got {self.steps}")
        if self.batch_size < 1:
            raise InvalidInputError(f"batch size must be at least 1, got {self.batch_size}")
        if self.resolution < 64 or self.resolution % 8:
            raise InvalidInputError(f"resolution must be a multiple of 8 and at least 64, got {self.resolution}")
        if self.background_weight < 0 or self.product_weight < 0 or self.background_weight + self.product_weight == 0:
            raise InvalidInputError("loss weights must be >= 0 and not both 0")
        if not 0 <= self.caption_dropout <= 1:
            raise InvalidInputError(f"caption dropout must be in 0..1, got {self.caption_dropout}")
        unknown = set(self.mask_augmentations) - set(AUGMENTATIONS)
        if unknown:
            raise InvalidInputError(f"unknown mask augmentations {sorted(unknown)}; known: {', '.join(AUGMENTATIONS)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise InvalidInputError(f"mixed precision must be one of {', '.join(MIXED_PRECISION)}")
        if self.guidance is not None and not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise InvalidInputError(f"guidance must be a number >= 0, got {self.guidance}")

    def check_for(self, handle) -> None:
        """``check`` plus what the model's family needs (FLUX: a resolution that is a multiple of 16)."""
        self.check()
        if handle.is_flux and self.resolution % 16:
            raise InvalidInputError(f"FLUX trains at multiples of 16 (an 8x VAE and 2x2 latent patches); "
                                    f"resolution {self.resolution} is not one")

    def targets_for(self, handle) -> list[str]:
        return list(self.targets) if self.targets else default_targets(handle.is_flux)

    def guidance_for(self, handle) -> float:
        from ..inpainting.loader import FAMILY_CFG

        return float(self.guidance if self.guidance is not None else FAMILY_CFG[handle.family])


@dataclass
class TrainResult:
    """The trained UNet (base + LoRA adapter), the adapter weights and the run's record."""

    unet: Any
    lora: dict
    rank: int
    alpha: float
    targets: list[str]
    steps: int
    losses: list[float]
    dataset_hash: str
    base_model: str
    base_fingerprint: str
    family: str
    unet_in_channels: int
    checkpoints: list[Path] = field(default_factory=list)
    guidance: float | None = None  # FLUX: the guidance the transformer was trained with

    def metadata(self, extra: dict | None = None) -> dict[str, str]:
        from .export import build_metadata

        if self.guidance is not None:
            extra = {"guidance": f"{self.guidance:g}", **(extra or {})}
        return build_metadata(base_model=self.base_model, base_fingerprint=self.base_fingerprint, family=self.family,
                              rank=self.rank, alpha=self.alpha, targets=self.targets, steps=self.steps,
                              dataset_hash=self.dataset_hash, unet_in_channels=self.unet_in_channels, extra=extra)

    def save(self, name: str, folder=None, extra: dict | None = None) -> Path:
        """Write the LoRA (kohya/ComfyUI keys for SD, diffusers ``transformer.*`` keys for FLUX, + metadata) to
        models/loras or ``folder``; never overwrites."""
        from .export import save_lora

        layout = "diffusers" if self.family.startswith("flux") else "kohya"
        return save_lora(self.lora, self.alpha, self.metadata(extra), name, folder, layout=layout)


# ----------------------------------------------------------------------------------------------- data

@dataclass
class _Sample:
    pixels: Any  # [3,R,R] in -1..1
    product: np.ndarray  # [R,R] float 0..1
    caption: str
    weight: float


def _square(array: np.ndarray, size: int, interpolation: int) -> np.ndarray:
    import cv2

    h, w = array.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return cv2.resize(np.ascontiguousarray(array[top:top + side, left:left + side]), (size, size),
                      interpolation=interpolation)


def load_samples(entries: list[dict], resolution: int) -> list[_Sample]:
    """Read every manifest entry, centre-cropped to a square and resized to ``resolution``."""
    import cv2
    import torch

    from ..imaging import read_image

    if not entries:
        raise InvalidInputError("the dataset has no entries to train on")
    samples = []
    for entry in entries:
        rgb = read_image(entry["image"]).rgb
        mask = read_image(entry["mask"]).rgb[..., 0]
        if mask.shape != rgb.shape[:2]:
            raise InvalidInputError(f"mask {entry['mask']} does not match the size of {entry['image']}")
        rgb = _square(rgb, resolution, cv2.INTER_AREA)
        mask = _square(mask, resolution, cv2.INTER_LINEAR)
        pixels = torch.from_numpy(rgb).permute(2, 0, 1).float() * 2 - 1
        samples.append(_Sample(pixels, mask.astype(np.float32), str(entry["caption"]), float(entry.get("weight", 1))))
    return samples


# ------------------------------------------------------------------------------------------------ model

def training_unet(handle) -> Any:
    """A private copy of the handle's base UNet (or FLUX transformer), in the handle's dtype, with no LoRA on it
    (the cached pipeline is untouched)."""
    from diffusers import UNet2DConditionModel

    from ..inpainting.loader import UNET_FAMILIES
    from ..inpainting.loras import activated

    if handle.is_flux:
        return _training_transformer(handle)
    if handle.family not in UNET_FAMILIES:
        raise InvalidInputError(f"LoRA training works on SD1.5, SDXL, FLUX.1 Fill and FLUX.1 Kontext pipelines; "
                                f"{handle.name} is {handle.family}")
    with activated(handle.with_loras(())) as pipe:  # unfuses/disables any LoRA of earlier runs
        base = pipe.unet
        state = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if "lora_" not in k}
        unet = UNet2DConditionModel.from_config(base.config)
        unet.load_state_dict(state, strict=True)
    unet.to(device=handle.device)
    return unet if handle.dtype == unet.dtype else unet.to(dtype=handle.dtype)


def _training_transformer(handle) -> Any:
    """The FLUX transformer copy: built on the meta device (no random init of billions of weights), then given
    clones of the base weights."""
    from accelerate import init_empty_weights

    from ..inpainting.loras import activated

    with activated(handle.with_loras(())) as pipe:
        base = pipe.transformer
        state = {k.replace(".base_layer.", "."): v.detach().clone() for k, v in base.state_dict().items()
                 if "lora_" not in k}
        with init_empty_weights():
            transformer = type(base).from_config(base.config)
    transformer.load_state_dict(state, strict=True, assign=True)
    left = [name for name, p in transformer.named_parameters() if p.is_meta]
    if left:
        raise InvalidModelError(f"the FLUX transformer copy has no weights for {left[:3]}")
    transformer.to(device=handle.device)
    return transformer if handle.dtype == transformer.dtype else transformer.to(dtype=handle.dtype)


def _text_conditioning(handle, captions: set[str], resolution: int) -> dict[str, dict]:
    """Prompt embeddings (plus SDXL's pooled embeddings and time ids, FLUX's pooled embeddings and text ids) for
    every caption, computed once."""
    import torch

    from ..inpainting.loras import activated

    out = {}
    if handle.is_flux:
        from .flux_objective import flux_text_conditioning

        with activated(handle.with_loras(())) as pipe:
            return flux_text_conditioning(pipe, handle, captions)
    with torch.no_grad(), activated(handle.with_loras(())) as pipe:
        for caption in sorted(captions):
            if handle.family == "sdxl":
                embeds, _, pooled, _ = pipe.encode_prompt(prompt=caption, device=handle.device,
                                                          num_images_per_prompt=1, do_classifier_free_guidance=False)
                time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]],
                                        device=handle.device, dtype=embeds.dtype)
                out[caption] = {"embeds": embeds, "added": {"text_embeds": pooled, "time_ids": time_ids}}
            else:
                embeds, _ = pipe.encode_prompt(caption, handle.device, 1, False)
                out[caption] = {"embeds": embeds, "added": None}
    return out


def _amp(config: TrainConfig, device) -> Any:
    import torch

    if device.type != "cuda" or config.mixed_precision == "no":
        return None
    if config.mixed_precision == "fp16":
        return torch.float16
    if config.mixed_precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


# ------------------------------------------------------------------------------------------------- train

def train_lora(handle, entries: list[dict], config: TrainConfig, progress: ProgressFn | None = None,
               on_loss: LossFn | None = None, resume_from: str | Path | None = None) -> TrainResult:
    """Train a background-inpainting LoRA on ``handle``'s UNet; returns the trained adapter and its record.

    ``progress(done, total)`` may raise (``Interrupted``) to stop: a checkpoint is saved first when
    ``config.checkpoint_dir`` is set. ``resume_from`` continues a checkpoint of the same base model,
    dataset and settings from its step. Works when called under ``torch.inference_mode()`` (ComfyUI runs
    every node that way) or ``no_grad``: the trained copy is built with autograd on.
    """
    import torch

    with torch.inference_mode(False), torch.enable_grad():
        return _train_lora(handle, entries, config, progress, on_loss, resume_from)


def _train_lora(handle, entries: list[dict], config: TrainConfig, progress: ProgressFn | None,
                on_loss: LossFn | None, resume_from: str | Path | None) -> TrainResult:
    import torch

    config.check_for(handle)
    samples = load_samples(entries, config.resolution)
    data_hash = dataset_hash(entries)
    device = handle.device
    init = _read_init_lora(config.init_lora) if config.init_lora else None
    rank, alpha = (init[1], init[2]) if init else (config.rank, float(config.alpha or config.rank))
    targets = config.targets_for(handle)
    unet = training_unet(handle)
    with torch.random.fork_rng(devices=[]):  # peft draws lora_A's initial weights from the global RNG
        torch.manual_seed(int(config.seed))
        params = attach_lora(unet, rank, alpha, targets)
    if init:
        _load_init_lora(unet, init[0], config.init_lora)
    use_gc = device.type == "cuda" if config.gradient_checkpointing is None else bool(config.gradient_checkpointing)
    if use_gc:
        unet.enable_gradient_checkpointing()
    unet.train()
    amp_dtype = _amp(config, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(int(config.seed))
    losses: list[float] = []
    start = 0
    fingerprint = {"base": handle.fingerprint, "dataset": data_hash, "rank": rank, "alpha": alpha,
                   "targets": targets, "in_channels": handle.unet_in_channels}
    if handle.is_flux:
        fingerprint["guidance"] = config.guidance_for(handle)
    if resume_from is not None:
        start, losses = restore_checkpoint(resume_from, unet, optimizer, generator, scaler, fingerprint)
        if start >= config.steps:
            raise InvalidInputError(f"checkpoint {Path(resume_from).name} is at step {start}; "
                                    f"ask for more than {start} steps to continue training")

    scheduler = _training_scheduler(handle)
    vae = handle.pipe.vae
    scale = float(vae.config.scaling_factor)
    conditioning = _text_conditioning(handle, {s.caption for s in samples} | {""}, config.resolution)
    weights = torch.tensor([s.weight for s in samples], dtype=torch.float64)
    if not bool((weights > 0).any()):
        raise InvalidInputError("every dataset entry has weight 0: nothing to sample")
    checkpoints: list[Path] = []

    def checkpoint(step: int) -> None:
        if config.checkpoint_dir and not (checkpoints and checkpoints[-1].name.startswith(f"checkpoint-{step:06d}")):
            checkpoints.append(save_checkpoint(Path(config.checkpoint_dir), step, unet, optimizer, generator,
                                                scaler, losses, fingerprint, config))

    for step in range(start, config.steps):
        batch = _make_batch(samples, weights, config, generator, handle, vae, scale, conditioning)
        loss = _batch_loss(unet, batch, generator, scheduler, handle, config, amp_dtype)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise InvalidInputError(f"the loss became {value} at step {step + 1}; lower the learning rate")
        losses.append(value)
        if on_loss is not None:
            on_loss(step + 1, value)
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
            checkpoint(step + 1)
        try:
            report(progress, step + 1, config.steps)
        except Exception:
            checkpoint(step + 1)
            raise
    if use_gc:
        unet.disable_gradient_checkpointing()
    unet.eval()
    return TrainResult(unet=unet, lora=lora_state(unet), rank=rank, alpha=alpha, targets=targets,
                       steps=config.steps, losses=losses, dataset_hash=data_hash, base_model=handle.name,
                       base_fingerprint=handle.fingerprint, family=handle.family,
                       unet_in_channels=handle.unet_in_channels, checkpoints=checkpoints,
                       guidance=config.guidance_for(handle) if handle.is_flux else None)


def _training_scheduler(handle) -> Any:
    if handle.is_flux:
        from .flux_objective import flux_scheduler

        return flux_scheduler(handle)
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(handle.pipe.scheduler.config)


def _batch_loss(unet, batch: dict, generator, scheduler, handle, config: TrainConfig, amp_dtype):
    """The weighted denoising loss of one batch, with noise and timesteps drawn from ``generator``."""
    import torch

    if handle.is_flux:
        from .flux_objective import flux_batch_loss

        return flux_batch_loss(unet, batch, generator, scheduler, handle, config.background_weight,
                               config.product_weight, config.guidance_for(handle), amp_dtype)
    device = handle.device
    noise = torch.randn(batch["latents"].shape, generator=generator).to(device, batch["latents"].dtype)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch["latents"].shape[0],),
                              generator=generator).to(device)
    noisy = scheduler.add_noise(batch["latents"], noise, timesteps)
    if handle.unet_in_channels == 9:
        model_input = torch.cat([noisy, batch["mask"], batch["masked_latents"]], dim=1)
    elif handle.unet_in_channels == 4:
        model_input = noisy
    else:
        raise InvalidModelError(f"a UNet with {handle.unet_in_channels} input channels cannot be trained here "
                                f"(expected 9 for inpainting or 4 for a base model)")
    target = noise if scheduler.config.prediction_type == "epsilon" else \
        scheduler.get_velocity(batch["latents"], noise, timesteps)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        prediction = unet(model_input.to(handle.dtype), timesteps, encoder_hidden_states=batch["embeds"],
                          added_cond_kwargs=batch["added"]).sample
    pixel_weight = config.background_weight * batch["mask"] + config.product_weight * (1 - batch["mask"])
    error = (prediction.float() - target.float()) ** 2 * pixel_weight
    return error.sum() / (pixel_weight.sum() * error.shape[1]).clamp_min(1e-8)


def evaluation_loss(handle, unet, entries: list[dict], config: TrainConfig, batches: int = 8, seed: int = 1234
                    ) -> float:
    """Mean weighted loss of ``unet`` over ``batches`` fixed batches (same seed -> same batches): a
    low-variance yardstick to compare a UNet before and after training."""
    import torch

    samples = load_samples(entries, config.resolution)
    scheduler = _training_scheduler(handle)
    conditioning = _text_conditioning(handle, {s.caption for s in samples} | {""}, config.resolution)
    weights = torch.tensor([s.weight for s in samples], dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    vae, scale = handle.pipe.vae, float(handle.pipe.vae.config.scaling_factor)
    total = 0.0
    with torch.no_grad():
        for _ in range(batches):
            batch = _make_batch(samples, weights, config, generator, handle, vae, scale, conditioning)
            total += float(_batch_loss(unet, batch, generator, scheduler, handle, config, _amp(config, handle.device)))
    return total / batches


def _make_batch(samples, weights, config: TrainConfig, generator, handle, vae, scale: float, conditioning) -> dict:
    import torch
    import torch.nn.functional as F

    picks = torch.multinomial(weights, config.batch_size, replacement=True, generator=generator).tolist()
    pixels, masks, captions = [], [], []
    for index in picks:
        sample = samples[index]
        pixels.append(sample.pixels)
        masks.append(torch.from_numpy(background_mask(sample.product, generator, tuple(config.mask_augmentations))))
        captions.append(drop_caption(sample.caption, config.caption_dropout, generator))
    image = torch.stack(pixels).to(handle.device, handle.dtype)
    mask = torch.stack(masks)[:, None].to(handle.device, handle.dtype)
    if handle.is_flux:
        from .flux_objective import make_flux_batch

        return make_flux_batch(handle, image, mask, captions, conditioning)
    with torch.no_grad():
        latents = vae.encode(image).latent_dist.mode() * scale
        masked = vae.encode(image * (mask < 0.5)).latent_dist.mode() * scale if handle.unet_in_channels == 9 else None
    latent_mask = F.interpolate(mask, size=latents.shape[-2:])
    embeds = torch.cat([conditioning[c]["embeds"] for c in captions])
    added = None
    if handle.family == "sdxl":
        added = {k: torch.cat([conditioning[c]["added"][k] for c in captions]) for k in ("text_embeds", "time_ids")}
    return {"latents": latents, "masked_latents": masked, "mask": latent_mask, "embeds": embeds, "added": added}


# ------------------------------------------------------------------------------------------ stage 2 init

def _read_init_lora(name: str) -> tuple[dict, int, float]:
    """A LoRA (models/loras name or a path we wrote) -> (its state: kohya keys for SD, ``transformer.*`` for FLUX,
    rank, alpha)."""
    from ..models import get_locator, load_state_dict

    path = Path(name)
    if not path.is_file():
        path = get_locator().resolve("loras", name)
    state = load_state_dict(path)
    downs = [v for k, v in state.items() if k.endswith((".lora_down.weight", ".lora_A.weight"))]
    if not downs:
        raise InvalidModelError(f"{path.name} is not a LoRA written by backdrop train-lora "
                                "(no lora_down or lora_A weights)")
    rank = int(downs[0].shape[0])
    alphas = [float(v) for k, v in state.items() if k.endswith(".alpha")]
    return state, rank, alphas[0] if alphas else float(rank)


def _load_init_lora(unet, state: dict, name: str) -> None:
    from .export import DIFFUSERS_PREFIX, from_diffusers_state, from_kohya_state

    modules = [n for n, m in unet.named_modules() if hasattr(m, "lora_A") and len(m.lora_A)]
    if any(k.startswith(DIFFUSERS_PREFIX) for k in state):
        peft_state, _ = from_diffusers_state(state)
    else:
        peft_state, _ = from_kohya_state(state, modules)
    try:
        load_lora_state(unet, peft_state)
    except RuntimeError as exc:
        raise InvalidModelError(f"LoRA {name} does not fit this base model: {exc}") from exc
    missing = {k.rpartition(".lora_")[0] for k in lora_state(unet)} - {k.rpartition(".lora_")[0] for k in peft_state}
    if missing:
        raise InvalidModelError(f"LoRA {name} lacks {len(missing)} layers of the chosen targets, "
                                f"e.g. {sorted(missing)[0]}; train stage 2 with the stage-1 targets")
