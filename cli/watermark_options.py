"""``backdrop run --watermark``: mark each output, record it in the signed ledger, save it with a C2PA manifest."""

from __future__ import annotations

import argparse
import getpass
from pathlib import Path

import numpy as np


def add_watermark_arguments(run: argparse.ArgumentParser) -> None:
    group = run.add_argument_group("watermark and provenance")
    group.add_argument("--watermark", action="store_true",
                       help="embed an invisible ID in every output, record prompt/seed/models/account in the signed "
                            "ledger and add a C2PA manifest (outputs become 8-bit; product pixels stay exact)")
    group.add_argument("--account", default=None, help="account recorded with each output (default: your user name)")
    group.add_argument("--no-c2pa", action="store_true", help="with --watermark: no C2PA manifest in the files")


def model_hashes(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, str]]:
    """SHA-256 of the checkpoint and each LoRA the run used, for the provenance record."""
    from ..runtime.inpainting.loader import split_model_name
    from ..runtime.models import get_locator
    from ..runtime.provenance.file_hashes import file_sha256
    from .inpaint_options import parse_lora

    locator, models, loras = get_locator(), {}, {}
    if args.checkpoint:
        kind, name = split_model_name(args.checkpoint)
        path = locator.resolve(kind, name)
        if path.is_file():
            models[f"{kind}/{name}"] = file_sha256(path)
    for text in args.lora:
        name, _ = parse_lora(text)
        loras[name] = file_sha256(locator.resolve("loras", name))
    return models, loras


def write_marked(path: Path, image: np.ndarray, product: np.ndarray, args: argparse.Namespace, prompt: str,
                 negative: str, hashes: tuple[dict[str, str], dict[str, str]], style: str) -> Path:
    """Mark ``image`` (float [H,W,C]) around its exact ``product`` (bool [H,W]), record it and save it."""
    from ..runtime.imaging import to_integer
    from ..runtime.provenance.keys import load_keys
    from ..runtime.saving import SaveOptions, save_image
    from ..runtime.watermark.service import mark_for_run

    marked, record = mark_for_run(to_integer(image, 8), account=args.account or getpass.getuser(), prompt=prompt,
                                  negative_prompt=negative, seed=args.seed, models=hashes[0], loras=hashes[1],
                                  metadata={"style": style}, protect=product)
    options = SaveOptions(fmt={"jpg": "jpeg"}.get(args.format, args.format), quality=95, c2pa=not args.no_c2pa)
    saved = save_image(marked, path, options, keys=load_keys(),
                       binding=lambda _pixels: (record.id, record.record_hash))
    return saved.path
