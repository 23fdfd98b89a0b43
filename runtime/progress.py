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


def tqdm_progress(desc: str, total: int, disable: bool = False) -> tuple[ProgressFn, Callable[[], None]]:
    """A tqdm-backed progress callback plus a close function, for the CLI."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="img", disable=disable)

    def update(done: int, total_: int) -> None:
        bar.total = total_
        bar.n = done
        bar.refresh()

    return update, bar.close
