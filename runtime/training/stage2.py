"""Stage 2: a short aesthetic fine-tune on a curated subset, continuing from the stage-1 LoRA.

The subset is either a folder of curated photos (prepared like any dataset), or a CSV list of
``image,score`` rows naming images of the stage-1 dataset (by file name or path). From a list,
``top_k`` keeps the best-scored images; ``weighting="score"`` samples images in proportion to
their score instead of uniformly.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ..progress import ProgressFn
from .trainer import TrainConfig

WEIGHTINGS = ("uniform", "score")


def read_scores(path: str | os.PathLike) -> list[tuple[str, float]]:
    """``image,score`` rows (a header row is optional; a missing score counts as 1)."""
    path = Path(path)
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read the curated list {path}: {exc}") from exc
    out = []
    for number, row in enumerate(rows, 1):
        if not row or not row[0].strip() or row[0].strip().startswith("#"):
            continue
        name = row[0].strip()
        raw = row[1].strip() if len(row) > 1 else "1"
        try:
            score = float(raw)
        except ValueError:
            if number == 1:
                continue  # a header
            raise InvalidInputError(f"{path.name} line {number}: score {raw!r} is not a number") from None
        if score < 0:
            raise InvalidInputError(f"{path.name} line {number}: scores must be >= 0, got {score}")
        out.append((name, score))
    if not out:
        raise InvalidInputError(f"the curated list {path} names no images")
    return out


def curated_entries(stage1_entries: list[dict[str, Any]], curated: str | os.PathLike, top_k: int | None = None,
                    weighting: str = "uniform", progress: ProgressFn | None = None) -> list[dict[str, Any]]:
    """The stage-2 training entries: a prepared curated folder, or stage-1 entries chosen by a scored list."""
    from .dataset import prepare_dataset

    if weighting not in WEIGHTINGS:
        raise InvalidInputError(f"weighting must be one of {', '.join(WEIGHTINGS)}")
    curated = Path(curated)
    if curated.is_dir():
        entries = prepare_dataset(curated, progress=progress).entries
        return entries[:top_k] if top_k else entries
    scores = read_scores(curated)
    by_name: dict[str, dict] = {}
    for entry in stage1_entries:
        by_name[entry["image"]] = entry
        by_name.setdefault(Path(entry["image"]).name, entry)
    missing = [name for name, _ in scores if name not in by_name and str((curated.parent / name).resolve())
               not in by_name]
    if missing:
        raise InvalidInputError(f"{len(missing)} images of {curated.name} are not in the stage-1 dataset "
                                f"(or had no product): {', '.join(missing[:8])}")
    ranked = sorted(scores, key=lambda item: -item[1])
    if top_k:
        ranked = ranked[:top_k]
    chosen = []
    for name, score in ranked:
        entry = by_name.get(name) or by_name[str((curated.parent / name).resolve())]
        chosen.append({**entry, "weight": score if weighting == "score" else 1.0, "score": score})
    if weighting == "score" and not any(e["weight"] > 0 for e in chosen):
        raise InvalidInputError("every chosen image has score 0; nothing to sample with score weighting")
    return chosen


def stage2_config(stage1: TrainConfig, stage1_lora: str | os.PathLike, steps: int = 200,
                  learning_rate: float | None = None) -> TrainConfig:
    """Stage-1 settings continuing from ``stage1_lora`` (file path or models/loras name): fewer steps and,
    by default, a quarter of the learning rate."""
    return dataclasses.replace(stage1, init_lora=str(stage1_lora), steps=int(steps),
                               learning_rate=learning_rate if learning_rate is not None else stage1.learning_rate / 4,
                               checkpoint_dir=None)
