"""Find CLIP (and, for FLUX single files, T5) tokenizer files on disk for single-file checkpoints. Never
reaches a hub.

Looked for, in order: a folder passed in, ``$BACKDROP_CLIP_TOKENIZER``, folders registered at run
time (inside ComfyUI: its own ``comfy/sd1_tokenizer``), then the ``tokenizer/`` folder of any
diffusers pipeline in the model folders. SD1.x and SDXL share one BPE vocabulary; SDXL's second
tokenizer only pads with ``!`` instead of the end token.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import MissingModelError
from ..models import get_locator

TOKENIZER_ENV = "BACKDROP_CLIP_TOKENIZER"
REQUIRED_FILES = ("vocab.json", "merges.txt")
_registered: list[Path] = []


def register_tokenizer_dir(folder: str | os.PathLike) -> None:
    """Add a folder to search (nodes/ registers ComfyUI's bundled CLIP tokenizer)."""
    path = Path(folder)
    if path not in _registered:
        _registered.append(path)


def candidate_dirs(explicit: str | os.PathLike | None = None) -> list[Path]:
    """Every folder searched, in order."""
    return _search_order(explicit, TOKENIZER_ENV, _registered, "tokenizer")


def _search_order(explicit: str | os.PathLike | None, env: str, registered: list[Path], subfolder: str
                  ) -> list[Path]:
    """The folder passed in, ``$env``, the registered folders, then ``subfolder`` of every diffusers folder."""
    found: list[Path] = []
    if explicit:
        found.append(Path(explicit).expanduser())
    if os.environ.get(env):
        found.append(Path(os.environ[env]).expanduser())
    found.extend(registered)
    locator = get_locator()
    found.extend(locator.resolve("diffusers", name) / subfolder for name in locator.list("diffusers"))
    return found


def find_tokenizer_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The first folder holding vocab.json and merges.txt; the error lists every place looked."""
    looked = candidate_dirs(explicit)
    for folder in looked:
        if all((folder / f).is_file() for f in REQUIRED_FILES):
            return folder
    where = "\n".join(f"  - {p}" for p in looked) or "  (no folder configured)"
    raise MissingModelError(
        "Single-file checkpoints need the CLIP tokenizer files (vocab.json and merges.txt), and none were "
        f"found. Looked in:\n{where}\nInside ComfyUI they come from comfy/sd1_tokenizer; elsewhere set "
        f"${TOKENIZER_ENV} to a folder holding them, or pass --tokenizer-dir.")


def write_tokenizer(source: Path, target: Path, pad_token: str) -> None:
    """Copy the BPE files into ``target`` with a CLIPTokenizer config that pads with ``pad_token``."""
    target.mkdir(parents=True, exist_ok=True)
    for name in REQUIRED_FILES:
        shutil.copyfile(source / name, target / name)
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
    }
    (target / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


# ------------------------------------------------------------------------------------------- T5 (FLUX)

T5_TOKENIZER_ENV = "BACKDROP_T5_TOKENIZER"
T5_FILES = ("tokenizer.json", "spiece.model")  # either one: transformers' T5 tokenizer reads both
_registered_t5: list[Path] = []


def register_t5_tokenizer_dir(folder: str | os.PathLike) -> None:
    """Add a folder to search for the T5 tokenizer (nodes/ registers ComfyUI's comfy/text_encoders/t5_tokenizer)."""
    path = Path(folder)
    if path not in _registered_t5:
        _registered_t5.append(path)


def t5_candidate_dirs(explicit: str | os.PathLike | None = None) -> list[Path]:
    """Every folder searched for the T5 tokenizer, in order: the folder passed in, ``$BACKDROP_T5_TOKENIZER``,
    registered folders, then ``tokenizer_2/`` of every diffusers folder (FLUX pipelines keep T5's there)."""
    return _search_order(explicit, T5_TOKENIZER_ENV, _registered_t5, "tokenizer_2")


def find_t5_tokenizer_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The first folder holding a T5 tokenizer (tokenizer.json or spiece.model); the error lists every place looked."""
    looked = t5_candidate_dirs(explicit)
    for folder in looked:
        if any((folder / f).is_file() for f in T5_FILES) and _is_t5_folder(folder):
            return folder
    where = "\n".join(f"  - {p}" for p in looked) or "  (no folder configured)"
    raise MissingModelError(
        "FLUX single files need the T5 tokenizer files (tokenizer.json or spiece.model, with "
        f"tokenizer_config.json), and none were found. Looked in:\n{where}\nInside ComfyUI they come from "
        f"comfy/text_encoders/t5_tokenizer; elsewhere set ${T5_TOKENIZER_ENV} to a folder holding them (the "
        "tokenizer_2/ folder of black-forest-labs/FLUX.1-Fill-dev, for example), or put a FLUX diffusers folder "
        "in models/diffusers.")


def _is_t5_folder(folder: Path) -> bool:
    """Not a CLIP tokenizer that happens to have a tokenizer.json: its config names T5 (or says nothing)."""
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return (folder / "spiece.model").is_file()
    return "T5" in str(config.get("tokenizer_class", "T5"))


def load_t5_tokenizer(folder: Path):
    """transformers' T5 tokenizer from ``folder``, offline."""
    from transformers import T5Tokenizer

    return T5Tokenizer.from_pretrained(str(folder), local_files_only=True)
