"""Dataset preparation: a folder of product photos -> product masks, captions and a JSON manifest.

The manifest (``manifest.json`` in the dataset's output folder) lists, per usable image, its path,
the product-mask PNG, a caption and the image's sha256. Preparation is resumable: entries whose
image sha256 is already in the manifest are kept as they are. Unreadable files are skipped and
listed; images whose product mask is empty are reported and excluded.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..imaging import IMAGE_SUFFIXES, image_files
from ..progress import ProgressFn, report
from ..provenance.file_hashes import file_sha256

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
MIN_PRODUCT_FRACTION = 0.002  # a product mask covering less than 0.2 % of the image counts as empty
MAX_BACKGROUND_FRACTION = 0.998  # ...and one covering (almost) everything leaves no background to learn


@dataclass
class DatasetReport:
    """What ``prepare_dataset`` did: the manifest path, its entries and what it left out (with reasons)."""

    manifest_path: Path
    entries: list[dict[str, Any]]
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    no_product: list[str] = field(default_factory=list)
    reused: int = 0

    @property
    def dataset_hash(self) -> str:
        return dataset_hash(self.entries)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (hidden files ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"dataset folder {folder} does not exist or is not a folder")
    return image_files(folder)


def dataset_hash(entries: list[dict[str, Any]]) -> str:
    """A digest of what training sees: every image's sha256 and caption, in order."""
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(f"{entry['sha256']}\n{entry['caption']}\n{entry.get('weight', 1.0)}\n".encode())
    return digest.hexdigest()[:16]


WORK_FOLDER = "backdrop-training"


def default_output_dir(folder: str | os.PathLike) -> Path:
    """``<folder>/.backdrop-dataset``: the CLI's default (``backdrop train-lora --dataset-dir`` moves it)."""
    return Path(folder) / ".backdrop-dataset"


def working_dir(root: str | os.PathLike, dataset_name: str) -> Path:
    """``<root>/backdrop-training/<dataset name>``: working files (masks, manifest, checkpoints) kept out of the
    user's photo folder, e.g. under ComfyUI's output folder. ``.`` (a whole input folder) becomes ``input``."""
    name = Path(str(dataset_name).strip()).name
    safe = "".join(c if c.isalnum() or c in "-_. " else "_" for c in name).strip(" .") or "input"
    return Path(root) / WORK_FOLDER / safe


def prepare_dataset(folder: str | os.PathLike, output_dir: str | os.PathLike | None = None, captioner=None,
                    sam=None, progress: ProgressFn | None = None) -> DatasetReport:
    """Mask and caption every image in ``folder`` and write the manifest; resumes a previous run.

    Captions come from ``<image stem>.txt`` beside the image when present, else from the captioning
    runtime (``captioner`` or the weight-free statistics captioner). Raises ``InvalidInputError`` when
    the folder holds no images or no image is usable, naming what was skipped.
    """
    images = list_images(folder)
    if not images:
        raise InvalidInputError(f"dataset folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    out = Path(output_dir) if output_dir is not None else default_output_dir(folder)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST_NAME
    done = {e["sha256"]: e for e in read_manifest(manifest_path)["entries"]} if manifest_path.exists() else {}
    result = DatasetReport(manifest_path=manifest_path, entries=[])
    visited: set[str] = set()
    try:
        for index, path in enumerate(images):
            _visit(path, done, visited, result, out, captioner, sam)
            report(progress, index + 1, len(images))
    except BaseException:
        # Interrupted (or failed): keep what is done so the next run resumes from here.
        result.entries += [e for sha, e in done.items() if sha not in visited]
        if result.entries:
            _write_manifest(manifest_path, result)
        raise
    if not result.entries:
        raise InvalidInputError(_nothing_usable_message(folder, result))
    _write_manifest(manifest_path, result)
    return result


def _visit(path: Path, done: dict, visited: set, result: DatasetReport, out: Path, captioner, sam) -> None:
    try:
        sha = file_sha256(path)
    except OSError as exc:
        result.unreadable.append((path.name, str(exc)))
        return
    visited.add(sha)
    previous = done.get(sha)
    if previous is not None and Path(previous["mask"]).is_file():
        entry = {**previous, "image": str(path.resolve())}
        caption_file = path.with_suffix(".txt")
        if caption_file.is_file():  # a caption file added or edited since the last run wins
            entry.update(caption=caption_file.read_text(encoding="utf-8").strip(), caption_source="txt")
        result.entries.append(entry)
        result.reused += 1
        return
    entry, problem = _prepare_one(path, sha, out, captioner, sam)
    if problem == "unreadable":
        result.unreadable.append((path.name, entry))
    elif problem == "no_product":
        result.no_product.append(path.name)
    else:
        result.entries.append(entry)


def _prepare_one(path: Path, sha: str, out: Path, captioner, sam) -> tuple[Any, str | None]:
    from ..captioning.pipeline import caption_for_run
    from ..imaging import read_image
    from ..masking.product_mask import product_mask

    try:
        image = read_image(path)
    except InvalidInputError as exc:
        return str(exc), "unreadable"
    pixels = image.rgb if image.alpha is None else np.dstack([image.rgb, image.alpha])
    mask = product_mask(pixels, sam=sam)
    coverage = float((mask > 0.5).mean())
    if coverage < MIN_PRODUCT_FRACTION or coverage > MAX_BACKGROUND_FRACTION:
        return None, "no_product"
    mask_path = _write_mask(out / "masks" / f"{sha[:16]}.png", mask)
    caption_file = path.with_suffix(".txt")
    if caption_file.is_file():
        caption, source = caption_file.read_text(encoding="utf-8").strip(), "txt"
    else:
        captions = caption_for_run(image.rgb, mask, captioner)
        caption = ", ".join(c for c in (captions["product_caption"], captions["background_caption"]) if c)
        source = captions["source"]
    return {"image": str(path.resolve()), "mask": str(mask_path.resolve()), "caption": caption,
            "caption_source": source, "sha256": sha, "product_fraction": round(coverage, 4)}, None


def _write_mask(path: Path, mask: np.ndarray) -> Path:
    import cv2

    if path.is_file():  # the same image prepared before: its mask is content-addressed, keep it
        return path
    from ..files import write_bytes_exclusive

    ok, encoded = cv2.imencode(".png", (np.clip(mask, 0, 1) * 255 + 0.5).astype(np.uint8))
    if not ok:
        raise InvalidInputError(f"could not encode the mask {path.name}")
    return write_bytes_exclusive(path, encoded.tobytes())


def _nothing_usable_message(folder, result: DatasetReport) -> str:
    parts = [f"no usable training image in {folder}"]
    if result.no_product:
        parts.append(f"no product found in: {', '.join(result.no_product)}")
    if result.unreadable:
        parts.append("unreadable: " + ", ".join(f"{name} ({why})" for name, why in result.unreadable))
    return "; ".join(parts)


def _write_manifest(path: Path, result: DatasetReport) -> None:
    """Replace the manifest atomically (it is our own file, rewritten as preparation progresses)."""
    payload = {"version": MANIFEST_VERSION, "dataset_hash": result.dataset_hash, "entries": result.entries,
               "unreadable": [{"file": n, "reason": r} for n, r in result.unreadable],
               "no_product": result.no_product}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check a manifest written by ``prepare_dataset``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"{path} is not a readable dataset manifest: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise InvalidInputError(f"{path} is not a dataset manifest (no 'entries' list)")
    for entry in data["entries"]:
        missing = {"image", "mask", "caption", "sha256"} - set(entry)
        if missing:
            raise InvalidInputError(f"{path}: an entry lacks {', '.join(sorted(missing))}")
    return data
