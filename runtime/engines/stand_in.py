"""``EngineStandIn``: the surface every engine-backed stand-in for a diffusers model shares.

diffusers pipelines read ``.config``, ``.dtype`` and ``.device`` of their models and move them with ``.to``; a module
whose work runs on an engine answers those from what it was built with and records where the pipeline moves it
(the engine keeps its own precision). Subclasses add the forward pass the pipeline calls.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InvalidInputError


class EngineStandIn(torch.nn.Module):
    """``config`` / ``dtype`` / ``device`` / ``to`` for a module that forwards to an engine; ``cpu_only`` engines
    refuse a move to another device."""

    cpu_only = False

    def __init__(self, config: Any, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self._internal_dict = config
        self._dtype = dtype
        self._device = torch.device(device)

    @property
    def config(self) -> Any:
        return self._internal_dict

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, *args: Any, **kwargs: Any) -> EngineStandIn:
        """Record the device/dtype the pipeline moves to (the engine keeps its own precision)."""
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None:
            if self.cpu_only and torch.device(device).type != "cpu":
                raise InvalidInputError(f"{type(self).__name__} runs an OpenVINO engine on the CPU, not on {device}")
            self._device = torch.device(device)
        if dtype is not None:
            self._dtype = dtype
        return self
