"""``backdrop run --watermark``: mark each output, record it in the signed ledger, save it with a C2PA manifest."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .run_plan import RunPlan


def add_watermark_arguments(run: argparse.ArgumentParser) -> None:
    group = run.add_argument_group("watermark and provenance")
    group.add_argument("--watermark", action="store_true",
                       help="embed an invisible ID in every output, record prompt/seed/models/account in the signed "
                            "ledger and add a C2PA manifest (outputs become 8-bit; product pixels stay exact)")
    group.add_argument("--account", default=None, help="account recorded with each output (default: your user name)")
    group.add_argument("--no-c2pa", action="store_true", help="with --watermark: no C2PA manifest in the files")
    group.add_argument("--watermark-codec", type=int, choices=(1, 2, 3), default=None, metavar="{1,2,3}",
                       help="with --watermark: the codec version of the mark: 3 (the default: survives mirrors, "
                            "90-degree turns, JPEG 20, small crops and thumbnails of >= 1 MP pictures, resists "
                            "averaging; 40-bit IDs), 2 (the same carrier with 64-bit IDs) or 1 (the first codec; "
                            "docs/watermark.md); the record and the C2PA soft binding name it")
    group.add_argument("--ledger", default=None, metavar="LOCATION",
                       help="with --watermark: record into this ledger, a postgresql://USER@HOST/DB URL (many "
                            "writers on many machines) or an SQLite file (default: ledger.sqlite3 in the home)")


def model_hashes(checkpoint: str | None, loras: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """SHA-256 of the checkpoint file (a diffusers folder is not hashed) and each LoRA the run used."""
    from ..runtime.inpainting.loader import split_model_name
    from ..runtime.models import get_locator
    from ..runtime.provenance.file_hashes import hash_model_files

    locator, models = get_locator(), {}
    if checkpoint:
        kind, name = split_model_name(checkpoint)
        if locator.resolve(kind, name).is_file():
            models[f"{kind}/{name}"] = (kind, name)
    return hash_model_files(locator.resolve, models, loras)


def write_marked(path: Path, image: np.ndarray, product: np.ndarray, plan: RunPlan, prompt: str, negative: str,
                 hashes: tuple[dict[str, str], dict[str, str]], *, rename: bool = True,
                 idempotency_key: str | None = None, service=None) -> Path:
    """Mark ``image`` (float [H,W,C]) around its exact ``product`` (bool [H,W]), save it, then record it.

    The record is committed only once the file is saved: a failed save (or Ctrl-C) leaves no record, and
    if the record cannot be committed the file just written is removed again. One record per delivered file.
    ``rename=False`` writes exactly ``path`` (``FileExistsError`` if taken); ``idempotency_key`` is recorded with
    the record, and a second record under the same key is refused (``DuplicateRecordError``) before any file is
    written. ``service``: a ProvenanceService to use (a worker's, holding its keys in memory) instead of the home's.
    """
    from ..runtime.imaging import to_integer
    from ..runtime.provenance.records import RecordContent, WatermarkId
    from ..runtime.saving import SaveOptions, save_image
    from ..runtime.watermark.service import marked_for_delivery

    options = SaveOptions(fmt={"jpg": "jpeg"}.get(plan.format, plan.format), quality=95, c2pa=plan.watermark.c2pa)
    content = RecordContent(account=plan.watermark.account, prompt=prompt, negative_prompt=negative, seed=plan.seed,
                            models=dict(hashes[0]), loras=dict(hashes[1]), metadata={"style": plan.style.name})
    saved = None
    try:
        extra = {} if idempotency_key is None else {"idempotency_key": idempotency_key}
        with marked_for_delivery(to_integer(image, 8), content, protect=product, ledger=plan.watermark.ledger,
                                 service=service, watermark_version=plan.watermark.version,
                                 **extra) as (marked, record, used):
            wid = WatermarkId(record.id, record.watermark_version)  # the C2PA soft binding names the codec
            saved = save_image(marked, path, options, keys=used.keys,
                               binding=lambda _pixels: (wid, record.record_hash), rename=rename)
    except BaseException:
        if saved is not None:  # saved, but the record did not commit: take back the file we just wrote
            for written in (saved.path, saved.sidecar):
                if written is not None:
                    Path(written).unlink(missing_ok=True)
        raise
    return saved.path
