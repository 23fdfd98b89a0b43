"""Loading weights safely: safetensors first, ``torch.load(weights_only=True)`` otherwise, never pickle."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import InvalidModelError


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Load tensors safely: safetensors, or ``torch.load(weights_only=True)`` for .pth/.pt/.ckpt/.bin."""
    import torch

    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files raise many different types
        reason = f"{type(exc).__name__}: {exc}"
        raise InvalidModelError(f"{path.name} could not be read as a weights file ({reason})") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidModelError(f"{path.name} does not hold a flat dictionary of tensors")
    return state


def file_fingerprint(path: str | os.PathLike) -> tuple[str, int, int]:
    """A cheap identity for cache keys: resolved path, size and mtime."""
    st = Path(path).stat()
    return (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
