"""The host a run lives in: where progress goes, how a user's Cancel reaches a loop, which folders hold inputs
and outputs.

Nodes and commands talk to a ``Host``, never to environment variables or swapped module globals. ComfyUI's
implementation lives in ``nodes/comfy_host.py``; ``HeadlessHost`` serves the CLI, headless workflows and tests.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from .errors import Interrupted, InvalidInputError
from .progress import ProgressFn


@runtime_checkable
class Host(Protocol):
    """What a node or a command needs from the program it runs in."""

    def progress(self, total: int) -> ProgressFn:
        """A callback for a loop of ``total`` steps; it raises when the user asked to stop."""

    def check_interrupted(self) -> None:
        """Raise if the user asked to stop (ComfyUI's Cancel, Ctrl-C in the CLI)."""

    def input_directory(self) -> Path:
        """The folder that input file names (LoadImage, BackdropVerify, image folders) are relative to."""

    def output_directory(self) -> Path:
        """The folder saved files go to."""

    def input_image_names(self) -> list[str]:
        """Image files directly in the input folder, sorted: what an image combo lists."""

    def input_image_path(self, name: str) -> Path:
        """The path of an image picked from ``input_image_names``; anything not listed is refused."""

    def default_device(self) -> str | None:
        """The device the host runs models on ("cpu", "cuda"), for a node's ``auto``; None: no preference."""


@dataclass(frozen=True)
class HeadlessHost:
    """A host without a UI: folders given explicitly, progress to an optional callback factory, and an
    ``interrupt`` event another thread (or a signal handler) may set to stop the run at the next step."""

    input_dir: Path = field(default_factory=lambda: _temp_folder("input"))
    output_dir: Path = field(default_factory=lambda: _temp_folder("output"))
    progress_factory: Callable[[int], ProgressFn] | None = None
    interrupt: threading.Event = field(default_factory=threading.Event, compare=False)

    def progress(self, total: int) -> ProgressFn:
        report = self.progress_factory(total) if self.progress_factory is not None else None

        def update(done: int, total_: int) -> None:
            self.check_interrupted()
            if report is not None:
                report(done, total_)

        return update

    def check_interrupted(self) -> None:
        if self.interrupt.is_set():
            raise Interrupted("interrupted by the user")

    def input_directory(self) -> Path:
        return Path(self.input_dir)

    def output_directory(self) -> Path:
        return Path(self.output_dir)

    def input_image_names(self) -> list[str]:
        from .imaging import image_files

        try:
            return [p.name for p in image_files(self.input_directory())]
        except (OSError, InvalidInputError):
            return []

    def default_device(self) -> str | None:
        return None

    def input_image_path(self, name: str) -> Path:
        if name not in self.input_image_names():
            raise InvalidInputError(f"{name!r} is not an image in the input folder {self.input_directory()}")
        return self.input_directory() / name


def _temp_folder(name: str) -> Path:
    """Where a host without folders of its own reads and writes: a folder in the system temp dir."""
    return Path(tempfile.gettempdir()) / "comfyui-backdrop" / name
