"""What the commands run on: the photos named on the command line, folders expanded."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..runtime.imaging import image_files


def collect_inputs(paths: Sequence[Path]) -> list[Path]:
    """Files as given, plus the images directly inside any folder (``image_files``: sorted, hidden files left
    out). Missing paths are kept, so they are reported as failures rather than silently dropped."""
    found: list[Path] = []
    for path in paths:
        found.extend(image_files(path) if path.is_dir() else [path])
    return found
