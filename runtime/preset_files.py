"""Reading the editable JSON preset files (styles, compositions) with clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import InvalidInputError


def read_preset_entries(path: str, key: str, what: str) -> tuple[dict[str, Any], list[Any]]:
    """The parsed file and its non-empty ``key`` list; ``what`` names the file kind in errors."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"cannot read the {what} presets file {path}: {exc}") from exc
    entries = data.get(key) if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InvalidInputError(f"{path} must hold {{'{key}': [...]}} with at least one preset")
    return data, entries


def fragments(value: Any) -> tuple[str, ...]:
    """A prompt-fragment list from a string or a list of strings, blanks dropped."""
    items = [value] if isinstance(value, str) else list(value)
    return tuple(str(v).strip() for v in items if str(v).strip())
