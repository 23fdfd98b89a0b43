"""Product and background captions for a batch: the VLM when one is given, image statistics otherwise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError
from ..masking.product_mask import split_channels
from ..progress import ProgressFn, report
from .captioner import Captioner, GenerationSettings
from .fallback import fallback_captions
from .tasks import DEFAULT_TASK, instructions_for
from .views import background_view, limit_size, product_view


@dataclass(frozen=True)
class CaptionPair:
    product: str
    background: str
    source: str  # the captioner's folder name, or "statistics"

    def as_dict(self) -> dict[str, str]:
        return {"product_caption": self.product, "background_caption": self.background, "source": self.source}


def caption_image(image: np.ndarray, alpha: np.ndarray | None = None, captioner: Captioner | None = None,
                  task: str = DEFAULT_TASK, custom_instruction: str = "",
                  settings: GenerationSettings | None = None) -> CaptionPair:
    """Captions for one [H,W,C] float image. ``alpha`` is the product mask (1 = product) or None.

    An RGBA cut-out's own alpha stands in for a missing mask. The product is captioned on a crop of its
    box, the background on the photo with the product filled out.
    """
    rgb, cutout = split_channels(image)
    if alpha is None:
        alpha = cutout
    if alpha is not None:
        alpha = np.clip(np.nan_to_num(np.asarray(alpha, dtype=np.float32)), 0.0, 1.0)
        if alpha.shape != rgb.shape[:2]:
            raise InvalidInputError(f"the mask is {alpha.shape[1]}x{alpha.shape[0]} but the image is "
                                    f"{rgb.shape[1]}x{rgb.shape[0]}")
    if captioner is None:
        product, background = fallback_captions(rgb, alpha)
        return CaptionPair(product, background, "statistics")
    product_instruction, background_instruction = instructions_for(task, custom_instruction)
    rgb, alpha = limit_size(rgb, alpha)
    product = captioner.caption(product_view(rgb, alpha), product_instruction, settings)
    background = captioner.caption(background_view(rgb, alpha), background_instruction, settings)
    return CaptionPair(product, background, captioner.name)


def caption_images(images: Sequence[np.ndarray], masks: Sequence[np.ndarray] | None = None,
                   captioner: Captioner | None = None, task: str = DEFAULT_TASK, custom_instruction: str = "",
                   settings: GenerationSettings | None = None, progress: ProgressFn | None = None
                   ) -> list[CaptionPair]:
    """One ``CaptionPair`` per image, in order, reporting progress after each image.

    Every image uses the same seed, so a caption never depends on the image's place in the batch.
    """
    if len(images) == 0:
        raise InvalidInputError("the IMAGE batch is empty: there is nothing to caption")
    if masks is not None and len(masks) != len(images):
        raise InvalidInputError(f"got {len(masks)} masks for {len(images)} images")
    instructions_for(task, custom_instruction)  # fail on a bad task before any work
    pairs = []
    for index, image in enumerate(images):
        alpha = None if masks is None else masks[index]
        pairs.append(caption_image(image, alpha, captioner, task, custom_instruction, settings))
        report(progress, index + 1, len(images))
    return pairs


def caption_for_run(rgb: np.ndarray, alpha: np.ndarray | None, captioner: Captioner | None = None,
                    task: str = DEFAULT_TASK, settings: GenerationSettings | None = None) -> dict[str, str]:
    """For ``backdrop run``: ``{"product_caption", "background_caption", "source"}`` for one image.

    ``captioner`` comes from ``load_captioner(name, locator=...)`` when the user gave ``--captioner``;
    with None the captions are built from image statistics, so the run needs no weights.
    """
    return caption_image(rgb, alpha, captioner, task, settings=settings).as_dict()
