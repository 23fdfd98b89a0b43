"""The process-wide cache of loaded models (SAM, VLMs, pipelines), and freeing it.

``ModelCache`` is a bounded LRU: a hit makes an entry the most recently used, and beyond ``capacity``
entries the least recently used one is dropped. ``free`` releases models explicitly.

A host that manages memory itself (ComfyUI: ``nodes/comfy_memory.py``) follows the cache through
``subscribe``: it hears when a value is about to be used (just loaded, or a hit) and when one leaves the
cache, and may take an entry back with ``discard``. ``torch_modules`` lists the torch modules a value
holds (a SAM model, a VLM, each component of a diffusers pipeline), also inside a handle such as a
masker. Nothing here knows about any host: headless runs have no listener and behave as a plain LRU cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import fields, is_dataclass
from types import ModuleType
from typing import Any, Protocol

DEFAULT_CAPACITY = 8  # models, not bytes: a workflow holds a SAM, a captioner and a pipeline or two


class CacheListener(Protocol):
    """Told about a ``ModelCache``'s entries. Called outside the cache's lock; exceptions propagate to the
    caller (``model_ready`` to whoever asked for the model)."""

    def model_ready(self, key: Any, value: Any, fresh: bool) -> None:
        """``get_or_load`` is about to return ``value``: just loaded (``fresh``) or from the cache."""

    def model_dropped(self, key: Any, value: Any) -> None:
        """``value`` left the cache (freed, evicted as least recently used, or discarded)."""


class ModelCache:
    """Keeps loaded models across runs, at most ``capacity`` of them (least recently used go first);
    ``free`` releases them explicitly."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if int(capacity) < 1:
            raise ValueError(f"a model cache holds at least 1 model, got capacity={capacity}")
        self.capacity = int(capacity)
        self._items: OrderedDict[Any, Any] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()
        self._listeners: list[CacheListener] = []

    def get_or_load(self, key: Any, loader: Callable[[], Any]) -> Any:
        """The cached value for ``key``, or ``loader()``'s result, cached. Concurrent first loads of one key
        may both run ``loader``; every caller gets the value that was cached first."""
        with self._lock:
            hit = key in self._items
            if hit:
                self._items.move_to_end(key)
                value = self._items[key]
        if not hit:
            loaded = loader()
            with self._lock:
                fresh = key not in self._items
                value = self._items.setdefault(key, loaded)
                self._items.move_to_end(key)
                evicted = self._evict_locked() if fresh else []
            hit = not fresh
            self._dropped(evicted, release=True)
        for listener in self._snapshot_listeners():
            listener.model_ready(key, value, not hit)
        return value

    def free(self, predicate: Callable[[Any], bool] | None = None) -> int:
        """Drop cached models (all, or those whose key matches); returns how many were dropped."""
        with self._lock:
            keys = [k for k in self._items if predicate is None or predicate(k)]
            dropped = [(k, self._items.pop(k)) for k in keys]
        self._dropped(dropped, release=True)
        return len(keys)

    def discard(self, key: Any) -> bool:
        """Drop one entry without collecting garbage or touching the accelerator (for a host that calls in
        from its own memory bookkeeping, where a garbage collection must not run). True if it was cached."""
        with self._lock:
            if key not in self._items:
                return False
            value = self._items.pop(key)
        self._dropped([(key, value)], release=False)
        return True

    def entries(self) -> list[tuple[Any, Any]]:
        """(key, value) of every cached model, least recently used first (a snapshot)."""
        with self._lock:
            return list(self._items.items())

    def subscribe(self, listener: CacheListener) -> Callable[[], None]:
        """Tell ``listener`` about models being used and dropped from now on; returns the unsubscribe function."""
        with self._lock:
            if listener not in self._listeners:
                self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Any) -> bool:
        return key in self._items

    def _evict_locked(self) -> list[tuple[Any, Any]]:
        evicted = []
        while len(self._items) > self.capacity:
            evicted.append(self._items.popitem(last=False))
        return evicted

    def _snapshot_listeners(self) -> list[CacheListener]:
        with self._lock:
            return list(self._listeners)

    def _dropped(self, dropped: list[tuple[Any, Any]], release: bool) -> None:
        """Tell the listeners, then let go of the models (the caller's list is emptied) before collecting."""
        if not dropped:
            return
        for listener in self._snapshot_listeners():
            for entry in dropped:
                listener.model_dropped(*entry)
            entry = None  # the loop variable would keep the last model alive through the collection below
        dropped.clear()
        if release:
            release_accelerator_memory()


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


def torch_modules(value: Any, depth: int = 3) -> list[Any]:
    """The ``torch.nn.Module``s a cached value holds, each once, in a stable order: ``value`` itself if it is
    one, else what its dataclass fields, mappings, sequences and plain attributes hold (a diffusers pipeline's
    components, a masker's model), ``depth`` levels down. A module's own submodules are not listed."""
    import torch

    found: list[Any] = []
    seen: set[int] = set()

    def walk(obj: Any, level: int) -> None:
        if obj is None or isinstance(obj, _LEAVES) or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            found.append(obj)
            return
        if level == 0 or isinstance(obj, (torch.Tensor, type, ModuleType)):
            return
        for child in _children(obj):
            walk(child, level - 1)

    walk(value, depth)
    return found


_LEAVES = (str, bytes, int, float, complex, bool)


def _children(obj: Any) -> list[Any]:
    if is_dataclass(obj):
        return [getattr(obj, f.name, None) for f in fields(obj)]
    if isinstance(obj, Mapping):
        return list(obj.values())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    attributes = getattr(obj, "__dict__", None)
    return list(attributes.values()) if isinstance(attributes, dict) else []
