"""The UNet's sinusoidal embeddings (of the timestep, and SDXL's time ids), computed in fp32 outside an engine.

``sin(t * f)`` for t up to 999 (SDXL's time ids up to 1024 and more) needs fp32: in bf16, 999 is
stored to within 4, so the high frequencies of the embedding become noise. diffusers computes these
embeddings in fp32 even in a bf16 pipeline (``Timesteps`` has no weights and returns fp32), but
OpenVINO's CPU plugin, asked for bf16, runs the whole graph in bf16, ``Sin``/``Cos`` included, and ignores
the rt_info marks meant to keep a node in f32 (checked with OpenVINO 2026.4). Measured on a tiny SD1.5 UNet
(AMX Xeon): the bf16 engine's error against fp32 torch grew from 1.4e-2 at t=0 to 9.1e-2 at t=999, while
torch's own bf16 stayed at 1.5e-2.

So OpenVINO UNet engines take the embeddings as inputs (``timestep_embedding``, and for SDXL
``time_ids_embedding``) and the backend computes them here, with diffusers' own ``Timesteps`` built from
the UNet config in the manifest. Engines exported before this change (with a ``timestep`` input) still run.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidModelError
from .spec import TIME_IDS, TIMESTEP, UNetSpec

TIMESTEP_EMBEDDING = "timestep_embedding"
TIME_IDS_EMBEDDING = "time_ids_embedding"
EMBEDDED = {TIMESTEP: TIMESTEP_EMBEDDING, TIME_IDS: TIME_IDS_EMBEDDING}


def embeds_on_host(spec: UNetSpec) -> bool:
    """Whether this UNet's time embedding is the sinusoidal kind that ``HostTimeEmbeddings`` computes."""
    return spec.config.get("time_embedding_type", "positional") == "positional"


def engine_input_names(spec: UNetSpec) -> tuple[str, ...]:
    """The engine's inputs: the UNet's, with the timestep (and time ids) replaced by their embeddings."""
    return tuple(EMBEDDED.get(name, name) for name in spec.input_names)


class HostTimeEmbeddings:
    """``Timesteps(t)`` (and SDXL's ``add_time_proj(time_ids)``) in fp32, from the UNet's config."""

    def __init__(self, spec: UNetSpec) -> None:
        from diffusers.models.embeddings import Timesteps

        config = spec.config
        if not embeds_on_host(spec):
            raise InvalidModelError(f"the {spec.describe()} uses {config.get('time_embedding_type')!r} time "
                                    "embeddings, which are not computed outside the engine")
        try:
            flip, shift = bool(config.get("flip_sin_to_cos", True)), float(config.get("freq_shift", 0))
            self.time_proj = Timesteps(int(config["block_out_channels"][0]), flip, shift)
            self.add_time_proj = Timesteps(int(config["addition_time_embed_dim"]), flip, shift) \
                if spec.is_sdxl else None
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise InvalidModelError(f"the engine manifest's UNet config lacks what the time embedding needs: "
                                    f"{exc}") from exc

    def __call__(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Validated ``feeds`` (``unet_feeds``: one timestep per row) with the timestep and time ids replaced by
        their fp32 embeddings."""
        import torch

        out = {}
        for name, value in feeds.items():  # same order, the two values swapped for their embeddings in place
            if name == TIMESTEP:
                out[TIMESTEP_EMBEDDING] = self.time_proj(value.detach().to(device="cpu", dtype=torch.float32)).float()
            elif name == TIME_IDS and self.add_time_proj is not None:
                time_ids = value.detach().to(device="cpu", dtype=torch.float32)
                out[TIME_IDS_EMBEDDING] = self.add_time_proj(time_ids.flatten()).reshape(time_ids.shape[0], -1).float()
            else:
                out[name] = value
        return out
