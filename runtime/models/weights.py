"""Loading weights safely: safetensors first, ``torch.load(weights_only=True)`` otherwise, never pickle."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..errors import InvalidModelError


def read_weights_file(path: str | os.PathLike) -> Any:
    """What a weights file holds, read safely: safetensors, or ``torch.load(weights_only=True)`` for
    .pth/.pt/.ckpt/.bin (wrappers such as ``state_dict`` are kept; a file with pickled objects is refused)."""
    import torch

    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files raise many different types
        if _refused_pickle(exc):
            raise InvalidModelError(pickle_refusal_message(path, exc)) from None
        reason = f"{type(exc).__name__}: {exc}"
        raise InvalidModelError(f"{path.name} could not be read as a weights file ({reason})") from exc


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Load a flat dictionary of tensors safely (see :func:`read_weights_file`; ``state_dict``/``model`` wrappers
    are unwrapped)."""
    import torch

    path = Path(path)
    state = read_weights_file(path)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidModelError(f"{path.name} does not hold a flat dictionary of tensors")
    return state


def _refused_pickle(exc: Exception) -> bool:
    """torch's weights-only unpickler met something other than tensors and plain containers."""
    import pickle

    return isinstance(exc, pickle.UnpicklingError) and "weights only load failed" in str(exc).lower()


def pickle_refusal_message(path: Path, exc: Exception) -> str:
    """Say what happened in plain words (torch's own text advises ``weights_only=False``, which runs the code)."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    what = f" (it names {found.group(1)})" if found else ""
    return (
        f"{path.name} was refused for safety: besides tensors it holds pickled Python objects{what}, and loading "
        "those runs code from the file. Nothing in it was run. Use a .safetensors version of this model instead: "
        "ask its source for one, or convert it yourself on a machine where you trust the file (load it in "
        "Python, then save its tensors with safetensors.torch.save_file) and put the .safetensors file in the "
        "same model folder.")


def file_fingerprint(path: str | os.PathLike) -> tuple[str, int, int]:
    """A cheap identity for cache keys: resolved path, size and mtime."""
    st = Path(path).stat()
    return (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
