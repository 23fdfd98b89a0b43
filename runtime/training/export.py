"""Save a trained LoRA as safetensors in a key format ComfyUI's LoraLoader maps, with training metadata.

SD1.5/SDXL UNets: ``lora_unet_<diffusers module path, '.' -> '_'>.lora_down.weight / .lora_up.weight /
.alpha``, the names ComfyUI maps onto a diffusers-layout UNet and that diffusers reads as a kohya LoRA.

FLUX transformers: the diffusers/peft layout ``transformer.<module path>.lora_A.weight / .lora_B.weight``
plus ``transformer.<module path>.alpha``. ComfyUI maps ``transformer.*`` names onto its FLUX model
through ``comfy.utils.flux_to_diffusers`` (q/k/v and single blocks' proj_mlp as slices of the fused BFL
``qkv`` / ``linear1`` weights) and reads the ``alpha``; diffusers' FLUX LoRA loader reads the same keys
(alphas as network alphas). A kohya/BFL file would need q/k/v merged into one ``qkv`` LoRA of three times
the rank; this layout keeps one LoRA per diffusers layer, exactly as trained.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, InvalidModelError

KOHYA_PREFIX = "lora_unet_"
DIFFUSERS_PREFIX = "transformer."
LAYOUTS = ("kohya", "diffusers")


def kohya_name(module_path: str) -> str:
    return KOHYA_PREFIX + module_path.replace(".", "_")


def to_kohya_state(peft_state: dict, alpha: float) -> dict:
    """peft keys (``<module>.lora_A.weight``) -> kohya keys with an ``alpha`` per module."""
    import torch

    out = {}
    for key, value in peft_state.items():
        module, _, role = key.rpartition(".lora_")
        if role not in ("A.weight", "B.weight"):
            raise InvalidModelError(f"unexpected LoRA key {key}")
        base = kohya_name(module)
        out[f"{base}.{'lora_down' if role.startswith('A') else 'lora_up'}.weight"] = value.detach().float().contiguous()
        out[f"{base}.alpha"] = torch.tensor(float(alpha))
    return out


def to_diffusers_state(peft_state: dict, alpha: float) -> dict:
    """peft keys (``<module>.lora_A.weight``) -> ``transformer.<module>.lora_A/B.weight``, an ``alpha`` per module."""
    import torch

    out = {}
    for key, value in peft_state.items():
        module, _, role = key.rpartition(".lora_")
        if role not in ("A.weight", "B.weight"):
            raise InvalidModelError(f"unexpected LoRA key {key}")
        out[f"{DIFFUSERS_PREFIX}{key}"] = value.detach().float().contiguous()
        out[f"{DIFFUSERS_PREFIX}{module}.alpha"] = torch.tensor(float(alpha))
    return out


def from_diffusers_state(state: dict) -> tuple[dict, float | None]:
    """``transformer.*`` LoRA keys -> peft keys (``<module>.lora_A.weight``); also returns alpha (None if absent)."""
    out, alpha = {}, None
    for key, value in state.items():
        if not key.startswith(DIFFUSERS_PREFIX):
            raise InvalidModelError(f"LoRA key {key} is not a transformer.* key of a FLUX LoRA")
        inner = key[len(DIFFUSERS_PREFIX):]
        if inner.endswith(".alpha"):
            alpha = float(value)
        elif inner.endswith((".lora_A.weight", ".lora_B.weight")):
            out[inner] = value
    return out, alpha


def from_kohya_state(state: dict, module_paths: list[str]) -> tuple[dict, float | None]:
    """kohya keys -> peft keys, resolving names against the adapter's module paths; also returns alpha."""
    by_name = {kohya_name(p): p for p in module_paths}
    out, alpha = {}, None
    for key, value in state.items():
        base, _, role = key.partition(".")
        if base not in by_name:
            raise InvalidModelError(f"LoRA key {key} matches no LoRA layer of this UNet")
        if role == "alpha":
            alpha = float(value)
        elif role in ("lora_down.weight", "lora_up.weight"):
            out[f"{by_name[base]}.lora_{'A' if 'down' in role else 'B'}.weight"] = value
    return out, alpha


# family -> kohya's ``ss_base_model_version`` (sd-scripts writes ``flux1`` for every FLUX.1 model)
BASE_MODEL_VERSIONS = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0", "flux-fill": "flux1", "flux-kontext": "flux1"}


def build_metadata(*, base_model: str, base_fingerprint: str, family: str, rank: int, alpha: float,
                   targets: list[str], steps: int, dataset_hash: str, unet_in_channels: int,
                   extra: dict[str, Any] | None = None) -> dict[str, str]:
    """safetensors metadata (strings only): ours under ``backdrop.*`` plus the kohya ``ss_*`` basics."""
    meta = {"backdrop.base_model": base_model, "backdrop.base_fingerprint": base_fingerprint,
            "backdrop.family": family, "backdrop.rank": str(rank), "backdrop.alpha": f"{alpha:g}",
            "backdrop.targets": json.dumps(list(targets)), "backdrop.steps": str(steps),
            "backdrop.dataset_hash": dataset_hash, "backdrop.unet_in_channels": str(unet_in_channels),
            "backdrop.task": "background-inpainting",
            "ss_network_module": "networks.lora_flux" if family.startswith("flux") else "networks.lora",
            "ss_network_dim": str(rank), "ss_network_alpha": f"{alpha:g}",
            "ss_base_model_version": BASE_MODEL_VERSIONS.get(family, "sd_v1"),
            "ss_steps": str(steps)}
    for key, value in (extra or {}).items():
        meta[f"backdrop.{key}"] = value if isinstance(value, str) else json.dumps(value)
    return meta


def save_lora(peft_state: dict, alpha: float, metadata: dict[str, str], name: str,
              folder: str | os.PathLike | None = None, layout: str = "kohya") -> Path:
    """Write the LoRA to ``folder`` (default: the first models/loras folder) without overwriting anything,
    in the ``kohya`` (SD UNets) or ``diffusers`` (FLUX transformers) key layout.

    Returns the path written; an existing name gets a ``-N`` suffix.
    """
    from safetensors.torch import save

    from ..files import write_bytes_exclusive
    from ..models import get_locator

    stem = Path(name).name.removesuffix(".safetensors")
    if not stem or stem.startswith("."):
        raise InvalidInputError(f"{name!r} is not a usable LoRA file name")
    if folder is None:
        folders = get_locator().folders("loras")
        if not folders:
            raise InvalidInputError("no models/loras folder is configured to save the LoRA into")
        folder = folders[0]
    if layout not in LAYOUTS:
        raise InvalidInputError(f"unknown LoRA layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    state = to_kohya_state(peft_state, alpha) if layout == "kohya" else to_diffusers_state(peft_state, alpha)
    payload = save(state, metadata=metadata)
    return write_bytes_exclusive(Path(folder) / f"{stem}.safetensors", payload)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})
