"""Load the repo root the way ComfyUI does: importlib from the folder path, the path as module name."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_pack_like_comfyui(folder: Path) -> ModuleType:
    """Mirror of ComfyUI 0.8 ``nodes.load_custom_node`` for a folder-type custom node."""
    module_name = str(folder).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(module_name, folder / "__init__.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def unload_pack(module: ModuleType) -> None:
    for name in [n for n in sys.modules if n == module.__name__ or n.startswith(module.__name__ + ".")]:
        del sys.modules[name]
