"""The FLUX transformer's engine contract: its inputs, output, dynamic axes and config, declared once.

As NVIDIA's TensorRT ``demo/Diffusion`` does for each network, this one description is what the ONNX
and OpenVINO exports (export/flux_export.py), the engine backends (runtime/engines/flux_backend.py) and
the pipeline adapter (runtime/engines/flux_adapter.py) all read:

- ``hidden_states [B, S_img, in_channels]``: packed 2x2 latent patches (384 for FLUX.1 Fill: 64 latent +
  64 masked image + 256 mask channels; 64 for Kontext and [dev]). Kontext's sequence is the image's
  tokens followed by the reference image's, so S_img varies with more than the picture size;
- ``encoder_hidden_states [B, S_txt, joint_attention_dim]`` (T5), ``pooled_projections [B, pooled_dim]``
  (CLIP), ``timestep [B]`` (the pipeline's t / 1000), ``img_ids [S_img, 3]``, ``txt_ids [S_txt, 3]``
  (RoPE positions) and, when the model embeds guidance (the [dev] models), ``guidance [B]``;
- output ``sample [B, S_img, out_channels]``.

Batch and both sequence lengths are dynamic. A ``FluxSpec`` travels in the engine manifest in place of
a ``UNetSpec``, so an engine is checked against a pipeline and dressed as its transformer without the
torch weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError, InvalidModelError
from .spec import _jsonable

if TYPE_CHECKING:
    import torch

FLUX_FAMILY = "flux"
HIDDEN, CONTEXT, POOLED, TIMESTEP, IMG_IDS, TXT_IDS, GUIDANCE = (
    "hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "img_ids", "txt_ids", "guidance")
OUTPUT = "sample"
BATCH, IMG_TOKENS, TXT_TOKENS = "batch", "img_tokens", "txt_tokens"
# input/output name -> {axis: symbolic name}: what stays dynamic in every export
DYNAMIC_AXES = {HIDDEN: {0: BATCH, 1: IMG_TOKENS}, CONTEXT: {0: BATCH, 1: TXT_TOKENS}, POOLED: {0: BATCH},
                TIMESTEP: {0: BATCH}, IMG_IDS: {0: IMG_TOKENS}, TXT_IDS: {0: TXT_TOKENS}, GUIDANCE: {0: BATCH},
                OUTPUT: {0: BATCH, 1: IMG_TOKENS}}


@dataclass(frozen=True)
class FluxSpec:
    """The interface of one ``FluxTransformer2DModel``: enough to feed it, check shapes and mimic its config."""

    in_channels: int
    out_channels: int
    context_dim: int  # joint_attention_dim (T5 width)
    pooled_dim: int  # pooled_projection_dim (CLIP width)
    guidance: bool  # guidance_embeds: the model takes a ``guidance`` input
    config: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    family: str = FLUX_FAMILY

    @property
    def is_sdxl(self) -> bool:
        return False

    @property
    def input_names(self) -> tuple[str, ...]:
        names = (HIDDEN, CONTEXT, POOLED, TIMESTEP, IMG_IDS, TXT_IDS)
        return (*names, GUIDANCE) if self.guidance else names

    @property
    def output_name(self) -> str:
        return OUTPUT

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """{name: {axis: label}} for every input and the output (torch.onnx.export's ``dynamic_axes``)."""
        return {name: DYNAMIC_AXES[name] for name in (*self.input_names, OUTPUT)}

    def describe(self) -> str:
        kind = "Fill" if self.in_channels == 384 else ("Kontext/[dev]" if self.in_channels == 64 else "")
        return f"FLUX transformer ({self.in_channels}-channel{', ' + kind if kind else ''})"

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "in_channels": self.in_channels, "out_channels": self.out_channels,
                "context_dim": self.context_dim, "pooled_dim": self.pooled_dim, "guidance": self.guidance,
                "config": _jsonable(self.config)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FluxSpec:
        try:
            return cls(in_channels=int(data["in_channels"]), out_channels=int(data["out_channels"]),
                       context_dim=int(data["context_dim"]), pooled_dim=int(data["pooled_dim"]),
                       guidance=bool(data["guidance"]), config=dict(data.get("config") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidModelError(f"the engine manifest's FLUX transformer description is incomplete: {exc}") from exc

    @classmethod
    def from_transformer(cls, transformer: Any) -> FluxSpec:
        """Describe a diffusers ``FluxTransformer2DModel`` (or an engine adapter standing in for one)."""
        config = dict(transformer.config)
        try:
            return cls(in_channels=int(config["in_channels"]),
                       out_channels=int(config.get("out_channels") or config["in_channels"]),
                       context_dim=int(config["joint_attention_dim"]), pooled_dim=int(config["pooled_projection_dim"]),
                       guidance=bool(config.get("guidance_embeds", False)), config=_jsonable(config))
        except KeyError as exc:
            raise InvalidModelError(f"not a FLUX transformer config: it has no {exc}") from exc


def is_flux_module(module: Any) -> bool:
    """True for a diffusers FLUX transformer (or an adapter with its config)."""
    config = getattr(module, "config", None)
    return config is not None and "joint_attention_dim" in config and "pooled_projection_dim" in config


def flux_feeds(spec: FluxSpec, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
               pooled_projections: torch.Tensor, timestep: torch.Tensor | float, img_ids: torch.Tensor,
               txt_ids: torch.Tensor, guidance: torch.Tensor | float | None = None) -> dict[str, torch.Tensor]:
    """Validated float32 inputs by engine input name; timestep and guidance become one value per row,
    ids of shape [1, S, 3] (the older diffusers layout) are taken as [S, 3]."""
    import torch

    if hidden_states.ndim != 3 or hidden_states.shape[2] != spec.in_channels:
        raise InvalidInputError(f"the {spec.describe()} takes hidden_states [batch, tokens, {spec.in_channels}], "
                                f"got {tuple(hidden_states.shape)}")
    batch, tokens = hidden_states.shape[:2]
    if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[2] != spec.context_dim:
        raise InvalidInputError(f"encoder_hidden_states must be [batch, tokens, {spec.context_dim}], "
                                f"got {tuple(encoder_hidden_states.shape)}")
    if pooled_projections.ndim != 2 or pooled_projections.shape[1] != spec.pooled_dim:
        raise InvalidInputError(f"pooled_projections must be [batch, {spec.pooled_dim}], "
                                f"got {tuple(pooled_projections.shape)}")
    img_ids, txt_ids = _ids(img_ids, IMG_IDS), _ids(txt_ids, TXT_IDS)
    if img_ids.shape[0] != tokens or txt_ids.shape[0] != encoder_hidden_states.shape[1]:
        raise InvalidInputError(f"img_ids {tuple(img_ids.shape)} / txt_ids {tuple(txt_ids.shape)} do not match the "
                                f"{tokens} image and {encoder_hidden_states.shape[1]} text tokens")
    feeds = {HIDDEN: hidden_states, CONTEXT: _rows(encoder_hidden_states, batch, CONTEXT),
             POOLED: _rows(pooled_projections, batch, POOLED), TIMESTEP: _per_row(timestep, batch, TIMESTEP),
             IMG_IDS: img_ids, TXT_IDS: txt_ids}
    if spec.guidance:
        if guidance is None:
            raise InvalidInputError("this FLUX transformer embeds guidance, so it needs a guidance value")
        feeds[GUIDANCE] = _per_row(guidance, batch, GUIDANCE)
    return {name: t.to(torch.float32) for name, t in feeds.items()}


def _ids(ids: torch.Tensor, name: str) -> torch.Tensor:
    if ids.ndim == 3 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 2 or ids.shape[1] != 3:
        raise InvalidInputError(f"{name} must be [tokens, 3], got {tuple(ids.shape)}")
    return ids


def _per_row(value: Any, batch: int, name: str) -> torch.Tensor:
    import torch

    t = torch.as_tensor(value)
    if t.numel() == 1:
        return t.reshape(1).expand(batch)
    if t.shape != (batch,):
        raise InvalidInputError(f"{name} must be one value or one per row ({batch}), got shape {tuple(t.shape)}")
    return t


def _rows(tensor: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if tensor.shape[0] == batch:
        return tensor
    if tensor.shape[0] == 1:
        return tensor.expand(batch, *tensor.shape[1:])
    raise InvalidInputError(f"{name} has {tensor.shape[0]} rows but hidden_states has {batch}")

