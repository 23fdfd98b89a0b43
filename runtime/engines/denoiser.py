"""Which engine contract a denoiser has: ``UNetSpec`` (SD1.5/SDXL UNets) or ``FluxSpec`` (FLUX transformers)."""

from __future__ import annotations

from typing import Any

from .flux_spec import FLUX_FAMILY, FluxSpec, is_flux_module
from .spec import UNetSpec


def spec_from_dict(data: dict[str, Any]) -> UNetSpec | FluxSpec:
    """The ``UNetSpec`` or (family ``flux``) ``FluxSpec`` a manifest describes."""
    if isinstance(data, dict) and data.get("family") == FLUX_FAMILY:
        return FluxSpec.from_dict(data)
    return UNetSpec.from_dict(data)


def denoiser_spec(module: Any) -> UNetSpec | FluxSpec:
    """The engine contract of a pipeline's denoiser: ``FluxSpec`` for a FLUX transformer, else ``UNetSpec``."""
    return FluxSpec.from_transformer(module) if is_flux_module(module) else UNetSpec.from_unet(module)
