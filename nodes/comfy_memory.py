"""Backdrop's cached models under ComfyUI's memory management.

Inside ComfyUI every torch module a cached model holds (a SAM model, a VLM, each component of a diffusers
pipeline) is registered with ``comfy.model_management`` as a ``comfy.model_patcher.ModelPatcher``, and
``load_models_gpu`` is called before the model is used. From then on ComfyUI treats it like its own models:
``free_memory`` (when a native node needs VRAM), ``unload_all_models`` (POST /free, out-of-memory recovery)
and its LRU order offload it to ``unet_offload_device()``; the next Backdrop node that uses it loads it back.
Where offloading frees nothing (CPU-only ComfyUI, ``--gpu-only``, a model loaded on the CPU) an unload
releases the entry from ``MODEL_CACHE`` instead; the memory returns once nothing else holds the model (POST
/free with ``free_memory`` also clears ComfyUI's cache of node outputs, which holds our loaders' outputs).
After a Cancel (``InterruptProcessingException`` raised through our progress callback) every Backdrop model
goes through the same ``free_memory`` path, then ``release_accelerator_memory``. Outside ComfyUI nothing
here is active and the cache is a plain LRU.

Why ModelPatcher and how it is used with modules that are not ComfyUI's:

- Each module is wrapped in a one-element ``torch.nn.ModuleList`` (a "holder"). ModelPatcher writes
  bookkeeping attributes on the module it manages, including ``model.device``; diffusers, transformers and
  segment_anything models define ``device`` as a read-only property, so the patcher must not own them
  directly. The holder moves with ``.to()`` like the module itself and adds no weights.
- Models are always loaded with ``force_full_load=True``. ComfyUI's partial (lowvram) loading keeps some
  weights on the offload device and casts them per forward; only comfy.ops layers (``comfy_cast_weights``)
  can do that, so a plain ``nn.Linear`` left behind would meet inputs on another device. A partial
  *unload* (``partially_unload``, when ComfyUI needs only part of our memory) is fine: it moves whole leaf
  modules, and the next ``load_models_gpu(..., force_full_load=True)`` moves them back before any forward.
- The runtime's loaders put the weights on their device themselves; the patcher is then registered as
  already loaded there (``model_loaded_weight_memory``, an attribute ModelPatcher keeps when the model has
  it), so ComfyUI does not free room for memory already in use. Until ComfyUI has loaded it once itself, a
  partial unload of such a module offloads it whole.
- "Before use" is each Backdrop node run (every input that holds a managed module is loaded, all in one
  ``load_models_gpu`` call so loading one component cannot offload another) and every ``MODEL_CACHE`` hit or
  load (nodes that load models themselves). ComfyUI caches node outputs, so a loader node may not run again:
  the consuming node is where the model must come back.
- Releasing on unload hooks ``CallbacksMP.ON_DETACH``, ModelPatcher's public callback, which
  ``LoadedModel.model_unload`` fires with ``unpatch_all=True``. It runs inside ``free_memory``'s loop over
  ``current_loaded_models``: a patcher or holder collected there would run ComfyUI's ``cleanup_models``
  finalizer and shift the indices that loop pops by. So the callback only drops the entry from the cache
  (``ModelCache.discard``: no garbage collection) and empties the holders; the emptied patchers are let go
  at the next Backdrop call, outside ComfyUI's bookkeeping, where ComfyUI's own finalizer forgets them.
- An entry that leaves the cache otherwise (BackdropFreeModels, least-recently-used eviction) is only
  unregistered, never moved: a node output ComfyUI still caches may hold the same modules.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..runtime.models import MODEL_CACHE, release_accelerator_memory
from ..runtime.models.cache import torch_modules

try:  # ComfyUI puts these top-level modules on sys.path; outside it they do not exist.
    import comfy.model_management as _mm  # type: ignore[import-not-found]
    import comfy.model_patcher as _model_patcher  # type: ignore[import-not-found]
    import comfy.patcher_extension as _patcher_extension  # type: ignore[import-not-found]
except ImportError:
    _mm = _model_patcher = _patcher_extension = None

log = logging.getLogger(__name__)

IN_COMFYUI = _mm is not None
INPUT_DEPTH = 4  # node input -> handle (LoadedPipeline) -> diffusers pipeline -> components -> module


@dataclass(eq=False)
class Managed:
    """One cached torch module registered with ComfyUI, and the cache keys whose values hold it."""

    patcher: Any  # comfy.model_patcher.ModelPatcher over ``holder``
    holder: Any  # torch.nn.ModuleList([module])
    name: str
    keys: set = field(default_factory=set)


_lock = threading.RLock()
_managed: dict[int, Managed] = {}  # id(module) -> Managed; the holder keeps the module (and its id) alive
_retired: list[Managed] = []  # emptied, to be let go outside ComfyUI's free_memory
_in_detach = 0  # > 0 while ComfyUI's free_memory is calling back into us
_holder_classes: dict[str, type] = {}


# ------------------------------------------------------------------------------------------ registration

def with_memory_management(classes: dict[str, type]) -> dict[str, type]:
    """Inside ComfyUI: subscribe to ``MODEL_CACHE`` and return subclasses of the node classes whose FUNCTION
    loads the models its inputs hold before running and hands memory back on Cancel. Outside ComfyUI the
    classes come back unchanged."""
    if not IN_COMFYUI:
        return classes
    MODEL_CACHE.subscribe(LISTENER)
    return {name: _managed_node(cls) for name, cls in classes.items()}


def _managed_node(cls: type) -> type:
    name = getattr(cls, "FUNCTION", None)
    original = inspect.getattr_static(cls, name, None) if isinstance(name, str) else None
    if not inspect.isfunction(original):  # classmethods, V3 nodes: left as they are
        return cls
    if inspect.iscoroutinefunction(original):
        async def run(self, *args, **kwargs):
            with _node_run([*args, *kwargs.values()]):
                return await original(self, *args, **kwargs)
    else:
        def run(self, *args, **kwargs):
            with _node_run([*args, *kwargs.values()]):
                return original(self, *args, **kwargs)
    run = functools.wraps(original)(run)
    return type(cls.__name__, (cls,), {name: run, "__module__": cls.__module__, "__doc__": cls.__doc__,
                                       "__qualname__": cls.__qualname__})


@contextmanager
def _node_run(inputs: list[Any]) -> Iterator[None]:
    """Load the managed models a node's inputs hold; after a Cancel, hand every Backdrop model back."""
    ensure_loaded(inputs)
    inputs.clear()
    try:
        yield
    except _mm.InterruptProcessingException:
        hand_back()
        raise


class _CacheListener:
    """MODEL_CACHE -> ComfyUI: register and load models when they are about to be used, unregister dropped ones."""

    def model_ready(self, key: Any, value: Any, fresh: bool) -> None:
        _prune()
        _load(_manage(key, value))

    def model_dropped(self, key: Any, value: Any) -> None:
        _forget(key, value)


LISTENER = _CacheListener()


# ------------------------------------------------------------------------------------------ operations

def ensure_loaded(values: Iterable[Any]) -> int:
    """Load, in one ``load_models_gpu`` call, every managed module ``values`` hold; returns how many."""
    _prune()
    with _lock:
        found = [_managed[id(m)] for m in torch_modules(list(values), INPUT_DEPTH) if id(m) in _managed]
    _load(found)
    return len(found)


def hand_back() -> int:
    """Unload every Backdrop model through ComfyUI's ``free_memory`` (offload, or release where offloading
    frees nothing), then collect garbage and empty the CUDA cache. Returns how many modules were unloaded."""
    _prune()
    with _lock:
        ours = {id(m.patcher) for m in _managed.values()}
    loaded = list(_mm.current_loaded_models)
    mine = [lm for lm in loaded if id(lm.model) in ours]
    for device in {lm.device for lm in mine}:
        others = [lm for lm in loaded if id(lm.model) not in ours]
        _mm.free_memory(1e30, device, keep_loaded=others)
    _prune()
    release_accelerator_memory()
    if mine:
        log.info("Backdrop: interrupted; handed back %d model component(s)", len(mine))
    return len(mine)


def managed_modules() -> list[str]:
    """Names of the modules now registered with ComfyUI (for logs and tests)."""
    with _lock:
        return [m.name for m in _managed.values()]


# ------------------------------------------------------------------------------------------ internals

def _manage(key: Any, value: Any) -> list[Managed]:
    """Register every module of ``value`` not yet known; note ``key`` on all of them."""
    records = []
    with _lock:
        for module in torch_modules(value):
            record = _managed.get(id(module))
            if record is None:
                record = _managed[id(module)] = _register(module)
            record.keys.add(key)
            records.append(record)
    return records


def _register(module: Any) -> Managed:
    import torch

    load_device = _device_of(module)
    # ComfyUI's device offloads where ComfyUI offloads its own models (the GPU itself with --gpu-only or
    # --highvram); a model the user put on another device offloads to the CPU (on the CPU: nowhere).
    main_device = load_device == _mm.get_torch_device()
    offload_device = _mm.unet_offload_device() if main_device else torch.device("cpu")
    holder = _holder_class(type(module).__name__)([module])
    # The runtime's loader already put the weights on load_device: say so (ModelPatcher keeps attributes the
    # model already has), so registering does not make ComfyUI free room for memory that is already in use.
    size = _mm.module_size(holder)
    holder.device = load_device
    holder.model_loaded_weight_memory = size
    patcher = _model_patcher.ModelPatcher(holder, load_device=load_device, offload_device=offload_device, size=size)
    patcher.add_callback(_patcher_extension.CallbacksMP.ON_DETACH, _on_detach)
    return Managed(patcher=patcher, holder=holder, name=type(holder).__name__)


def _holder_class(module_class: str) -> type:
    """A ModuleList subclass named after the module, so ComfyUI's log says what it loads and unloads."""
    import torch

    name = f"Backdrop{module_class}"
    if name not in _holder_classes:
        _holder_classes[name] = type(name, (torch.nn.ModuleList,), {"__module__": __name__})
    return _holder_classes[name]


def _device_of(module: Any):
    import torch

    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def _load(records: list[Managed]) -> None:
    patchers = list({id(r.patcher): r.patcher for r in records}.values())
    if patchers:
        _mm.load_models_gpu(patchers, force_full_load=True)


def _on_detach(patcher: Any, unpatch_all: bool) -> None:
    """ON_DETACH: ComfyUI unloaded one of our patchers (``unpatch_all``: from ``LoadedModel.model_unload``).
    If the weights moved somewhere else the entry stays cached; if offloading frees nothing, release it."""
    global _in_detach
    if not unpatch_all or patcher.offload_device != patcher.load_device:
        return
    with _lock:
        record = next((m for m in _managed.values() if m.patcher is patcher), None)
        if record is None:
            return
        _in_detach += 1
        try:
            keys = sorted(record.keys, key=repr)
            released = [key for key in keys if MODEL_CACHE.discard(key)]
            if record not in _retired:
                _retire(record)  # also when its entries were already gone
        finally:
            _in_detach -= 1
    if released:
        log.info("Backdrop: ComfyUI unloaded %s; offloading to %s frees nothing, so the cached model holding it "
                 "was released (%d model(s) left in Backdrop's cache)", record.name, patcher.offload_device,
                 len(MODEL_CACHE))


def _forget(key: Any, value: Any) -> None:
    """``key`` left the cache: modules no other entry holds are unregistered."""
    with _lock:
        for module in torch_modules(value):
            record = _managed.get(id(module))
            if record is not None:
                record.keys.discard(key)
                if not record.keys:
                    _retire(record)
    _prune()


def _retire(record: Managed) -> None:
    """Stop managing ``record``'s module: forget it and empty its holder (the patcher itself goes in ``_prune``)."""
    for module_id, known in list(_managed.items()):
        if known is record:
            del _managed[module_id]
    del record.holder[:]
    _retired.append(record)


def _prune() -> None:
    """Let go of retired patchers (their holders die and ComfyUI's finalizer drops them from
    ``current_loaded_models``), unless ComfyUI's free_memory is on the stack."""
    with _lock:
        if _in_detach or not _retired:
            return
        retired = list(_retired)
        _retired.clear()
    del retired
    _mm.cleanup_models()
