"""ModelCache: a bounded LRU of loaded models, its listeners (the host extension point) and ``torch_modules``."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
import torch

from comfyui_backdrop.runtime.models import ModelCache, ModelLocator
from comfyui_backdrop.runtime.models.cache import DEFAULT_CAPACITY, torch_modules
from tests.fixtures.sam_fixtures import build_tiny_sam, save_sam


class Model:
    """A stand-in for a loaded model that sits in a reference cycle, as real model graphs often do."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.me = self


class Recorder:
    """A cache listener that writes down what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def model_ready(self, key, value, fresh):
        self.events.append(("ready", key, value.name, fresh))

    def model_dropped(self, key, value):
        self.events.append(("dropped", key, value.name))


def fill(cache: ModelCache, *keys: str) -> dict[str, Model]:
    return {key: cache.get_or_load(key, lambda key=key: Model(key)) for key in keys}


def test_the_least_recently_used_model_goes_first():
    cache = ModelCache(capacity=2)
    fill(cache, "a", "b")
    cache.get_or_load("a", lambda: pytest.fail("a is cached"))  # a hit makes a the most recent
    fill(cache, "c")
    assert [k for k, _ in cache.entries()] == ["a", "c"]
    assert "b" not in cache and "a" in cache and len(cache) == 2
    reloaded = cache.get_or_load("b", lambda: Model("b again"))
    assert reloaded.name == "b again" and [k for k, _ in cache.entries()] == ["c", "b"]


def test_capacity_default_and_bounds():
    assert ModelCache().capacity == DEFAULT_CAPACITY >= 3  # a SAM, a captioner and a pipeline fit
    for bad in (0, -1):
        with pytest.raises(ValueError, match="at least 1"):
            ModelCache(capacity=bad)
    one = ModelCache(capacity=1)
    fill(one, "a", "b")
    assert [k for k, _ in one.entries()] == ["b"]


def test_evicted_and_freed_models_are_let_go():
    cache = ModelCache(capacity=1)
    first = weakref.ref(fill(cache, "a")["a"])
    fill(cache, "b")  # evicts a; the model sits in a cycle, so only the collection after eviction frees it
    assert first() is None
    second = weakref.ref(cache.entries()[0][1])
    assert cache.free() == 1 and len(cache) == 0
    assert second() is None


def test_free_with_a_predicate_keeps_the_rest():
    cache = ModelCache()
    fill(cache, "sam-1", "vlm-1", "sam-2")
    assert cache.free(lambda key: key.startswith("sam")) == 2
    assert [k for k, _ in cache.entries()] == ["vlm-1"]
    assert cache.free(lambda key: False) == 0


def test_listeners_hear_loads_hits_and_drops():
    cache, recorder = ModelCache(capacity=2), Recorder()
    unsubscribe = cache.subscribe(recorder)
    cache.subscribe(recorder)  # subscribing twice is once
    fill(cache, "a", "b")
    fill(cache, "a")
    fill(cache, "c")  # evicts b: the drop is heard before c is handed out
    cache.free(lambda key: key == "a")
    assert cache.discard("c") and not cache.discard("c")
    assert recorder.events == [
        ("ready", "a", "a", True), ("ready", "b", "b", True), ("ready", "a", "a", False),
        ("dropped", "b", "b"), ("ready", "c", "c", True), ("dropped", "a", "a"), ("dropped", "c", "c"),
    ]
    unsubscribe()
    fill(cache, "d")
    cache.free()
    assert len(recorder.events) == 7


def test_a_failing_listener_reaches_the_caller_and_the_model_stays_cached():
    class Refuses(Recorder):
        def model_ready(self, key, value, fresh):
            raise MemoryError("no room for " + key)

    cache = ModelCache()
    cache.subscribe(Refuses())
    with pytest.raises(MemoryError, match="no room for a"):
        fill(cache, "a")
    assert "a" in cache


def test_discard_does_not_collect_garbage():
    """A host calls discard from inside its own memory bookkeeping, where a collection must not run."""
    cache = ModelCache()
    fill(cache, "a")
    collections: list[str] = []

    def on_gc(phase, _info):
        if phase == "start":
            collections.append(phase)

    gc.callbacks.append(on_gc)
    try:
        assert cache.discard("a")
        assert collections == []
        cache.get_or_load("b", lambda: Model("b"))
        cache.free()
        assert collections  # free does collect
    finally:
        gc.callbacks.remove(on_gc)


def test_concurrent_first_loads_agree_on_one_model():
    cache = ModelCache()
    barrier = threading.Barrier(4)
    results: list[Model] = []

    def load():
        barrier.wait()
        results.append(cache.get_or_load("k", lambda: Model("k")))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and all(r is results[0] for r in results) and len(cache) == 1


# ------------------------------------------------------------------------------------------ torch_modules

def test_torch_modules_finds_each_module_once_without_its_submodules():
    linear, conv = torch.nn.Linear(2, 2), torch.nn.Conv2d(1, 1, 1)
    value = {"handle": [linear, (conv, linear)], "name": "x", "weights": torch.zeros(3), "n": 3}
    assert torch_modules(value) == [linear, conv]
    assert torch_modules(linear) == [linear]
    sequential = torch.nn.Sequential(linear, conv)
    assert torch_modules([sequential, linear]) == [sequential, linear]
    assert torch_modules([[[[linear]]]], depth=3) == []  # deeper than asked
    assert torch_modules(["text", None, 1.5, torch.ones(2)]) == []


def test_torch_modules_of_a_loaded_sam_and_its_masker(tmp_path):
    from comfyui_backdrop.runtime.masking.sam_loader import load_sam
    from comfyui_backdrop.runtime.masking.sam_masker import SamMasker

    save_sam(build_tiny_sam(), tmp_path / "sams" / "tiny.safetensors")
    loaded = load_sam("tiny.safetensors", locator=ModelLocator.from_models_dir(tmp_path))
    assert torch_modules(loaded) == [loaded.model]
    assert torch_modules(SamMasker(loaded)) == [loaded.model]  # a plain object holding the handle


def test_torch_modules_of_a_pipeline_handle_are_its_components(inpaint_models):
    from comfyui_backdrop.runtime.inpainting.loader import LoraSpec, load_pipeline

    handle = load_pipeline("diffusers/tiny-sd15-inpaint", device="cpu")
    pipe = handle.pipe
    expected = {id(pipe.unet), id(pipe.vae), id(pipe.text_encoder)}
    assert {id(m) for m in torch_modules(handle)} == expected and len(torch_modules(handle)) == 3
    with_lora = handle.with_loras((LoraSpec("style_a.safetensors", "f" * 16, 0.5),))
    assert {id(m) for m in torch_modules([with_lora], depth=4)} == expected
