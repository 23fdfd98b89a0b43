"""Progress reporting and interruption for long loops, without any UI dependency.

Runtime loops call ``progress(done, total)`` after each unit of work. The callback may raise
(``Interrupted`` in the CLI, ComfyUI's interrupt exception inside ComfyUI) to stop the loop.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[int, int], None]


def no_progress(done: int, total: int) -> None:
    """A progress callback that does nothing."""


def report(progress: ProgressFn | None, done: int, total: int) -> None:
    """Call ``progress`` if one was given."""
    if progress is not None:
        progress(done, total)


def within(progress: ProgressFn | None, offset: int, total: int) -> ProgressFn | None:
    """``progress`` for one part of a larger job: the part's ``done`` is reported as ``(offset + done, total)``."""
    if progress is None:
        return None
    return lambda done, _part_total: progress(offset + done, total)
