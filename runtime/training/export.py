"""Save a trained LoRA as safetensors in the kohya/ComfyUI key format, with training metadata.

Keys are ``lora_unet_<diffusers module path, '.' -> '_'>.lora_down.weight / .lora_up.weight / .alpha``:
the names ComfyUI's LoraLoader maps onto a diffusers-layout UNet, and that diffusers (our inpaint
node) reads as a kohya LoRA.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, InvalidModelError

KOHYA_PREFIX = "lora_unet_"


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


def build_metadata(*, base_model: str, base_fingerprint: str, family: str, rank: int, alpha: float,
                   targets: list[str], steps: int, dataset_hash: str, unet_in_channels: int,
                   extra: dict[str, Any] | None = None) -> dict[str, str]:
    """safetensors metadata (strings only): ours under ``backdrop.*`` plus the kohya ``ss_*`` basics."""
    meta = {"backdrop.base_model": base_model, "backdrop.base_fingerprint": base_fingerprint,
            "backdrop.family": family, "backdrop.rank": str(rank), "backdrop.alpha": f"{alpha:g}",
            "backdrop.targets": json.dumps(list(targets)), "backdrop.steps": str(steps),
            "backdrop.dataset_hash": dataset_hash, "backdrop.unet_in_channels": str(unet_in_channels),
            "backdrop.task": "background-inpainting",
            "ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": f"{alpha:g}",
            "ss_base_model_version": "sdxl_base_v1-0" if family == "sdxl" else "sd_v1",
            "ss_steps": str(steps)}
    for key, value in (extra or {}).items():
        meta[f"backdrop.{key}"] = value if isinstance(value, str) else json.dumps(value)
    return meta


def save_lora(peft_state: dict, alpha: float, metadata: dict[str, str], name: str,
              folder: str | os.PathLike | None = None) -> Path:
    """Write the LoRA to ``folder`` (default: the first models/loras folder) without overwriting anything.

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
    payload = save(to_kohya_state(peft_state, alpha), metadata=metadata)
    return write_bytes_exclusive(Path(folder) / f"{stem}.safetensors", payload)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})
