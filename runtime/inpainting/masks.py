"""Line product masks and generated batches up with their images."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from ..masking.broadcast import masks_for_batch


def masks_like_images(masks, images: list[np.ndarray], source: str = "product_mask") -> list[np.ndarray]:
    """One float32 mask per image at that image's size; a single mask is broadcast.

    The rule of ``masking.broadcast.masks_for_batch``: a mask of another size is resized only when its aspect
    ratio matches the image's; NaN is an error.
    """
    height, width = images[0].shape[:2]
    return masks_for_batch(masks, len(images), height, width, source=source)


def pair_generated_with_originals(generated: list[np.ndarray], originals: int) -> list[tuple[np.ndarray, int]]:
    """(generated image, index of its original): ``k`` variations per original, image-major."""
    if not generated or len(generated) % originals:
        raise InvalidInputError(
            f"got {len(generated)} generated images for {originals} originals; give a whole number of "
            "generated images per original (variations in image-major order)")
    per = len(generated) // originals
    return [(image, i // per) for i, image in enumerate(generated)]
