"""The UNet backend interface and the input handling every backend shares.

A backend computes one UNet evaluation: ``run(sample, timestep, encoder_hidden_states,
text_embeds=None, time_ids=None) -> noise prediction``, with torch tensors in and out. Backends built
on ``ProfiledBackend`` check the inputs against the UNet spec, broadcast the timestep, split batches
to fit the engine's profile and reject latent sizes outside it with an error naming the profile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..errors import InvalidInputError
from .profile import ShapeProfile
from .spec import CONTEXT, SAMPLE, TEXT_EMBEDS, TIME_IDS, TIMESTEP, UNetSpec

if TYPE_CHECKING:
    import torch


@runtime_checkable
class UNetBackend(Protocol):
    """Anything that evaluates a UNet: torch, onnxruntime, TensorRT."""

    name: str
    spec: UNetSpec
    profile: ShapeProfile | None

    def run(self, sample: torch.Tensor, timestep: torch.Tensor | float, encoder_hidden_states: torch.Tensor,
            text_embeds: torch.Tensor | None = None, time_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The noise prediction for ``sample`` (same batch and size, ``spec.out_channels`` channels)."""
        ...


def unet_feeds(spec: UNetSpec, sample: torch.Tensor, timestep: torch.Tensor | float,
               encoder_hidden_states: torch.Tensor, text_embeds: torch.Tensor | None = None,
               time_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Validated inputs by engine input name; the timestep becomes a float32 vector of one value per row."""
    import torch

    if sample.ndim != 4 or sample.shape[1] != spec.in_channels:
        raise InvalidInputError(f"the {spec.describe()} takes latents of shape [batch, {spec.in_channels}, h, w], "
                                f"got {tuple(sample.shape)}")
    batch, _, height, width = sample.shape
    m = spec.latent_multiple
    if height % m or width % m:
        raise InvalidInputError(f"latent size {width}x{height} is not a multiple of {m} "
                                f"(images must be multiples of {m * 8} px for this UNet)")
    t = torch.as_tensor(timestep, device=sample.device)
    if t.numel() == 1:
        t = t.reshape(1).expand(batch)
    elif t.shape != (batch,):
        raise InvalidInputError(f"timestep must be one value or one per row ({batch}), got shape {tuple(t.shape)}")
    if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[2] != spec.context_dim:
        raise InvalidInputError(f"encoder_hidden_states must be [batch, tokens, {spec.context_dim}], "
                                f"got {tuple(encoder_hidden_states.shape)}")
    feeds = {SAMPLE: sample, TIMESTEP: t.to(torch.float32), CONTEXT: _rows(encoder_hidden_states, batch, CONTEXT)}
    if spec.is_sdxl:
        if text_embeds is None or time_ids is None:
            raise InvalidInputError("an SDXL UNet needs added_cond_kwargs text_embeds and time_ids")
        feeds[TEXT_EMBEDS] = _rows(text_embeds, batch, TEXT_EMBEDS)
        feeds[TIME_IDS] = _rows(time_ids, batch, TIME_IDS)
        if feeds[TEXT_EMBEDS].shape[1] != spec.text_embeds_dim or feeds[TIME_IDS].shape[1] != spec.time_ids_dim:
            raise InvalidInputError(
                f"SDXL conditioning must be text_embeds [batch, {spec.text_embeds_dim}] and time_ids "
                f"[batch, {spec.time_ids_dim}], got {tuple(text_embeds.shape)} and {tuple(time_ids.shape)}")
    return feeds


def _rows(tensor: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if tensor.shape[0] == batch:
        return tensor
    if tensor.shape[0] == 1:
        return tensor.expand(batch, *tensor.shape[1:])
    raise InvalidInputError(f"{name} has {tensor.shape[0]} rows but the latents have {batch}")


class ProfiledBackend:
    """Base for engine backends: validation, profile checks and batch splitting around ``_run_chunk``."""

    name = "engine"

    def __init__(self, spec: UNetSpec, profile: ShapeProfile | None) -> None:
        self.spec = spec
        self.profile = profile

    def run(self, sample: torch.Tensor, timestep: torch.Tensor | float, encoder_hidden_states: torch.Tensor,
            text_embeds: torch.Tensor | None = None, time_ids: torch.Tensor | None = None) -> torch.Tensor:
        import torch

        feeds = unet_feeds(self.spec, sample, timestep, encoder_hidden_states, text_embeds, time_ids)
        if self.profile is None:
            return self._run_chunk(feeds)
        batch, _, height, width = sample.shape
        self.profile.check(height, width, feeds[CONTEXT].shape[1])
        outputs = []
        for start, stop, pad in self.profile.batch_chunks(batch):
            chunk = {k: v[start:stop] for k, v in feeds.items()}
            if pad:
                chunk = {k: torch.cat([v, v[-1:].expand(pad, *v.shape[1:])]) for k, v in chunk.items()}
            outputs.append(self._run_chunk(chunk)[: stop - start])
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _run_chunk(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError
