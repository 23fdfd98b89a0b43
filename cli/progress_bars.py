"""Progress bars for the commands (tqdm); the runtime only ever sees plain ``(done, total)`` callbacks."""

from __future__ import annotations

from collections.abc import Callable

from ..runtime.progress import ProgressFn


def tqdm_progress(desc: str, total: int, disable: bool = False) -> tuple[ProgressFn, Callable[[], None]]:
    """A tqdm-backed progress callback plus a close function, for the CLI."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="img", disable=disable)

    def update(done: int, total_: int) -> None:
        bar.total = total_
        bar.n = done
        bar.refresh()

    return update, bar.close
