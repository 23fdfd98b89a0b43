"""Qwen-Image-Edit through diffusers' ``QwenImageEditInpaintPipeline``, at the runtime's working size.

diffusers' ``QwenImageEditInpaintPipeline`` (0.42) ignores ``height`` and ``width``: its ``__call__``
always works at about one megapixel, the size ``calculate_dimensions(1024 * 1024, aspect)`` picks.
The runtime plans its own working size (the crop around the background at ``resolution``, padded to a
multiple of 16: the 8x VAE times 2x2 latent patches) and pastes the result back, so it runs diffusers'
own ``__call__`` code with that one helper answering the planned size. The function is rebuilt from
diffusers' code object with a private copy of its module globals: nothing shared is patched, so other
pipelines and threads are unaffected. If a diffusers release stops asking that helper, the output size
no longer matches the plan and the run fails with a clear error instead of working at another size.

Qwen-Image-Edit uses true classifier-free guidance: every step runs the transformer on the prompt and
on the negative prompt and moves away from the latter by ``true_cfg_scale`` (the model card's 4.0).
With ``cfg`` <= 1 there is one pass per step and the negative prompt is unused.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import InvalidModelError

DEFAULT_NEGATIVE = " "  # the model card's negative prompt: true CFG needs one, even an empty-looking one


def run_qwen_edit(pipe: Any, image: np.ndarray, regenerate: np.ndarray, *, prompt: str, negative_prompt: str,
                  cfg: float, steps: int, strength: float, generators: list, callback: Callable) -> list[np.ndarray]:
    """Generate ``len(generators)`` images at ``image``'s size (float32 [H,W,3] 0..1, H and W multiples of 16).

    ``regenerate`` is the [H,W] bool mask of pixels to repaint; ``cfg`` is ``true_cfg_scale``; an empty
    ``negative_prompt`` is the model card's ``" "``.
    """
    import torch
    from PIL import Image

    height, width = image.shape[:2]
    # The pipeline reads the size of a PIL image (tensors and arrays fail there); it is also what the
    # vision-language encoder sees. Product pixels are pasted back from the float input afterwards.
    picture = Image.fromarray(np.round(np.clip(image[..., :3], 0.0, 1.0) * 255.0).astype(np.uint8))
    mask = torch.from_numpy(np.ascontiguousarray(regenerate, dtype=np.float32))[None, None]
    negative = (negative_prompt or DEFAULT_NEGATIVE) if cfg > 1.0 else None
    call = _call_at_size(type(pipe), width, height)
    with torch.no_grad():
        out = call(pipe, image=picture, prompt=prompt, negative_prompt=negative, mask_image=mask,
                   true_cfg_scale=cfg, strength=strength, num_inference_steps=steps,
                   num_images_per_prompt=len(generators), generator=generators, output_type="np",
                   callback_on_step_end=callback)
    images = [np.asarray(img, dtype=np.float32) for img in out.images]
    for img in images:
        if img.shape[:2] != (height, width):
            raise InvalidModelError(
                f"{type(pipe).__name__} generated {img.shape[1]}x{img.shape[0]} instead of the planned {width}x"
                f"{height}: this diffusers version chooses the size another way (docs/flux.md, Qwen-Image-Edit).")
    return images


def _call_at_size(pipeline_class: type, width: int, height: int) -> Callable:
    """``pipeline_class.__call__``'s own code, with ``calculate_dimensions`` returning (width, height)."""
    raw = inspect.unwrap(pipeline_class.__call__)
    if "calculate_dimensions" not in getattr(raw, "__globals__", {}):
        raise InvalidModelError(f"{pipeline_class.__name__}.__call__ does not size its work with "
                                "calculate_dimensions in this diffusers version; the working size cannot be set.")

    def planned_size(_target_area: float, _ratio: float) -> tuple[int, int, None]:
        return width, height, None

    scope = {**raw.__globals__, "calculate_dimensions": planned_size}
    call = types.FunctionType(raw.__code__, scope, raw.__name__, raw.__defaults__, raw.__closure__)
    call.__kwdefaults__ = raw.__kwdefaults__
    return call
