"""Exceptions the runtime raises, with messages written for the person who has to fix them."""

from __future__ import annotations

PACKAGE = "comfyui_backdrop"
_LOADED_AS = __name__.rpartition(".runtime.errors")[0]  # a file path when ComfyUI imports the folder


def public_module_name(module: str) -> str:
    """``module`` under the installed package's name (``comfyui_backdrop.…``) however the pack was imported.

    ComfyUI names an error by ``type.__module__ + "." + type.__qualname__`` and imports this pack by folder path, so
    it would show "/…/custom_nodes/ComfyUI-Backdrop.runtime.errors.InvalidInputError". Our errors carry the package
    name instead: readable in ComfyUI's error dialog, and what pickle imports where the package is installed.
    """
    if _LOADED_AS and (module == _LOADED_AS or module.startswith(_LOADED_AS + ".")):
        return PACKAGE + module[len(_LOADED_AS):]
    return module


class BackdropError(Exception):
    """Base class for every error the runtime raises on purpose."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.__module__ = public_module_name(cls.__module__)


BackdropError.__module__ = public_module_name(BackdropError.__module__)


class MissingModelError(BackdropError, FileNotFoundError):
    """A model file or folder the user asked for is not in any model folder."""


class InvalidModelError(BackdropError, ValueError):
    """A model file exists but is corrupt, of the wrong kind or of an unknown architecture."""


class InvalidInputError(BackdropError, ValueError):
    """An image, mask or option cannot be processed as given."""


class OutputWriteError(BackdropError, OSError):
    """An output (an image, an engine) could not be written where it was asked for: disk full, no permission."""


class Interrupted(BackdropError):
    """Raised from a progress callback to stop a long loop cleanly."""


class InsufficientMemoryError(BackdropError, MemoryError):
    """A step would need more memory than the machine (or the limit given) has left; refused before it starts, so
    that the out-of-memory killer does not end the whole process. ``need`` and ``available`` are in bytes."""

    def __init__(self, message: str, need: int = 0, available: int = 0) -> None:
        super().__init__(message)
        self.need, self.available = need, available
