"""Ctrl-C during a Ray catalog run, made dependable.

A ``KeyboardInterrupt`` raised while the driver's main thread is inside Ray Data's row iterator can be absorbed
there: a catalog run then went on to deliver every photo and exit 0 after Ctrl-C (seen on a fast Xeon, not every
time). So while the rows stream, SIGINT only sets a flag, and the loop stops at the next delivered row, where the
state of every photo is known; a second Ctrl-C raises at once, as usual.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


@contextmanager
def ctrl_c_flag() -> Iterator[threading.Event]:
    """A flag set by the first Ctrl-C inside the block (in the main thread; elsewhere a flag nothing sets)."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: object) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def until_interrupted(rows: Iterable[T], flag: threading.Event) -> Iterator[T]:
    """``rows``, raising ``KeyboardInterrupt`` before the next one once ``flag`` is set."""
    for row in rows:
        yield row
        if flag.is_set():
            raise KeyboardInterrupt
