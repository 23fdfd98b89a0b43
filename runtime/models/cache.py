"""The process-wide cache of loaded models (SAM, VLMs, pipelines), and freeing it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


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
            release_accelerator_memory()
        return len(keys)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Any) -> bool:
        return key in self._items


MODEL_CACHE = ModelCache()


def free_models() -> int:
    """Free every model the runtime has cached. Returns how many were freed."""
    return MODEL_CACHE.free()


def release_accelerator_memory() -> None:
    """Collect garbage and hand cached CUDA blocks back to the driver."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
