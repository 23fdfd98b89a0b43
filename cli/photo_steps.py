"""One photo of ``backdrop run``, in three steps that a catalog run can place in separate worker pools.

1. :func:`prepare_photo`: read it through the input gate, mask the product, caption it and compose the prompt
   (CPU: SAM or the weight-free masker, the VLM);
2. :func:`generate_backgrounds`: the studio backdrop or the diffusion pipeline (the GPU stage);
3. :func:`deliver_photo`: watermark, record and write every file (CPU: encoding, the ledger).

:func:`process_photo` runs the three in a row: the single-process path and the HTTP API's workers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.errors import InvalidInputError
from .run_plan import RunPlan

STEPS = ("prepare", "generate", "deliver")


@dataclass(frozen=True)
class RunModels:
    """What the run loads once and keeps for every photo (None where the plan needs no model)."""

    sam: Any = None
    captioner: Any = None
    pipeline: Any = None
    model_hashes: tuple[dict[str, str], dict[str, str]] = ({}, {})
    provenance: Any = None  # a ProvenanceService holding its keys in memory (Ray workers); None: the home's
    upscaler: Any = None  # --upscale <model>: a runtime.upscaling.Upscaler
    aesthetic: Any = None  # --aesthetic: a runtime.ranking.aesthetic.AestheticScorer


@dataclass
class PreparedPhoto:
    """A photo read, masked and (when the plan needs it) captioned, with its composed prompt."""

    source: Path
    image: np.ndarray  # float RGB or RGBA in 0..1, as read
    alpha: np.ndarray  # product alpha, float [H, W]
    bit_depth: int
    captions: dict[str, str] = field(default_factory=dict)
    composed: Any = None  # prompting.ComposedPrompt, or None when the plan needs no prompt


@dataclass
class GeneratedPhoto:
    """The new pictures of one photo, with the product mask on their canvas and the prompts they used."""

    prepared: PreparedPhoto
    images: list[np.ndarray]
    product_alpha: np.ndarray
    positive: str
    negative: str
    ranking: list[Any] | None = None  # --candidates: every candidate's RankedCandidate, best first
    sizes: dict[str, list[int]] | None = None  # --upscale: generated and delivered [width, height]


@dataclass(frozen=True)
class OutputNames:
    """Where one photo's files go: the pictures, and the mask and prompt JSON when the plan writes them."""

    images: tuple[Path, ...]
    mask: Path | None
    prompt_json: Path | None

    @property
    def all(self) -> tuple[Path, ...]:
        return tuple(p for p in (*self.images, self.mask, self.prompt_json) if p is not None)


def output_names(stem: str, slug: str, count: int, suffix: str, out: Path) -> list[Path]:
    """``<stem>_<style>.<ext>``, or ``<stem>_<style>_<k>.<ext>`` for several variations."""
    if count == 1:
        return [out / f"{stem}_{slug}.{suffix}"]
    return [out / f"{stem}_{slug}_{k}.{suffix}" for k in range(count)]


def planned_names(stem: str, plan: RunPlan) -> OutputNames:
    """Every file a photo with this ``stem`` writes under ``plan`` (before any ``-N`` renaming)."""
    images = output_names(stem, plan.style_slug, variation_count(plan), plan.format, plan.out)
    return OutputNames(images=tuple(images), mask=plan.out / f"{stem}_mask.png" if plan.save_mask else None,
                       prompt_json=images[0].with_suffix(".json") if plan.prompt_json else None)


def variation_count(plan: RunPlan) -> int:
    """How many pictures each photo gives: the diffusion variations, or one studio backdrop."""
    return 1 if plan.inpaint is None else plan.inpaint.pictures


def load_models(plan: RunPlan, steps: Iterable[str] = STEPS) -> RunModels:
    """Load what the plan needs for ``steps`` (of photo_steps.STEPS), once, before the first photo (so a missing
    model fails the run up front)."""
    from ..runtime.models import ModelLocator, get_locator

    locator = ModelLocator.from_models_dir(plan.models_dir) if plan.models_dir else get_locator()
    steps = set(steps)
    sam = captioner = pipeline = None
    if plan.sam and "prepare" in steps:
        from ..runtime.masking.sam_loader import load_sam
        from ..runtime.masking.sam_masker import SamMasker

        sam = SamMasker(load_sam(plan.sam, device=plan.device, locator=locator))
    if plan.captioner and "prepare" in steps:
        from ..runtime.captioning.loader import load_captioner

        captioner = load_captioner(plan.captioner, device=plan.device, locator=locator)
    hashes: tuple[dict[str, str], dict[str, str]] = ({}, {})
    if plan.inpaint is not None and "generate" in steps:
        pipeline = plan.inpaint.load_pipeline(plan.device)
    upscaler = None
    if plan.inpaint is not None and plan.inpaint.upscale not in (None, "lanczos") and "generate" in steps:
        from ..runtime.upscaling import load_upscaler

        upscaler = load_upscaler(plan.inpaint.upscale, device=plan.device, locator=locator)
    aesthetic = None
    if plan.inpaint is not None and plan.inpaint.aesthetic and "generate" in steps:
        from ..runtime.ranking.aesthetic import load_aesthetic_scorer

        aesthetic = load_aesthetic_scorer(plan.inpaint.aesthetic, plan.inpaint.clip_vision, device=plan.device,
                                          locator=locator)
    if plan.inpaint is not None and plan.watermark is not None and "deliver" in steps:
        from .watermark_options import model_hashes

        hashes = model_hashes(plan.inpaint.checkpoint, [name for name, _ in plan.inpaint.loras])
    return RunModels(sam=sam, captioner=captioner, pipeline=pipeline, model_hashes=hashes, upscaler=upscaler,
                     aesthetic=aesthetic)


def process_photo(path: Path, plan: RunPlan, models: RunModels, written: list[Path]) -> GeneratedPhoto:
    """Mask, caption and prompt (once), generate, then write; each file written is appended to ``written``."""
    generated = generate_backgrounds(prepare_photo(path, plan, models), plan, models)
    deliver_photo(generated, plan, models, planned_names(path.stem, plan), written)
    return generated


def prepare_photo(path: Path, plan: RunPlan, models: RunModels) -> PreparedPhoto:
    """Read ``path`` through the input gate, mask the product and (when needed) caption it and compose the prompt."""
    from ..runtime.imaging import read_image

    loaded = read_image(path, plan.read_limits)
    if loaded.fully_transparent and plan.mask_prompt.is_empty:
        from ..runtime.backdrop.studio_job import EMPTY_CUTOUT

        raise InvalidInputError(EMPTY_CUTOUT)  # before any model runs, on every path
    image = loaded.rgb if loaded.alpha is None else np.dstack([loaded.rgb, loaded.alpha])
    alpha = _product_alpha(image, plan, models)
    prepared = PreparedPhoto(source=path, image=image, alpha=alpha, bit_depth=loaded.bit_depth)
    if plan.needs_prompt:
        prepared.captions, prepared.composed = _captions_and_prompt(loaded.rgb, alpha, plan, models)
    return prepared


def generate_backgrounds(prepared: PreparedPhoto, plan: RunPlan, models: RunModels) -> GeneratedPhoto:
    """The studio backdrop (weight-free) or the diffusion backgrounds around the exact product."""
    if plan.inpaint is None:
        from ..runtime.backdrop.studio_job import studio_background

        result = studio_background(prepared.image, plan.style, alpha=prepared.alpha, studio=plan.studio)
        return GeneratedPhoto(prepared, [result.image], result.product_alpha, plan.style.prompt_text,
                              plan.style.negative_text)
    from ..runtime.inpainting.generate import inpaint_backgrounds

    inpaint = plan.inpaint
    settings = inpaint.settings_for(prepared.composed.positive, prepared.composed.negative)
    image, alpha = prepared.image, prepared.alpha
    if inpaint.upscale is not None:
        from ..runtime.inpainting.geometry import FAMILY_RESOLUTION
        from ..runtime.upscaling import shrink_for_generation, working_size

        side = settings.resolution or FAMILY_RESOLUTION[models.pipeline.family]
        image, alpha = shrink_for_generation(image, alpha, working_size(*image.shape[:2], inpaint.upscale_to, side))
    result = inpaint_backgrounds(models.pipeline, [image], [alpha], settings)
    # the mask returned is on the output canvas (it moves when outpainting)
    images, product_alpha, ranking, sizes = result.images, result.product_masks[0], None, None
    if inpaint.candidates:
        from ..runtime.ranking import rank_candidates

        ratings = models.aesthetic.score(images) if models.aesthetic is not None else None
        ranking = rank_candidates(images, product_alpha, plan.style.palette, aesthetic=ratings)
        images = [images[ranked.index] for ranked in ranking[:inpaint.keep_best]]
    if inpaint.upscale is not None:
        small = images[0].shape[:2]
        if image is not prepared.image:  # generated small: upscale, and paste the full-resolution product back
            from ..runtime.upscaling import restore_full_resolution

            images, product_alpha = restore_full_resolution(images, prepared.image, prepared.alpha,
                                                            settings.outpaint, models.upscaler,
                                                            feather=settings.seam_feather)
        sizes = {"generated": [small[1], small[0]], "delivered": [images[0].shape[1], images[0].shape[0]]}
    return GeneratedPhoto(prepared, images, product_alpha, settings.prompt, settings.negative_prompt,
                          ranking=ranking, sizes=sizes)


def deliver_photo(generated: GeneratedPhoto, plan: RunPlan, models: RunModels, names: OutputNames,
                  written: list[Path], *, rename: bool = True, idempotency_keys: Sequence[str] | None = None,
                  delivered: frozenset[Path] = frozenset()) -> None:
    """Write (and with ``--watermark`` mark and record) every file of one photo; each path written goes to
    ``written`` as soon as it exists.

    ``rename=False`` writes exactly ``names`` (a catalog run claimed them beforehand); ``idempotency_keys`` (one per
    picture) are recorded with the ledger records; names in ``delivered`` were written by an earlier attempt of the
    same photo and settings: they count as written and are not written again.
    """
    from ..runtime.imaging import write_image

    if len(generated.images) != len(names.images):
        raise InvalidInputError(f"{len(generated.images)} picture(s) generated for {len(names.images)} name(s)")
    bit_depth = generated.prepared.bit_depth if plan.format == "png" else 8
    first = len(written)
    for k, (name, picture) in enumerate(zip(names.images, generated.images, strict=True)):
        if name in delivered:
            written.append(name)
        elif plan.watermark is not None:
            from .watermark_options import write_marked

            key = None if idempotency_keys is None else idempotency_keys[k]
            written.append(write_marked(name, picture, generated.product_alpha >= 0.5, plan, generated.positive,
                                        generated.negative, models.model_hashes, rename=rename,
                                        idempotency_key=key, service=models.provenance))
        else:
            written.append(write_image(name, picture, bit_depth=bit_depth, rename=rename))
    if names.mask is not None:
        mask_rgb = np.repeat(generated.product_alpha[..., None], 3, axis=2)
        written.append(names.mask if names.mask in delivered else
                       write_image(names.mask, mask_rgb, bit_depth=8, rename=rename))
    if names.prompt_json is not None:
        target = written[0].with_suffix(".json") if rename else names.prompt_json
        written.append(target if target in delivered else
                       _write_prompt_json(generated, written[first:first + len(names.images)], target, plan, rename))


def _product_alpha(image: np.ndarray, plan: RunPlan, models: RunModels) -> np.ndarray:
    from ..runtime.masking.product_mask import product_mask

    return product_mask(image, sam=models.sam, prompt=plan.mask_prompt, refine=plan.refine)


def _captions_and_prompt(rgb: np.ndarray, alpha: np.ndarray, plan: RunPlan, models: RunModels):
    """Captions (VLM or image statistics) of the photo as given, and the prompt composed from them: computed once
    per photo and used by both the diffusion step and the prompt JSON."""
    from ..runtime.captioning.pipeline import caption_for_run
    from ..runtime.prompting import compose_prompt

    captions = caption_for_run(rgb, alpha, models.captioner)
    composed = compose_prompt(captions["product_caption"], plan.style, plan.composition, scene=plan.scene,
                              background_caption=captions["background_caption"])
    return captions, composed


def _write_prompt_json(generated: GeneratedPhoto, outputs: list[Path], target: Path, plan: RunPlan,
                       rename: bool) -> Path:
    """Captions and the composed prompts (and candidate scores, upscale sizes), beside the first output image."""
    import json

    from ..runtime.files import write_bytes_exclusive

    prepared = generated.prepared
    captions, composed = prepared.captions, prepared.composed
    record = {
        "input": str(prepared.source),
        "output": str(outputs[0]),
        "style": plan.style.name,
        "composition": plan.composition,
        "captioner": plan.captioner,
        "product_caption": captions["product_caption"],
        "background_caption": captions["background_caption"],
        "caption_source": captions["source"],
        "positive": composed.positive,
        "negative": composed.negative,
        "warnings": list(composed.warnings),
    }
    if generated.ranking is not None:
        kept = {ranked.index: str(path) for ranked, path in zip(generated.ranking, outputs, strict=False)}
        record["candidates"] = [{**ranked.as_dict(), "seed": plan.inpaint.settings.seed + ranked.index,
                                 "output": kept.get(ranked.index)} for ranked in generated.ranking]
    if generated.sizes is not None:
        record["upscale"] = {"method": plan.inpaint.upscale, "to": plan.inpaint.upscale_to, **generated.sizes}
    payload = json.dumps(record, indent=2, ensure_ascii=False).encode("utf-8")
    return write_bytes_exclusive(target, payload, rename=rename)
