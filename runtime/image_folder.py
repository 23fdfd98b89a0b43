"""A folder of product photos as a list: the catalog batch behind ``BackdropLoadImageFolder``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidInputError
from .imaging import IMAGE_SUFFIXES, LoadedImage, image_files, read_image


@dataclass(frozen=True)
class FolderBatch:
    """The images read (in name order), their file stems, and the files skipped with the reason."""

    images: list[LoadedImage]
    names: list[str]
    skipped: list[tuple[str, str]]

    def report(self) -> str:
        lines = [f"loaded {len(self.images)} image(s)"]
        lines += [f"skipped {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)


def subfolders(root: Path) -> list[str]:
    """``.`` (the root itself) and the folders directly inside it, hidden ones left out."""
    try:
        found = sorted(p.name for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        found = []
    return [".", *found]


def load_folder(folder: Path, start: int = 0, limit: int = 0) -> FolderBatch:
    """Read files ``start`` .. ``start + limit`` (limit 0 = all) of ``folder``; unreadable ones are skipped
    and listed, never fatal. An empty result is an error naming the folder."""
    if start < 0 or limit < 0:
        raise InvalidInputError("start and limit must be 0 or more")
    files = image_files(folder)[start:]
    if limit:
        files = files[:limit]
    images, names, skipped = [], [], []
    for path in files:
        try:
            images.append(read_image(path))
            names.append(path.stem)
        except InvalidInputError as exc:
            skipped.append((path.name, str(exc)))
    if not images:
        detail = f" ({len(skipped)} unreadable)" if skipped else ""
        raise InvalidInputError(f"no readable images in {folder}{detail}; supported: {', '.join(IMAGE_SUFFIXES)}")
    return FolderBatch(images, names, skipped)
