"""Calibration inputs for static int8 (``w8a8``) UNet engines.

Static quantization fixes one int8 scale per activation tensor at export time, from the ranges the UNet's
layers reach on representative inputs, so the inputs decide the engine's error. Two sources:

- ``capture_unet_inputs``: what the UNet really receives. The pipeline inpaints a few synthetic product photos
  (a centred product on a smooth gradient) with prompts built from the style presets, at a few timesteps spread
  over the schedule, and every UNet call is recorded: the noisy latents with their mask and masked-image
  channels, the timestep, and the text states of the checkpoint's own text encoder(s) for a positive and a
  negative prompt (CFG). This is what ``export_pipeline_engine`` uses, so the CLIP states' large outlier
  dimensions are in the ranges.
- ``random_unet_inputs``: seeded random inputs of the export's own kind (``example_inputs``), for a bare UNet
  with no pipeline around it (the UNet-step benchmark, whose measured input is of that kind too).

Each input set is a dict of the UNet's input names (``UNetSpec.input_names``) to fp32 tensors with a batch axis;
a captured set also holds the hidden state entering the last up block (``deep_features``), which calibrates the
feature cache's shallow graph without running the UNet again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..runtime.engines.openvino_backend import DEEP_FEATURES
from ..runtime.engines.spec import CONTEXT, SAMPLE, TEXT_EMBEDS, TIME_IDS, TIMESTEP, UNetSpec
from ..runtime.progress import ProgressFn, within
from .onnx_export import example_inputs

CalibrationInputs = list[dict[str, torch.Tensor]]
CalibrationSource = Callable[[], CalibrationInputs]


RANDOM_LABEL = "random inputs (seeded example_inputs, timesteps 100-900)"


@dataclass(frozen=True)
class Calibration:
    """Where a ``w8a8`` engine's scales come from: a label for the cache key and manifest, and the input sets
    (or a callable that captures them, called only when the engine is actually built)."""

    label: str
    inputs: CalibrationSource | Sequence[dict[str, torch.Tensor]]

    def input_sets(self) -> CalibrationInputs:
        """The input sets, captured now if ``inputs`` is a callable."""
        return list(self.inputs() if callable(self.inputs) else self.inputs)


@dataclass(frozen=True)
class CapturePlan:
    """How many pipeline runs calibrate a ``w8a8`` engine: one photo per style, ``steps`` UNet calls each."""

    styles: int = 3
    steps: int = 4
    max_resolution: int = 512  # the family's size, capped (SDXL calibrates at 512 px: same ranges, 4x cheaper)

    @property
    def label(self) -> str:
        return f"pipeline capture: {self.styles} styles x {self.steps} steps, <= {self.max_resolution} px"


def synthetic_product_photo(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A float32 RGB photo (a smooth two-colour gradient, a product block off its centre) and its product mask."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    top, bottom = rng.uniform(0.2, 0.95, 3), rng.uniform(0.1, 0.9, 3)
    image = (top * (1 - y[..., None]) + bottom * y[..., None] + 0.05 * x[..., None]).astype(np.float32)
    mask = np.zeros((size, size), np.float32)
    r0, c0 = (rng.uniform(0.2, 0.4, 2) * size).astype(int)
    mask[r0: r0 + size // 3, c0: c0 + size // 4] = 1.0
    image[mask > 0] = rng.uniform(0.0, 1.0, 3)
    return np.clip(image, 0.0, 1.0), mask


def style_prompts(count: int) -> list[tuple[str, str]]:
    """(positive, negative) prompts for a product on ``count`` of the style presets, spread over the list."""
    from ..runtime.backdrop.styles import style_names
    from ..runtime.prompting import compose_prompt, composition_names

    styles, compositions = style_names(), composition_names()
    picks = [styles[round(i * (len(styles) - 1) / max(count - 1, 1))] for i in range(count)]
    prompts = []
    for i, style in enumerate(picks):
        composed = compose_prompt("a product on a table", style, compositions[i % len(compositions)],
                                  long_prompt="trim")
        prompts.append((composed.positive, composed.negative))
    return prompts


def capture_unet_inputs(handle: Any, plan: CapturePlan | None = None,
                        progress: ProgressFn | None = None) -> CalibrationInputs:
    """The UNet inputs of short inpainting runs of ``handle`` (its LoRA stack active), one dict per UNet call, each
    with the call's ``deep_features`` too; ``progress(done, total)`` counts the runs' steps."""
    from ..runtime.inpainting.generate import InpaintSettings, inpaint_backgrounds
    from ..runtime.inpainting.geometry import FAMILY_RESOLUTION

    plan = plan or CapturePlan()
    spec = UNetSpec.from_unet(handle.denoiser)
    size = min(FAMILY_RESOLUTION.get(handle.family, 512), plan.max_resolution)
    captured: CalibrationInputs = []

    def record(_module: Any, args: tuple, kwargs: dict) -> None:
        sample = (args[0] if args else kwargs["sample"]).detach().float()
        timestep = torch.as_tensor(args[1] if len(args) > 1 else kwargs["timestep"]).float()
        added = kwargs.get("added_cond_kwargs") or {}
        found = {SAMPLE: sample, TIMESTEP: timestep.reshape(-1).expand(sample.shape[0]).clone(),
                 CONTEXT: kwargs["encoder_hidden_states"], TEXT_EMBEDS: added.get("text_embeds"),
                 TIME_IDS: added.get("time_ids")}
        captured.append({name: found[name].detach().float().clone() for name in spec.input_names})

    def record_deep(_module: Any, _args: tuple, output: torch.Tensor) -> None:
        captured[-1][DEEP_FEATURES] = output.detach().float().clone()

    hook = handle.denoiser.register_forward_pre_hook(record, with_kwargs=True)
    deep_hook = handle.denoiser.up_blocks[-2].register_forward_hook(record_deep)
    try:
        for index, (positive, negative) in enumerate(style_prompts(plan.styles)):
            image, mask = synthetic_product_photo(size, seed=index)
            settings = InpaintSettings(prompt=positive, negative_prompt=negative, steps=plan.steps, resolution=size,
                                       seed=index)
            inpaint_backgrounds(handle, [image], [mask], settings,
                                progress=within(progress, index * plan.steps, plan.styles * plan.steps))
    finally:
        hook.remove()
        deep_hook.remove()
    return captured


def random_unet_inputs(spec: UNetSpec, count: int = 6, batch: int = 2, latent: tuple[int, int] | None = None,
                       tokens: int = 77, first_seed: int = 11) -> CalibrationInputs:
    """``count`` seeded ``example_inputs`` sets at timesteps spread over 100-900 (seeds from ``first_seed``)."""
    timesteps = np.linspace(900.0, 100.0, count) if count > 1 else np.array([500.0])
    sets = []
    for index, timestep in enumerate(timesteps):
        feeds = example_inputs(spec, batch=batch, latent=latent, tokens=tokens, seed=first_seed + index)
        feeds[TIMESTEP] = torch.full((batch,), float(timestep))
        sets.append({name: feeds[name] for name in spec.input_names})
    return sets

