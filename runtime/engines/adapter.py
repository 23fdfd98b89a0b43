"""``BackendUNet``: any UNet backend dressed as a diffusers ``UNet2DConditionModel``.

diffusers' SD1.5 and SDXL inpainting pipelines use ``pipe.unet`` through a small surface: calling it
with ``(sample, t, encoder_hidden_states=..., timestep_cond=..., cross_attention_kwargs=...,
added_cond_kwargs=..., return_dict=False)``, reading ``.config`` (in_channels, sample_size,
time_cond_proj_dim, addition_time_embed_dim), ``.dtype`` / ``.device``, and for SDXL
``.add_embedding.linear_1.in_features``. This module provides exactly that surface, so a pipeline runs
an ONNX or TensorRT engine with no other change. Features an engine cannot honour (ControlNet
residuals, timestep conditioning, a LoRA scale other than the one baked in) raise a clear error.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from ..errors import InvalidInputError
from .base import UNetBackend
from .stand_in import EngineStandIn


class BackendUNet(EngineStandIn):
    """A ``torch.nn.Module`` a diffusers pipeline can use as ``pipe.unet``; it forwards to ``backend``."""

    def __init__(self, backend: UNetBackend, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        from diffusers.configuration_utils import FrozenDict

        spec = backend.spec
        config = {"time_cond_proj_dim": None, "sample_size": 64, "addition_time_embed_dim": None, **spec.config,
                  "in_channels": spec.in_channels, "out_channels": spec.out_channels}
        super().__init__(FrozenDict(config), dtype, device)
        self.backend = backend
        if spec.is_sdxl:
            in_features = spec.text_embeds_dim + spec.time_ids_dim * int(config["addition_time_embed_dim"])
            self.add_embedding = SimpleNamespace(linear_1=SimpleNamespace(in_features=in_features))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                encoder_hidden_states: torch.Tensor, class_labels: torch.Tensor | None = None,
                timestep_cond: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                cross_attention_kwargs: dict[str, Any] | None = None,
                added_cond_kwargs: dict[str, torch.Tensor] | None = None,
                down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
                mid_block_additional_residual: torch.Tensor | None = None,
                down_intrablock_additional_residuals: tuple[torch.Tensor, ...] | None = None,
                encoder_attention_mask: torch.Tensor | None = None, return_dict: bool = True) -> Any:
        unsupported = {"class_labels": class_labels, "timestep_cond": timestep_cond, "attention_mask": attention_mask,
                       "down_block_additional_residuals": down_block_additional_residuals,
                       "mid_block_additional_residual": mid_block_additional_residual,
                       "down_intrablock_additional_residuals": down_intrablock_additional_residuals,
                       "encoder_attention_mask": encoder_attention_mask}
        given = [name for name, value in unsupported.items() if value is not None]
        if given:
            raise InvalidInputError(f"the {self.backend.name} UNet engine cannot take {', '.join(given)} "
                                    "(ControlNet, LCM timestep conditioning and attention masks need the torch UNet)")
        _check_attention_kwargs(cross_attention_kwargs, self.backend.name)
        added = added_cond_kwargs or {}
        out = self.backend.run(sample, timestep, encoder_hidden_states, added.get("text_embeds"),
                               added.get("time_ids"))
        out = out.to(device=sample.device, dtype=sample.dtype)
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)

    def extra_repr(self) -> str:
        profile = self.backend.profile.describe() if self.backend.profile else "any shape"
        return f"backend={self.backend.name}, {self.backend.spec.describe()}, profile: {profile}"


def _check_attention_kwargs(kwargs: dict[str, Any] | None, backend: str) -> None:
    if not kwargs:
        return
    scale = kwargs.get("scale", 1.0)
    if set(kwargs) - {"scale"} or float(scale) != 1.0:
        raise InvalidInputError(f"the {backend} UNet engine has its LoRA strengths baked in and cannot take "
                                f"cross_attention_kwargs {sorted(kwargs)}; export an engine with the strengths "
                                "you want, or refit a refittable one")
