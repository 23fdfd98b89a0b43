"""Progress bars for the commands (tqdm); the runtime only ever sees plain ``(done, total)`` callbacks."""

from __future__ import annotations

from collections.abc import Callable

from ..runtime.progress import ProgressFn


def tqdm_progress(desc: str, total: int, disable: bool = False, unit: str = "img"
                  ) -> tuple[ProgressFn, Callable[[], None]]:
    """A tqdm-backed progress callback plus a close function, for the CLI."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, disable=disable)

    def update(done: int, total_: int) -> None:
        bar.total = total_
        bar.n = done
        bar.refresh()

    return update, bar.close


class CatalogProgress:
    """One bar for a catalog run: photos done (failed and skipped ones included), how many failed or were skipped
    (finished in an earlier run), and photos a second."""

    def __init__(self, total: int, disable: bool = False) -> None:
        from tqdm.auto import tqdm

        self.failed = self.skipped = 0
        self._bar = tqdm(total=total, desc="backdrop run", unit="photo", disable=disable, smoothing=0.1)

    def skip(self, count: int) -> None:
        """``count`` photos finished in an earlier run: they count as done, and the bar says how many."""
        if count:
            self.skipped += count
            self._bar.set_postfix(self._postfix(), refresh=False)
            self._bar.update(count)

    def update(self, failed: bool = False) -> None:
        if failed:
            self.failed += 1
            self._bar.set_postfix(self._postfix(), refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()

    def _postfix(self) -> dict[str, int]:
        return {name: n for name, n in (("failed", self.failed), ("skipped", self.skipped)) if n}
