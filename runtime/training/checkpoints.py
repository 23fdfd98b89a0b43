"""Training checkpoints: LoRA weights, optimizer state, step, losses and the RNG state in one file.

Files are ``checkpoint-<step>.pt`` written with ``torch.save`` (atomically, never overwriting) and read
back with ``weights_only=True``. A checkpoint records what it was made with (base model, dataset hash,
rank, alpha, targets, UNet channels) and refuses to resume a different run.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path

from ..errors import InvalidInputError
from .lora_setup import load_lora_state, lora_state

CHECKPOINT_FORMAT = "backdrop-lora-checkpoint-v1"


def save_checkpoint(folder: Path, step: int, unet, optimizer, generator, scaler, losses, fingerprint,
                    config) -> Path:
    """Write ``checkpoint-<step>.pt`` in ``folder`` (a ``-N`` suffix if that name exists) and return its path."""
    import torch

    from ..files import write_bytes_exclusive

    payload = {"format": CHECKPOINT_FORMAT, "step": step, "lora": lora_state(unet),
               "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
               "scaler": scaler.state_dict() if scaler.is_enabled() else {},
               "losses": torch.tensor(losses, dtype=torch.float64), "fingerprint": json.dumps(fingerprint),
               "config": json.dumps(asdict(config))}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return write_bytes_exclusive(folder / f"checkpoint-{step:06d}.pt", buffer.getvalue())


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``folder``, or None."""
    found = sorted(Path(folder).glob("checkpoint-*.pt")) if Path(folder).is_dir() else []
    return found[-1] if found else None


def restore_checkpoint(path, unet, optimizer, generator, scaler, fingerprint) -> tuple[int, list[float]]:
    """Load a checkpoint into the given objects after checking it belongs to this run; returns (step, losses)."""
    import torch

    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad or foreign file
        raise InvalidInputError(f"{path.name} is not a readable training checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InvalidInputError(f"{path.name} is not a Backdrop LoRA training checkpoint")
    saved = json.loads(payload["fingerprint"])
    differs = [k for k in fingerprint if saved.get(k) != fingerprint[k]]
    if differs:
        raise InvalidInputError(f"checkpoint {path.name} was made with another {', '.join(differs)}; "
                                f"resume with the same base model, dataset and LoRA settings")
    load_lora_state(unet, payload["lora"])
    optimizer.load_state_dict(payload["optimizer"])
    generator.set_state(payload["generator"])
    if payload["scaler"] and scaler.is_enabled():
        scaler.load_state_dict(payload["scaler"])
    return int(payload["step"]), [float(x) for x in payload["losses"].tolist()]
