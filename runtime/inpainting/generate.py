"""Generate new backgrounds around an exact product: the runtime behind BackdropInpaint and ``backdrop run``.

Per image: place it on the (optional) outpaint canvas, crop around everything that is not product,
run the diffusers inpainting pipeline at the model's working resolution, put the result back, remove
the colour cast along the seam, and blend with a weight that is 1 on the product. Product pixels
(mask >= 0.5) of every output are the input's, bit for bit, at any size, batch and channel count.
Variation ``k`` is seeded with ``seed + k`` for every image, so one image's result does not depend
on what else is in the batch.

FLUX.1 Fill (family ``flux-fill``, diffusers' ``FluxFillPipeline``) and FLUX.1 Kontext (``flux-kontext``,
``FluxKontextInpaintPipeline``: Kontext sees the whole working image and regenerates under the mask)
run through the same steps. ``cfg`` is FLUX's distilled guidance (``guidance_scale``; Fill [dev] is
made for about 30, Kontext [dev] for about 2.5, not SD's 7); there is no negative prompt
(``negative_prompt`` is ignored); the sampler is FLUX's own flow-match Euler (``scheduler`` must be
``euler``); there is no UNet feature cache; and the working size is a multiple of 16 instead of 64.

Qwen-Image-Edit (``qwen-image-edit``, ``QwenImageEditInpaintPipeline``, run by ``qwen_edit``) follows the
FLUX rules for sampler, feature cache and working size, but ``cfg`` is true classifier-free guidance
(``true_cfg_scale``, 4.0 in its model card) with the negative prompt (the model card's ``" "`` when empty).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import InvalidInputError, InvalidModelError
from ..progress import ProgressFn, report
from .feature_cache import MAX_INTERVAL, feature_cache
from .geometry import FAMILY_RESOLUTION, FAMILY_SIZE_STEP, SIZE_STEP, check_mask_aspect, outpaint_canvas, plan_canvas
from .loader import QWEN_EDIT, LoadedPipeline
from .loras import activated
from .qwen_edit import run_qwen_edit
from .schedulers import DEFAULT_SCHEDULER, make_scheduler
from .seam import blend, hard_product, match_colors, seam_alpha

log = logging.getLogger(__name__)
MAX_SEED = 2**64 - 1
FLUX_SCHEDULER = "euler"  # the only choice for FLUX: its own FlowMatchEulerDiscreteScheduler
CUTOUT_GRAY = 0.5  # what the model sees under transparent pixels of an RGBA input


@dataclass(frozen=True)
class InpaintSettings:
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 25
    cfg: float = 7.0
    scheduler: str = DEFAULT_SCHEDULER
    strength: float = 1.0
    variations: int = 1
    resolution: int = 0  # working size as sqrt(pixels); 0 = the family's native size
    outpaint: str = "none"  # "none" or W:H
    seam_feather: int = 6
    color_match: float = 1.0
    feature_cache: int = 0  # 0: off; N: the full UNet every N steps, deep features reused between (DeepCache)

    def validate(self) -> None:
        checks = [(1 <= self.steps <= 500, f"steps must be 1..500, got {self.steps}"),
                  (0.0 <= self.cfg <= 50.0, f"cfg must be 0..50, got {self.cfg}"),
                  (0.0 < self.strength <= 1.0, f"strength must be in (0, 1], got {self.strength}"),
                  (1 <= self.variations <= 64, f"variations must be 1..64, got {self.variations}"),
                  (0 <= self.seed <= MAX_SEED, f"seed must be 0..2^64-1, got {self.seed}"),
                  (self.resolution == 0 or 64 <= self.resolution <= 4096,
                   f"resolution must be 0 (native) or 64..4096, got {self.resolution}"),
                  (self.seam_feather >= 0, "seam_feather must be >= 0"),
                  (0.0 <= self.color_match <= 1.0, "color_match must be 0..1"),
                  (self.feature_cache in (0, 1) or 2 <= self.feature_cache <= MAX_INTERVAL,
                   f"feature_cache must be 0 (off) or 2..{MAX_INTERVAL}, got {self.feature_cache}")]
        for ok, message in checks:
            if not ok:
                raise InvalidInputError(message)

    def effective_steps(self) -> int:
        return max(1, int(self.steps * self.strength))


@dataclass
class InpaintResult:
    images: list[np.ndarray]  # float32 [H',W',C], image-major: image 0's variations first
    product_masks: list[np.ndarray]  # float32 [H',W'] on the output canvas, one per output


def inpaint_backgrounds(handle: LoadedPipeline, images: list[np.ndarray], masks: list[np.ndarray],
                        settings: InpaintSettings, progress: ProgressFn | None = None) -> InpaintResult:
    """New backgrounds for each image (float32 [H,W,C], C 3 or 4) around its product mask (1 = product).

    With a FLUX pipeline (Fill or Kontext) ``settings.negative_prompt`` is ignored (FLUX has none) and
    ``cfg`` is FLUX's guidance scale.
    """
    settings.validate()
    if handle.is_transformer:
        _check_flux_settings(settings, "Qwen-Image-Edit" if handle.family == QWEN_EDIT else "FLUX")
    if len(images) != len(masks):
        raise InvalidInputError(f"{len(images)} images but {len(masks)} masks")
    per_image = settings.effective_steps()
    total = per_image * len(images)
    result = InpaintResult([], [])
    with activated(handle) as pipe, _feature_cache(handle, pipe, settings.feature_cache):
        if not handle.is_transformer:  # FLUX and Qwen-Image-Edit keep their own flow-match Euler scheduler
            _set_scheduler(handle, pipe, settings.scheduler)
        for index, (image, mask) in enumerate(zip(images, masks, strict=True)):
            def on_step(done: int, base: int = index * per_image) -> None:
                # FLUX rounds strength * steps up where SD rounds down: never count past this image's share
                report(progress, base + min(done, per_image), total)

            outputs, canvas_mask = _inpaint_one(handle, pipe, image, mask, settings, on_step)
            result.images.extend(outputs)
            result.product_masks.extend(canvas_mask.copy() for _ in outputs)
            report(progress, (index + 1) * per_image, total)
    return result


def _check_flux_settings(settings: InpaintSettings, model: str = "FLUX") -> None:
    if settings.scheduler != FLUX_SCHEDULER:
        raise InvalidInputError(f"{model} samples with its own flow-match Euler scheduler; choose scheduler "
                                f"'{FLUX_SCHEDULER}' (got {settings.scheduler!r})")
    if settings.feature_cache not in (0, 1):
        raise InvalidInputError(f"feature_cache (DeepCache) works on SD1.5/SDXL UNets only; set it to 0 for {model}")


def _feature_cache(handle: LoadedPipeline, pipe, interval: int):
    return nullcontext() if handle.is_transformer else feature_cache(pipe.unet, interval)


def _set_scheduler(handle: LoadedPipeline, pipe, name: str) -> None:
    if handle.state.scheduler_config is None:
        handle.state.scheduler_config = dict(pipe.scheduler.config)
    pipe.scheduler = make_scheduler(name, handle.state.scheduler_config)


def _inpaint_one(handle: LoadedPipeline, pipe, image: np.ndarray, mask: np.ndarray, settings: InpaintSettings,
                 on_step: Callable[[int], None]) -> tuple[list[np.ndarray], np.ndarray]:
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InvalidInputError(f"expected an [H,W,3] or [H,W,4] image, got {image.shape}")
    height, width = image.shape[:2]
    check_mask_aspect(mask.shape, (height, width))
    if mask.shape != (height, width):
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_LINEAR)
    canvas_h, canvas_w, oy, ox = outpaint_canvas(height, width, settings.outpaint)
    original = np.zeros((canvas_h, canvas_w, image.shape[2]), np.float32)
    original[oy:oy + height, ox:ox + width] = image
    canvas_mask = np.zeros((canvas_h, canvas_w), np.float32)
    canvas_mask[oy:oy + height, ox:ox + width] = np.clip(mask, 0.0, 1.0)
    product = hard_product(canvas_mask)
    if product.all():
        log.warning("the mask marks the whole image as product: nothing to regenerate, returning it unchanged")
        return [original.copy() for _ in range(settings.variations)], canvas_mask
    if not product.any():
        log.warning("the mask has no product: the whole image is generated from the prompt")
    model_view = _model_view(image, (canvas_h, canvas_w), (oy, ox))
    plan = plan_canvas(~product, (oy, ox), (canvas_h, canvas_w),
                       settings.resolution or FAMILY_RESOLUTION[handle.family],
                       FAMILY_SIZE_STEP.get(handle.family, SIZE_STEP))
    y0, x0, y1, x1 = plan.crop
    work_image = _to_work(model_view[y0:y1, x0:x1], plan)
    work_regen = _to_work((~product[y0:y1, x0:x1]).astype(np.float32), plan, pad_value=1.0) > 0.5
    generated = _run_pipeline(pipe, work_image, work_regen, settings, on_step, handle)
    alpha = seam_alpha(canvas_mask, settings.seam_feather)
    outputs = []
    for out in generated:
        back = cv2.resize(out[:plan.content_h, :plan.content_w], (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
        back = match_colors(np.clip(back, 0, 1), model_view[y0:y1, x0:x1], canvas_mask[y0:y1, x0:x1],
                            band=max(2, settings.seam_feather), strength=settings.color_match)
        full = model_view.copy()
        full[y0:y1, x0:x1] = back
        if image.shape[2] == 4:
            full = np.concatenate([full, np.ones_like(full[..., :1])], axis=2)
        outputs.append(blend(original, full, alpha))
    return outputs, canvas_mask


def _model_view(image: np.ndarray, canvas: tuple[int, int], offset: tuple[int, int]) -> np.ndarray:
    """RGB the model sees: cut-outs over gray, and the outpaint margin filled by edge replication."""
    rgb = np.clip(image[..., :3], 0.0, 1.0)
    if image.shape[2] == 4:
        a = np.clip(image[..., 3:4], 0.0, 1.0)
        rgb = rgb * a + CUTOUT_GRAY * (1.0 - a)
    (ch, cw), (oy, ox) = canvas, offset
    h, w = rgb.shape[:2]
    return cv2.copyMakeBorder(rgb.astype(np.float32), oy, ch - h - oy, ox, cw - w - ox, cv2.BORDER_REPLICATE)


def _to_work(region: np.ndarray, plan, pad_value: float | None = None) -> np.ndarray:
    shrinking = plan.content_h * plan.content_w < region.shape[0] * region.shape[1]
    resized = cv2.resize(region, (plan.content_w, plan.content_h),
                         interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    bottom, right = plan.work_h - plan.content_h, plan.work_w - plan.content_w
    if pad_value is None:
        return cv2.copyMakeBorder(resized, 0, bottom, 0, right, cv2.BORDER_REPLICATE)
    return cv2.copyMakeBorder(resized, 0, bottom, 0, right, cv2.BORDER_CONSTANT, value=pad_value)


def _run_pipeline(pipe, work_image: np.ndarray, work_regen: np.ndarray, settings: InpaintSettings,
                  on_step: Callable[[int], None], handle: LoadedPipeline) -> list[np.ndarray]:
    import torch

    image = torch.from_numpy(np.ascontiguousarray(np.clip(work_image, 0, 1).transpose(2, 0, 1)))[None]
    mask = torch.from_numpy(work_regen.astype(np.float32))[None, None]
    generators = [torch.Generator("cpu").manual_seed((settings.seed + k) % (MAX_SEED + 1))
                  for k in range(settings.variations)]

    def on_step_end(_pipe, index, _timestep, kwargs):
        latents = kwargs.get("latents")
        if latents is not None and not bool(torch.isfinite(latents).all()):
            raise InvalidModelError(non_finite_message(handle, f"the UNet's latents at step {index + 1}"))
        on_step(index + 1)
        return kwargs

    if handle.family == QWEN_EDIT:  # true CFG with a negative prompt, at our working size
        images = run_qwen_edit(pipe, work_image, work_regen, prompt=settings.prompt,
                               negative_prompt=settings.negative_prompt, cfg=settings.cfg, steps=settings.steps,
                               strength=settings.strength, generators=generators, callback=on_step_end)
        check_decoded(images, handle)
        return images
    # FLUX has no negative prompt: it is guidance-distilled, cfg is its embedded guidance scale
    extra: dict = {} if handle.is_flux else {"negative_prompt": settings.negative_prompt or None}
    if handle.family == "flux-kontext":
        extra["_auto_resize"] = False  # keep the working size (a multiple of 16); Kontext would pick its own
    with torch.inference_mode():
        out = pipe(prompt=settings.prompt, **extra, image=image,
                   mask_image=mask, height=work_image.shape[0], width=work_image.shape[1],
                   num_inference_steps=settings.steps, guidance_scale=settings.cfg, strength=settings.strength,
                   num_images_per_prompt=settings.variations, generator=generators, output_type="np",
                   callback_on_step_end=on_step_end)
    images = [np.asarray(img, dtype=np.float32) for img in out.images]
    check_decoded(images, handle)
    return images


# ------------------------------------------------------------------------------- numeric overflow guard

def check_decoded(images: list[np.ndarray], handle: LoadedPipeline) -> None:
    """Raise ``InvalidModelError`` if the VAE gave NaN/inf, or an all-black image (infinities clamped to 0).

    diffusers' ``output_type="np"`` keeps NaN (its clamp propagates NaN) and turns -inf into 0, so a
    numeric overflow shows up as one of these two; neither is ever a real background.
    """
    for image in images:
        if not np.isfinite(image).all():
            raise InvalidModelError(non_finite_message(handle, "the VAE decode (NaN or infinite pixels)"))
        if image.size and not image.any():
            raise InvalidModelError(non_finite_message(handle, "the VAE decode (an all-black image: every "
                                                               "value was -inf or below, then clamped to 0)"))


def non_finite_message(handle: LoadedPipeline, stage: str) -> str:
    """What happened (model, stage, dtype, device) and what to change, for the person running the model."""
    dtype = _DTYPE_NAMES.get(str(handle.dtype), str(handle.dtype))
    what = (f"{handle.describe()} produced NaN/infinite values in {stage} running in {dtype} on {handle.device}; "
            "the result would be a black image, so nothing was returned. ")
    engine = getattr(getattr(handle.pipe, "unet", None), "backend", None)
    if engine is not None:
        what += (f"Its UNet runs on the {engine.name} engine, which has its own precision: an fp16 engine can "
                 "overflow where the torch UNet does not, so try the pipeline without Backdrop Load Engine, "
                 "or export the engine in fp32 or bf16. ")
    where = "the dtype of Backdrop Inpaint Loader, or --dtype for `backdrop run --checkpoint`"
    if dtype == "fp16":
        return what + (f"fp16 overflows in some models, SDXL's VAE above all. Set dtype to bf16 or fp32 ({where}), "
                       "or use a VAE fixed for fp16 (for example madebyollin's sdxl-vae-fp16-fix) in a "
                       "diffusers folder; lower LoRA strengths also help.")
    if dtype == "bf16":
        return what + (f"Set dtype to fp32 ({where}). If fp32 fails too, the weights themselves hold NaN/inf "
                       "values: re-download or re-convert the model file, and check LoRA strengths.")
    return what + ("In fp32 this means the weights themselves hold NaN/inf values (a damaged or badly converted "
                   "file) or a LoRA at an extreme strength: re-download or re-convert the model file and lower "
                   f"LoRA strengths. (With fp16 the usual fix is dtype bf16 or fp32, {where}, or a VAE fixed "
                   "for fp16 such as madebyollin's sdxl-vae-fp16-fix.)")


_DTYPE_NAMES = {"torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float32": "fp32"}
