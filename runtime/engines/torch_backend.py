"""The reference backend: a diffusers ``UNet2DConditionModel`` run by torch (eager or torch.compile).

``freeze=True`` compiles with Inductor's *freezing*: the weights become constants of the graph, folded and
prepacked for oneDNN (AMX/AVX-512 layouts on the CPU) at compile time, the way Inductor is meant to serve
inference. The UNet's weights must not change afterwards (a LoRA fused or scaled later is not seen), so it is
a benchmark row and a baseline, not the backend live adapters run on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import ProfiledBackend
from .spec import CONTEXT, SAMPLE, TEXT_EMBEDS, TIME_IDS, TIMESTEP, UNetSpec

if TYPE_CHECKING:
    import torch


class TorchUNetBackend(ProfiledBackend):
    """Runs the torch UNet itself; ``compile=True`` wraps it in ``torch.compile`` (compiled on first run),
    ``freeze=True`` with Inductor's freezing (weights constant-folded and prepacked; see the module docstring)."""

    def __init__(self, unet: Any, compile: bool = False, compile_mode: str | None = None, freeze: bool = False
                 ) -> None:
        import torch

        super().__init__(UNetSpec.from_unet(unet), profile=None)
        self.unet = unet
        self.freeze = freeze
        compile = compile or freeze
        target = _frozen_call(unet) if freeze else unet
        self.module = torch.compile(target, mode=compile_mode, dynamic=False) if compile else unet
        self.name = "torch.compile (frozen)" if freeze else "torch.compile" if compile else "torch"

    def _compile_context(self) -> Any:
        """The settings this backend's (re)compilations need; they happen inside the call.

        Frozen: Inductor's freezing (``torch.compile(options={"freezing": True})`` is not honoured by torch
        2.14: no prepacked weights in the generated code; the config patch is).
        """
        import contextlib

        if not self.freeze:
            return contextlib.nullcontext()
        import torch._inductor.config as inductor_config

        return inductor_config.patch(freezing=True)

    def _run_chunk(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        import torch

        sample = feeds[SAMPLE]
        dtype = self.unet.dtype
        added = None
        if self.spec.is_sdxl:
            added = {"text_embeds": feeds[TEXT_EMBEDS].to(dtype), "time_ids": feeds[TIME_IDS].to(dtype)}
        with torch.inference_mode(), self._compile_context():
            out = self.module(sample.to(dtype), feeds[TIMESTEP], feeds[CONTEXT].to(dtype), added_cond_kwargs=added,
                              return_dict=False)[0]
        return out.to(sample.dtype)


def _frozen_call(unet: Any) -> Any:
    """``unet`` behind a forward of its own: dynamo caches compiled graphs per code object, and the frozen graph
    must not be found by (or find) a plain ``torch.compile`` of the same UNet class."""
    import torch

    class FrozenCall(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return self.inner(*args, **kwargs)

    return FrozenCall(unet)
