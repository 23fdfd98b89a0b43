"""Tiers: what each plan may do, read from ``DATA/tiers.toml`` (written from the defaults below on first use).

Every tier sets all five limits::

    [tiers.free]
    requests_per_minute = 30   # every authenticated request counts (GCRA: a burst of this many, then one per 60/N s)
    images_per_day = 20        # delivered images per UTC day; a job reserves its variations when it is accepted
    max_resolution = 1080      # longest side, in pixels, of a delivered image
    max_variations = 1         # images per job
    concurrent_jobs = 1        # jobs queued or running at once

Over a rate or quota (requests_per_minute, images_per_day, concurrent_jobs) the server answers 429 with
``Retry-After``; a request larger than the tier allows (max_resolution: 413, max_variations: 422) can never succeed
by waiting, so it is answered at once without ``Retry-After``. Every refusal names the limit (``limit`` in the JSON
body and the ``Backdrop-Limit`` header).

The server re-reads the file when it changes (checked at most once a second). An edit that does not parse keeps the
last good tiers in force and is logged; ``backdrop accounts set-tier`` refuses to use a broken file.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ...runtime.errors import InvalidInputError

LIMITS = ("requests_per_minute", "images_per_day", "max_resolution", "max_variations", "concurrent_jobs")
RELOAD_CHECK_S = 1.0

DEFAULT_TIERS_TOML = """\
# Tiers of `backdrop serve`. Edit freely: the server re-reads this file when it changes.
# Every tier sets all five limits. Accounts name their tier (`backdrop accounts set-tier NAME TIER`).
#
#   requests_per_minute  every authenticated request counts; over it: 429 + Retry-After
#   images_per_day       delivered images per UTC day (a job reserves its variations when accepted); 429
#   max_resolution       longest side of a delivered image, pixels (pick a smaller `resolution`); 413
#   max_variations       images per job; 422
#   concurrent_jobs      jobs queued or running at once; 429

[tiers.free]
requests_per_minute = 30
images_per_day = 20
max_resolution = 1080
max_variations = 1
concurrent_jobs = 1

[tiers.pro]
requests_per_minute = 300
images_per_day = 1000
max_resolution = 2048
max_variations = 4
concurrent_jobs = 4

[tiers.studio]
requests_per_minute = 1200
images_per_day = 20000
max_resolution = 8192
max_variations = 8
concurrent_jobs = 16
"""


@dataclass(frozen=True)
class Tier:
    name: str
    requests_per_minute: int
    images_per_day: int
    max_resolution: int
    max_variations: int
    concurrent_jobs: int

    def limits(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in LIMITS}


def _toml():
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    from .extras import require

    return require("tomli", "serve", "Reading tiers.toml on Python 3.10")


def parse_tiers(text: str, source: str = "tiers.toml") -> dict[str, Tier]:
    """The tiers in ``text``; any mistake is an InvalidInputError naming the tier and the setting."""
    toml = _toml()
    try:
        document = toml.loads(text)
    except toml.TOMLDecodeError as exc:
        raise InvalidInputError(f"{source} is not valid TOML: {exc}") from None
    table = document.get("tiers")
    if not isinstance(table, dict) or not table:
        raise InvalidInputError(f"{source} defines no tiers; add tables such as [tiers.free] with "
                                f"{', '.join(LIMITS)}")
    tiers = {}
    for name, values in table.items():
        if not isinstance(values, dict):
            raise InvalidInputError(f"{source}: tiers.{name} must be a table of limits")
        missing = [limit for limit in LIMITS if limit not in values]
        unknown = sorted(set(values) - set(LIMITS))
        if missing or unknown:
            problem = (f"lacks {', '.join(missing)}" if missing else "") + ("; " if missing and unknown else "") + (
                f"has unknown settings {', '.join(unknown)}" if unknown else "")
            raise InvalidInputError(f"{source}: tier {name!r} {problem} (each tier sets {', '.join(LIMITS)})")
        for limit in LIMITS:
            value = values[limit]
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if limit != "max_resolution" else 1):
                raise InvalidInputError(f"{source}: tier {name!r}: {limit} must be a whole number >= 0, got {value!r}")
        tiers[name] = Tier(name=name, **{limit: int(values[limit]) for limit in LIMITS})
    return tiers


def ensure_tiers_file(path: Path) -> Path:
    """Write the shipped defaults to ``path`` unless a tiers file is already there (never overwritten)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(DEFAULT_TIERS_TOML)
    return path


class TierBook:
    """The tiers of one data folder, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._tiers: dict[str, Tier] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self.last_error: str | None = None
        self.reload(strict=True)

    def reload(self, strict: bool = False) -> dict[str, Tier]:
        """Read the file now. ``strict``: a broken file raises; otherwise the last good tiers stay in force."""
        with self._lock:
            try:
                info = self.path.stat()
                tiers = parse_tiers(self.path.read_text(encoding="utf-8"), str(self.path))
            except (OSError, InvalidInputError) as exc:
                message = str(exc) if isinstance(exc, InvalidInputError) else f"cannot read {self.path}: {exc}"
                if strict or not self._tiers:
                    raise InvalidInputError(message) from None
                if message != self.last_error:
                    logging.getLogger("backdrop.serve").error("tiers file not reloaded, the last good tiers stay "
                                                              "in force: %s", message)
                self.last_error = message
                self._stamp = None  # try again on the next check
                return self._tiers
            self._tiers, self._stamp, self.last_error = tiers, (info.st_mtime_ns, info.st_size), None
            return tiers

    def current(self) -> dict[str, Tier]:
        now = time.monotonic()
        if now - self._checked >= RELOAD_CHECK_S:
            self._checked = now
            try:
                info = self.path.stat()
                stamp = (info.st_mtime_ns, info.st_size)
            except OSError:
                stamp = None
            if stamp != self._stamp:
                self.reload()
        return self._tiers

    def get(self, name: str) -> Tier | None:
        return self.current().get(name)

    def names(self) -> list[str]:
        return list(self.current())

