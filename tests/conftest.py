"""Shared fixtures. Everything is offline: no test may download anything."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest

from tests.fixtures.images import studio_product_photo
from tests.fixtures.locator import installed_models
from tests.fixtures.postgres import postgres_cluster, postgres_url  # noqa: F401  (fixtures for the whole suite)


@pytest.fixture(scope="session")
def product_photo() -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB 389x517 studio shot of a bottle, its true bool mask)."""
    return studio_product_photo(389, 517, seed=3)


@pytest.fixture()
def models_dir(tmp_path, monkeypatch):
    """An empty ComfyUI-style models dir installed as the runtime's locator for one test."""
    from comfyui_backdrop.runtime.models import MODEL_FOLDERS, ModelLocator, set_locator

    root = tmp_path / "models"
    for kind in MODEL_FOLDERS:
        (root / kind).mkdir(parents=True)
    set_locator(ModelLocator.from_models_dir(root))
    yield root
    set_locator(None)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine they thrash."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def tuned_test_process():
    """The test process allocates as the ``backdrop`` command does from its first test on (the watermark codec
    would tune it at its first call anyway: this makes that independent of test order). Nothing is exported, so
    subprocesses start with glibc's stock settings unless a test gives them others."""
    from comfyui_backdrop.runtime.allocator import tune_allocator

    return tune_allocator(export=False)


@pytest.fixture(scope="session")
def inpaint_models_root(tmp_path_factory):
    """Tiny inpainting models (SD1.5 9-ch folder + single file, SD1.5 4-ch, SDXL 9-ch) and LoRAs, built once."""
    from tests.fixtures.inpaint_fixtures import build_inpaint_models

    return build_inpaint_models(tmp_path_factory.mktemp("inpaint") / "models")


@pytest.fixture()
def inpaint_models(inpaint_models_root, monkeypatch):
    """The tiny inpainting models dir installed as the locator, with the test CLIP tokenizer configured."""
    yield from installed_models(inpaint_models_root["root"], monkeypatch, inpaint_models_root["tokenizer"])


@pytest.fixture(scope="session", autouse=True)
def private_provenance_dirs(tmp_path_factory):
    """Keys and ledger in a temp dir (tests never touch ~/.config), and the nodes' host folders there too."""
    from comfyui_backdrop.nodes.comfy_host import HostedNode
    from comfyui_backdrop.runtime.host import HeadlessHost

    root = tmp_path_factory.mktemp("provenance")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BACKDROP_HOME", str(root / "home"))
        mp.setattr(HostedNode, "host", HeadlessHost(root / "input", root / "output"))
        yield root


def use_node_host(monkeypatch, input_dir=None, output_dir=None, progress_factory=None):
    """Give every node class a headless host with these folders and this progress factory for one test."""
    from comfyui_backdrop.nodes.comfy_host import HostedNode
    from comfyui_backdrop.runtime.host import HeadlessHost

    current = HostedNode.host
    host = HeadlessHost(input_dir or current.input_directory(), output_dir or current.output_directory(),
                        progress_factory=progress_factory)
    monkeypatch.setattr(HostedNode, "host", host)
    return host


@pytest.fixture(scope="session")
def flux_models_root(tmp_path_factory):
    """Tiny FLUX.1 Fill and Kontext diffusers folders and FLUX LoRAs (diffusers, kohya, ComfyUI layouts), built once."""
    from tests.fixtures.flux_fixtures import build_flux_models

    return build_flux_models(tmp_path_factory.mktemp("flux") / "models")


@pytest.fixture()
def flux_models(flux_models_root):
    """The tiny FLUX models dir installed as the locator."""
    yield from installed_models(flux_models_root["root"])


@pytest.fixture(scope="session")
def flux_sf_root(tmp_path_factory):
    """The tiny FLUX models again as ComfyUI keeps single files (diffusion_models, text_encoders, vae), built once."""
    from tests.fixtures.flux_single_file_fixtures import build_single_file_models

    return build_single_file_models(tmp_path_factory.mktemp("flux-sf") / "models")


@pytest.fixture()
def flux_sf(flux_sf_root, monkeypatch):
    """The single-file models dir as the locator, the tiny CLIP tokenizer found through its variable."""
    yield from installed_models(flux_sf_root["root"], monkeypatch, flux_sf_root["tokenizer"])


@pytest.fixture(scope="session")
def qwen_models_root(tmp_path_factory):
    """A tiny Qwen-Image-Edit diffusers folder and Qwen LoRAs (diffusers, kohya, ComfyUI layouts), built once."""
    from tests.fixtures.qwen_fixtures import build_qwen_models

    return build_qwen_models(tmp_path_factory.mktemp("qwen") / "models")["root"]


@pytest.fixture()
def qwen_models(qwen_models_root):
    """The tiny Qwen-Image-Edit models dir installed as the locator."""
    yield from installed_models(qwen_models_root)
