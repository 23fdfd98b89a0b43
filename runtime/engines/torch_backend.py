"""The reference backend: a diffusers ``UNet2DConditionModel`` run by torch (eager or torch.compile)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import ProfiledBackend
from .spec import CONTEXT, SAMPLE, TEXT_EMBEDS, TIME_IDS, TIMESTEP, UNetSpec

if TYPE_CHECKING:
    import torch


class TorchUNetBackend(ProfiledBackend):
    """Runs the torch UNet itself; ``compile=True`` wraps it in ``torch.compile`` (compiled on first run)."""

    def __init__(self, unet: Any, compile: bool = False, compile_mode: str | None = None) -> None:
        import torch

        super().__init__(UNetSpec.from_unet(unet), profile=None)
        self.unet = unet
        self.module = torch.compile(unet, mode=compile_mode, dynamic=False) if compile else unet
        self.name = "torch.compile" if compile else "torch"

    def _run_chunk(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        import torch

        sample = feeds[SAMPLE]
        dtype = self.unet.dtype
        added = None
        if self.spec.is_sdxl:
            added = {"text_embeds": feeds[TEXT_EMBEDS].to(dtype), "time_ids": feeds[TIME_IDS].to(dtype)}
        with torch.inference_mode():
            out = self.module(sample.to(dtype), feeds[TIMESTEP], feeds[CONTEXT].to(dtype), added_cond_kwargs=added,
                              return_dict=False)[0]
        return out.to(sample.dtype)
