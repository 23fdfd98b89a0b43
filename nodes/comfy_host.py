"""ComfyUI's implementation of the runtime's ``Host``, and how node classes reach their host.

Every node class derives from ``HostedNode``; its ``host`` is ``ComfyHost`` inside ComfyUI and a
``HeadlessHost`` (folders in the temp dir) outside. A headless runner gives a run its own folders and
progress with ``bind_host``, which returns subclasses of the node classes carrying that host: nothing
global is swapped and no environment variable is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..runtime.errors import InvalidInputError
from ..runtime.host import HeadlessHost, Host
from ..runtime.progress import ProgressFn

try:  # ComfyUI puts these top-level modules on sys.path; outside it they do not exist.
    import comfy.model_management as _model_management  # type: ignore[import-not-found]
    import comfy.utils as _comfy_utils  # type: ignore[import-not-found]
    import folder_paths  # type: ignore[import-not-found]
except ImportError:
    _model_management = _comfy_utils = folder_paths = None


class ComfyHost:
    """Progress through ``comfy.utils.ProgressBar``, Cancel through ``comfy.model_management``, folders through
    ``folder_paths``."""

    def progress(self, total: int) -> ProgressFn:
        bar = _comfy_utils.ProgressBar(total)

        def update(done: int, total_: int) -> None:
            _model_management.throw_exception_if_processing_interrupted()
            bar.update_absolute(done, total_)

        return update

    def check_interrupted(self) -> None:
        _model_management.throw_exception_if_processing_interrupted()

    def input_directory(self) -> Path:
        return Path(folder_paths.get_input_directory())

    def output_directory(self) -> Path:
        return Path(folder_paths.get_output_directory())

    def input_image_names(self) -> list[str]:
        folder = self.input_directory()
        try:
            files = [p.name for p in folder.iterdir() if p.is_file()]
        except OSError:
            return []
        return sorted(folder_paths.filter_files_content_types(files, ["image"]))

    def default_device(self) -> str | None:
        return _model_management.get_torch_device().type  # "cpu" under --cpu, "cuda" on NVIDIA...

    def input_image_path(self, name: str) -> Path:
        # ComfyUI checks combo values against the list before a node runs, and resolves "[output]" annotations
        if not folder_paths.exists_annotated_filepath(name):
            raise InvalidInputError(f"{name!r} is not a file in ComfyUI's input folder {self.input_directory()}")
        return Path(folder_paths.get_annotated_filepath(name))


def default_host() -> Host:
    """``ComfyHost`` inside ComfyUI, else a ``HeadlessHost`` with folders in the temp dir."""
    return ComfyHost() if folder_paths is not None else HeadlessHost()


class HostedNode:
    """Base of every node class: ``self.host`` / ``cls.host`` is where progress, Cancel and folders come from."""

    host: Host = default_host()


def bind_host(classes: Mapping[str, type], host: Host) -> dict[str, type]:
    """Node classes that run with ``host``: subclasses carrying it (classes that are not ``HostedNode`` stay as
    they are). The originals are untouched, so several runs with different hosts can coexist."""
    return {name: type(cls.__name__, (cls,), {"host": host, "__module__": cls.__module__, "__doc__": cls.__doc__})
            if isinstance(cls, type) and issubclass(cls, HostedNode) else cls for name, cls in classes.items()}
