"""What an exported UNet looks like from outside: its family, channels, conditioning inputs and config.

A ``UNetSpec`` travels in every engine manifest, so a backend can stand in for the torch UNet
(``BackendUNet.config``) without the torch weights being loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidModelError

FAMILIES = ("sd15", "sdxl")
SDXL_TIME_IDS = 6  # original size (2) + crop top-left (2) + target size (2)

SAMPLE, TIMESTEP, CONTEXT, TEXT_EMBEDS, TIME_IDS = ("sample", "timestep", "encoder_hidden_states",
                                                   "text_embeds", "time_ids")
OUTPUT = "noise_pred"


@dataclass(frozen=True)
class UNetSpec:
    """The interface of one UNet: enough to feed it, check shapes and mimic its diffusers config."""

    family: str
    in_channels: int
    out_channels: int
    context_dim: int
    latent_multiple: int  # latent height/width must be multiples of this (2 ** number of downsamplers)
    text_embeds_dim: int = 0  # SDXL pooled text embedding size; 0 for SD1.5
    time_ids_dim: int = 0  # SDXL micro-conditioning entries; 0 for SD1.5
    config: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_sdxl(self) -> bool:
        return self.family == "sdxl"

    @property
    def input_names(self) -> tuple[str, ...]:
        base = (SAMPLE, TIMESTEP, CONTEXT)
        return (*base, TEXT_EMBEDS, TIME_IDS) if self.is_sdxl else base

    def describe(self) -> str:
        kind = "inpaint" if self.in_channels == 9 else f"{self.in_channels}-channel"
        return f"{self.family} {kind} UNet"

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "in_channels": self.in_channels, "out_channels": self.out_channels,
                "context_dim": self.context_dim, "latent_multiple": self.latent_multiple,
                "text_embeds_dim": self.text_embeds_dim, "time_ids_dim": self.time_ids_dim,
                "config": _jsonable(self.config)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetSpec:
        try:
            spec = cls(family=str(data["family"]), in_channels=int(data["in_channels"]),
                       out_channels=int(data["out_channels"]), context_dim=int(data["context_dim"]),
                       latent_multiple=int(data["latent_multiple"]),
                       text_embeds_dim=int(data.get("text_embeds_dim", 0)),
                       time_ids_dim=int(data.get("time_ids_dim", 0)), config=dict(data.get("config") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidModelError(f"the engine manifest's UNet description is incomplete: {exc}") from exc
        if spec.family not in FAMILIES:
            raise InvalidModelError(f"unknown UNet family {spec.family!r} in the manifest; known: {FAMILIES}")
        return spec

    @classmethod
    def from_unet(cls, unet: Any, time_ids_dim: int = SDXL_TIME_IDS) -> UNetSpec:
        """Describe a diffusers ``UNet2DConditionModel`` (SD1.5-style, or SDXL with ``text_time`` embeddings)."""
        config = dict(unet.config)
        is_sdxl = config.get("addition_embed_type") == "text_time"
        text_dim = 0
        if is_sdxl:
            total = int(unet.add_embedding.linear_1.in_features)
            text_dim = total - int(config["addition_time_embed_dim"]) * time_ids_dim
            if text_dim <= 0:
                raise InvalidModelError(f"SDXL UNet's added embedding takes {total} values, too few for "
                                        f"{time_ids_dim} time ids of {config['addition_time_embed_dim']}")
        context = config.get("cross_attention_dim")
        if isinstance(context, (list, tuple)):
            context = context[0]
        return cls(family="sdxl" if is_sdxl else "sd15", in_channels=int(config["in_channels"]),
                   out_channels=int(config["out_channels"]), context_dim=int(context),
                   latent_multiple=2 ** (len(config["down_block_types"]) - 1), text_embeds_dim=text_dim,
                   time_ids_dim=time_ids_dim if is_sdxl else 0, config=_jsonable(config))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
