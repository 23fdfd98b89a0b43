"""Optional dependencies of the server, imported only when used; a missing one names its extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from ...runtime.errors import BackdropError


class MissingExtraError(BackdropError):
    """An optional dependency of the server is not installed; the message names the extra."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """``import module``, or a clear error naming ``pip install comfyui-backdrop[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"{what} needs the Python package {module.split('.')[0]!r}, which is not installed "
                                f"({exc}). Install it with: pip install 'comfyui-backdrop[{extra}]'") from None
