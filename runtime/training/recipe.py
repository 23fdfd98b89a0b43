"""The whole recipe behind ``backdrop train-lora`` and the BackdropTrainLoRA node:
prepare the dataset, train stage 1, optionally stage 2, save the LoRA(s) to models/loras."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..progress import ProgressFn
from .checkpoints import latest_checkpoint
from .dataset import DatasetReport, list_images, prepare_dataset
from .trainer import LossFn, TrainConfig, TrainResult, train_lora


@dataclass
class RecipeResult:
    """What a run produced: the saved LoRA file(s), the dataset report and the training records."""

    lora_path: Path
    stage1: TrainResult
    dataset: DatasetReport
    stage1_path: Path | None = None
    stage2: TrainResult | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A short human report: images used/skipped, losses, where the LoRA went."""
        lines = [f"dataset: {len(self.dataset.entries)} images ({self.dataset.reused} reused), "
                 f"hash {self.dataset.dataset_hash}"]
        if self.dataset.no_product:
            lines.append(f"excluded (no product found): {', '.join(self.dataset.no_product)}")
        if self.dataset.unreadable:
            lines.append("skipped (unreadable): " + ", ".join(n for n, _ in self.dataset.unreadable))
        for label, result in (("stage 1", self.stage1), ("stage 2", self.stage2)):
            if result is not None and result.losses:
                tail = result.losses[-min(10, len(result.losses)):]
                lines.append(f"{label}: {result.steps} steps, first loss {result.losses[0]:.4f}, "
                             f"mean of last {len(tail)} {sum(tail) / len(tail):.4f}")
        lines.append(f"LoRA: {self.lora_path}")
        return "\n".join(lines + self.notes)


@dataclass(frozen=True)
class Recipe:
    """What to train: the photo folder, the LoRA's name, stage-1 settings, and the optional curated stage 2."""

    dataset_folder: str | os.PathLike
    lora_name: str
    config: TrainConfig
    dataset_dir: str | os.PathLike | None = None  # masks + manifest (default: beside the photos)
    curated: str | os.PathLike | None = None  # stage 2: a folder or a CSV of scored images
    stage2_steps: int = 0
    top_k: int | None = None
    weighting: str = "uniform"
    resume: bool = False  # continue stage 1 from the newest checkpoint in config.checkpoint_dir


def run_recipe(handle, recipe: Recipe, captioner=None, sam=None,
               progress_factory: Callable[[str, int], ProgressFn] | None = None,
               on_loss: LossFn | None = None) -> RecipeResult:
    """Prepare the dataset, train stage 1 (resuming the newest checkpoint when ``recipe.resume``), then stage 2
    on ``recipe.curated`` when ``recipe.stage2_steps`` > 0. The final LoRA is saved as ``recipe.lora_name``
    (stage 1 alone is also kept, as ``<lora_name>_stage1``, when stage 2 runs)."""
    from .stage2 import curated_entries, stage2_config

    def progress(label: str, total: int) -> ProgressFn | None:
        return progress_factory(label, total) if progress_factory else None

    config, lora_name = recipe.config, recipe.lora_name
    config.check_for(handle)  # before the dataset is prepared
    images = list_images(recipe.dataset_folder)
    dataset = prepare_dataset(recipe.dataset_folder, recipe.dataset_dir, captioner=captioner, sam=sam,
                              progress=progress("preparing dataset", max(1, len(images))))
    resume_from = latest_checkpoint(config.checkpoint_dir) if recipe.resume and config.checkpoint_dir else None
    notes = [f"resumed from {resume_from}"] if resume_from else []
    stage1 = train_lora(handle, dataset.entries, config, progress=progress("stage 1", config.steps),
                        on_loss=on_loss, resume_from=resume_from)
    if recipe.curated is None or recipe.stage2_steps <= 0:
        path = stage1.save(lora_name, extra={"stage": "1"})
        return RecipeResult(path, stage1, dataset, notes=notes)
    stage1_path = stage1.save(f"{Path(lora_name).name.removesuffix('.safetensors')}_stage1", extra={"stage": "1"})
    entries = curated_entries(dataset.entries, recipe.curated, top_k=recipe.top_k, weighting=recipe.weighting)
    config2 = stage2_config(config, stage1_path, steps=recipe.stage2_steps)
    stage2 = train_lora(handle, entries, config2, progress=progress("stage 2", recipe.stage2_steps), on_loss=on_loss)
    path = stage2.save(lora_name, extra={"stage": "2", "stage1_lora": stage1_path.name,
                                         "stage1_dataset_hash": stage1.dataset_hash,
                                         "stage1_steps": stage1.steps})
    return RecipeResult(path, stage1, dataset, stage1_path=stage1_path, stage2=stage2,
                        notes=[*notes, f"stage 2 on {len(entries)} curated images"])
