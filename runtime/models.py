"""Where models live, how they are listed and resolved, and how weights are loaded safely.

Model names only ever come from folder listings: ``resolve`` refuses anything that is not listed, so
a name can never smuggle in an arbitrary path. Inside ComfyUI the folders come from ``folder_paths``
(nodes/ installs a locator for that); outside, from ``--models-dir`` / ``BACKDROP_MODELS_DIR``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidModelError, MissingModelError

MODELS_DIR_ENV = "BACKDROP_MODELS_DIR"


@dataclass(frozen=True)
class FolderSpec:
    """What one model folder holds: file extensions (or whole folders) and an example name."""

    extensions: tuple[str, ...]
    example: str
    holds: str

    @property
    def holds_folders(self) -> bool:
        return not self.extensions


MODEL_FOLDERS: dict[str, FolderSpec] = {
    "sams": FolderSpec((".pth", ".pt", ".safetensors"), "sam_vit_b_01ec64.pth",
                       "segment-anything checkpoints"),
    "LLM": FolderSpec((), "Florence-2-base/", "vision-language models in transformers format, one folder each"),
    "checkpoints": FolderSpec((".safetensors", ".ckpt"), "sd-v1-5-inpainting.safetensors",
                              "single-file SD checkpoints"),
    "diffusers": FolderSpec((), "stable-diffusion-inpainting/", "diffusers pipeline folders (model_index.json)"),
    "loras": FolderSpec((".safetensors",), "product_backgrounds.safetensors", "LoRA weights"),
    "onnx": FolderSpec((".onnx",), "unet_sd15_inpaint.onnx", "exported ONNX UNets"),
    "tensorrt": FolderSpec((".engine", ".plan"), "unet_sd15_inpaint_fp16.engine", "TensorRT engines"),
}


def default_models_dir() -> Path:
    """``$BACKDROP_MODELS_DIR`` if set, else ``./models``."""
    return Path(os.environ.get(MODELS_DIR_ENV) or "models").expanduser()


class ModelLocator:
    """Lists and resolves model names per folder kind (``sams``, ``LLM``, ``checkpoints``...)."""

    def __init__(self, folders_for: Callable[[str], list[Path]], description: str = "") -> None:
        self._folders_for = folders_for
        self.description = description

    @classmethod
    def from_models_dir(cls, models_dir: str | os.PathLike | None = None) -> ModelLocator:
        root = Path(models_dir).expanduser() if models_dir else default_models_dir()
        return cls(lambda kind: [root / kind], description=f"models dir {root}")

    def folders(self, kind: str) -> list[Path]:
        _spec(kind)
        return [Path(p) for p in self._folders_for(kind)]

    def list(self, kind: str) -> list[str]:
        """Names available in ``kind``'s folders, relative to their folder, sorted and de-duplicated."""
        spec = _spec(kind)
        names: set[str] = set()
        for folder in self.folders(kind):
            if not folder.is_dir():
                continue
            if spec.holds_folders:
                names.update(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
                continue
            for path in folder.rglob("*"):
                relative = path.relative_to(folder)
                hidden = any(part.startswith(".") for part in relative.parts)
                if not hidden and path.is_file() and path.suffix.lower() in spec.extensions:
                    names.add(relative.as_posix())
        return sorted(names)

    def resolve(self, kind: str, name: str) -> Path:
        """The path of ``name`` in ``kind``'s folders; it must be one of ``list(kind)``."""
        available = self.list(kind)
        if name not in available:
            raise MissingModelError(missing_model_message(kind, name, self.folders(kind), available))
        for folder in self.folders(kind):
            candidate = folder / name
            if candidate.exists():
                return candidate
        raise MissingModelError(missing_model_message(kind, name, self.folders(kind), available))


def missing_model_message(kind: str, name: str, folders: list[Path], available: list[str]) -> str:
    spec = _spec(kind)
    kinds = "a folder per model" if spec.holds_folders else ", ".join(spec.extensions)
    where = ", ".join(str(f) for f in folders) or f"models/{kind}"
    found = ", ".join(available[:8]) if available else "nothing"
    return (
        f"Model {name!r} was not found in models/{kind} ({where}). That folder holds {spec.holds} "
        f"({kinds}), for example models/{kind}/{spec.example}. Found there: {found}. "
        "Nothing is downloaded: put the file there yourself."
    )


def _spec(kind: str) -> FolderSpec:
    try:
        return MODEL_FOLDERS[kind]
    except KeyError:
        raise ValueError(f"unknown model folder kind {kind!r}; known: {', '.join(MODEL_FOLDERS)}") from None


_locator_lock = threading.Lock()
_locator: ModelLocator | None = None


def get_locator() -> ModelLocator:
    """The locator in use: ComfyUI's folders inside ComfyUI, else ``default_models_dir()``."""
    global _locator
    with _locator_lock:
        if _locator is None:
            _locator = ModelLocator.from_models_dir()
        return _locator


def set_locator(locator: ModelLocator | None) -> None:
    """Install a locator (``None`` goes back to the default)."""
    global _locator
    with _locator_lock:
        _locator = locator


# ---------------------------------------------------------------------------------------------- loading

def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Load tensors safely: safetensors, or ``torch.load(weights_only=True)`` for .pth/.pt/.ckpt/.bin."""
    import torch

    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files raise many different types
        reason = f"{type(exc).__name__}: {exc}"
        raise InvalidModelError(f"{path.name} could not be read as a weights file ({reason})") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidModelError(f"{path.name} does not hold a flat dictionary of tensors")
    return state


def file_fingerprint(path: str | os.PathLike) -> tuple[str, int, int]:
    """A cheap identity for cache keys: resolved path, size and mtime."""
    st = Path(path).stat()
    return (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


class ModelCache:
    """Keeps loaded models across runs; ``free`` releases them explicitly."""

    def __init__(self) -> None:
        self._items: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def get_or_load(self, key: Any, loader: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                return self._items[key]
        value = loader()
        with self._lock:
            return self._items.setdefault(key, value)

    def free(self, predicate: Callable[[Any], bool] | None = None) -> int:
        """Drop cached models (all, or those whose key matches); returns how many were dropped."""
        with self._lock:
            keys = [k for k in self._items if predicate is None or predicate(k)]
            for key in keys:
                del self._items[key]
        if keys:
            _release_accelerator_memory()
        return len(keys)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Any) -> bool:
        return key in self._items


MODEL_CACHE = ModelCache()


def free_models() -> int:
    """Free every model the runtime has cached. Returns how many were freed."""
    return MODEL_CACHE.free()


def _release_accelerator_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


@contextmanager
def models_dir_locator(models_dir: str | os.PathLike | None) -> Iterator[None]:
    """For a CLI command: every loader reads ``models_dir`` (when given) until the block ends."""
    previous = get_locator()
    if models_dir:
        set_locator(ModelLocator.from_models_dir(Path(models_dir)))
    try:
        yield
    finally:
        set_locator(previous)
