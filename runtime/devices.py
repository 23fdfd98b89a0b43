"""Device choices shared by every model loader: ``auto`` picks CUDA when torch sees a GPU."""

from __future__ import annotations

from .errors import InvalidInputError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str, auto: str | None = None) -> str:
    """``auto`` -> the host's choice when it has one (ComfyUI's ``--cpu`` keeps our models on the CPU too), else
    cuda when available, else cpu; ``cuda`` without a GPU is a clear error."""
    import torch

    if device not in DEVICES:
        raise InvalidInputError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "auto" and auto in ("cpu", "cuda"):
        device = auto
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("device 'cuda' was asked for, but torch sees no CUDA GPU; use 'auto' or 'cpu'")
    return device
