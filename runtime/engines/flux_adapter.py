"""``BackendFluxTransformer``: a FLUX transformer engine dressed as diffusers' ``FluxTransformer2DModel``.

diffusers' ``FluxFillPipeline`` and ``FluxKontextInpaintPipeline`` use ``pipe.transformer`` through a
small surface: ``transformer(hidden_states=..., timestep=t / 1000, guidance=..., pooled_projections=...,
encoder_hidden_states=..., txt_ids=..., img_ids=..., joint_attention_kwargs=..., return_dict=False)[0]``,
``.config`` (in_channels, guidance_embeds...), ``.dtype`` and ``.device``. This module provides exactly
that, as ``BackendUNet`` does for the UNet pipelines. What an engine cannot honour (ControlNet residuals,
IP-Adapter embeddings, a LoRA scale other than the one baked in) raises a clear error.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InvalidInputError
from .flux_backend import FluxBackend
from .stand_in import EngineStandIn


class BackendFluxTransformer(EngineStandIn):
    """A ``torch.nn.Module`` a FLUX pipeline can use as ``pipe.transformer``; it forwards to ``backend``."""

    def __init__(self, backend: FluxBackend, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        from diffusers.configuration_utils import FrozenDict

        spec = backend.spec
        super().__init__(FrozenDict({**spec.config, "in_channels": spec.in_channels,
                                     "out_channels": spec.out_channels, "guidance_embeds": spec.guidance}),
                         dtype, device)
        self.backend = backend

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                pooled_projections: torch.Tensor | None = None, timestep: torch.Tensor | None = None,
                img_ids: torch.Tensor | None = None, txt_ids: torch.Tensor | None = None,
                guidance: torch.Tensor | None = None, joint_attention_kwargs: dict[str, Any] | None = None,
                controlnet_block_samples: Any = None, controlnet_single_block_samples: Any = None,
                return_dict: bool = True, controlnet_blocks_repeat: bool = False) -> Any:
        if controlnet_block_samples is not None or controlnet_single_block_samples is not None:
            raise InvalidInputError(f"the {self.backend.name} FLUX transformer engine cannot take ControlNet "
                                    "residuals; use the torch transformer")
        _check_joint_attention_kwargs(joint_attention_kwargs, self.backend.name)
        missing = [n for n, v in (("encoder_hidden_states", encoder_hidden_states), ("timestep", timestep),
                                  ("pooled_projections", pooled_projections), ("img_ids", img_ids),
                                  ("txt_ids", txt_ids)) if v is None]
        if missing:
            raise InvalidInputError(f"the FLUX transformer engine needs {', '.join(missing)}")
        out = self.backend.run(hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids,
                               guidance)
        if not return_dict:
            return (out,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=out)

    def extra_repr(self) -> str:
        return f"backend={self.backend.name}, {self.backend.spec.describe()}, dynamic shapes"


def _check_joint_attention_kwargs(kwargs: dict[str, Any] | None, backend: str) -> None:
    if not kwargs:
        return
    scale = kwargs.get("scale", 1.0)
    if set(kwargs) - {"scale"} or float(scale) != 1.0:
        raise InvalidInputError(f"the {backend} FLUX transformer engine has its LoRA strengths baked in and cannot "
                                f"take joint_attention_kwargs {sorted(kwargs)} (IP-Adapter embeddings, a LoRA "
                                "scale); export an engine with the strengths you want")
