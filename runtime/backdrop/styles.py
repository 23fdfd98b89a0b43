"""Style presets: one editable JSON file of names, prompt fragments, negative prompts and palettes."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import InvalidInputError
from ..preset_files import fragments, read_preset_entries

DEFAULT_STYLES_FILE = Path(__file__).resolve().parent.parent / "presets" / "styles.json"
STYLES_ENV = "BACKDROP_STYLES_FILE"
PALETTE_KEYS = ("wall", "floor", "accent")


@dataclass(frozen=True)
class StyleLook:
    """How the weight-free studio backdrop renders a style (each 0..1)."""

    shadow: float = 0.5
    vignette: float = 0.25
    light: float = 0.5


@dataclass(frozen=True)
class StylePreset:
    name: str
    prompt: tuple[str, ...]
    negative: tuple[str, ...]
    palette: dict[str, tuple[float, float, float]]
    look: StyleLook

    @property
    def prompt_text(self) -> str:
        return ", ".join(self.prompt)

    @property
    def negative_text(self) -> str:
        return ", ".join(self.negative)


def style_key(name: str) -> str:
    """Normalise a style name: case-insensitive, spaces/-/_ equivalent."""
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def hex_to_rgb(value: str) -> tuple[float, float, float]:
    text = value.strip().lstrip("#")
    if not re.fullmatch(r"[0-9a-fA-F]{6}", text):
        raise InvalidInputError(f"palette colour {value!r} is not a #RRGGBB hex colour")
    return tuple(int(text[i : i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]


def styles_file() -> Path:
    """``$BACKDROP_STYLES_FILE`` if set (a studio's own presets), else the shipped file."""
    return Path(os.environ.get(STYLES_ENV) or DEFAULT_STYLES_FILE)


def load_styles(path: str | os.PathLike | None = None) -> dict[str, StylePreset]:
    """All presets in file order, keyed by display name."""
    return dict(_load_cached(str(Path(path) if path else styles_file())))


@lru_cache(maxsize=8)
def _load_cached(path: str) -> tuple[tuple[str, StylePreset], ...]:
    _, entries = read_preset_entries(path, "styles", "style")
    presets: list[tuple[str, StylePreset]] = []
    seen: set[str] = set()
    for entry in entries:
        preset = _parse_preset(entry, path)
        if style_key(preset.name) in seen:
            raise InvalidInputError(f"{path}: style {preset.name!r} is defined twice")
        seen.add(style_key(preset.name))
        presets.append((preset.name, preset))
    return tuple(presets)


def _parse_preset(entry: dict, path: str) -> StylePreset:
    try:
        name = str(entry["name"]).strip()
        palette = {key: hex_to_rgb(entry["palette"][key]) for key in PALETTE_KEYS}
        look = StyleLook(**{k: float(v) for k, v in (entry.get("look") or {}).items()})
        prompt = fragments(entry.get("prompt", ()))
        negative = fragments(entry.get("negative", ()))
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"{path}: invalid style entry {entry!r}: {exc}") from exc
    if not name:
        raise InvalidInputError(f"{path}: a style has an empty name")
    return StylePreset(name=name, prompt=prompt, negative=negative, palette=palette, look=look)


def style_names(path: str | os.PathLike | None = None) -> list[str]:
    return list(load_styles(path))


def get_style(name: str, path: str | os.PathLike | None = None) -> StylePreset:
    """Look a preset up by name ("soft spring", "Soft-Spring" and "SOFT_SPRING" all match)."""
    styles = load_styles(path)
    wanted = style_key(name)
    for preset in styles.values():
        if style_key(preset.name) == wanted:
            return preset
    raise InvalidInputError(f"unknown style {name!r}; available: {', '.join(styles)}")
