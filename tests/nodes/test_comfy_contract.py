"""Every registered node honours the ComfyUI contract, loaded exactly as ComfyUI loads the pack."""

from __future__ import annotations

import inspect
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures.caption_fixtures import build_tiny_blip
from tests.fixtures.images import studio_product_photo
from tests.fixtures.sam_fixtures import build_tiny_sam, save_sam
from tests.fixtures.training_fixtures import write_product_folder
from tests.nodes.pack_loader import REPO_ROOT, load_pack_like_comfyui, unload_pack

PRIMITIVES = {"INT": int, "FLOAT": float, "BOOLEAN": bool, "STRING": str}
# Widget values that keep the tiny diffusion models quick; everything else uses the node's defaults.
FAST_WIDGETS = {
    "BackdropInpaint": {"steps": 2, "resolution": 128, "variations": 2},
    "BackdropLoadImageFolder": {"folder": "train_catalog"},
    "BackdropTrainLoRA": {"dataset": "train_catalog", "steps": 2, "rank": 2, "resolution": 64, "checkpoint_every": 0},
}
TOP_KEYS = {"required", "optional", "hidden"}


@pytest.fixture(scope="module")
def pack(tmp_path_factory, inpaint_models_root):
    """The repo loaded from a folder named ComfyUI-Backdrop, with a models dir holding tiny models."""
    root = tmp_path_factory.mktemp("comfy")
    (root / "models").mkdir()
    (root / "models" / "checkpoints").symlink_to(inpaint_models_root["root"] / "checkpoints", target_is_directory=True)
    shutil.copytree(inpaint_models_root["root"] / "loras", root / "models" / "loras")  # the train node writes here
    mp = pytest.MonkeyPatch()
    mp.setenv("BACKDROP_CLIP_TOKENIZER", str(inpaint_models_root["tokenizer"]))
    write_product_folder(root / "input" / "train_catalog", count=2)
    folder = root / "custom_nodes" / "ComfyUI-Backdrop"
    folder.parent.mkdir()
    folder.symlink_to(REPO_ROOT, target_is_directory=True)
    save_sam(build_tiny_sam(), root / "models" / "sams" / "tiny_sam.safetensors")
    build_tiny_blip(root / "models" / "LLM" / "tiny-blip")
    module = load_pack_like_comfyui(folder)
    host = sys.modules[module.__name__ + ".runtime.host"].HeadlessHost(root / "input", root / "output")
    mp.setattr(sys.modules[module.__name__ + ".nodes.comfy_host"].HostedNode, "host", host)
    models = sys.modules[module.__name__ + ".runtime.models"]
    models.set_locator(models.ModelLocator.from_models_dir(root / "models"))
    _export_example_engine(module, root / "models" / "onnx")
    yield module
    models.set_locator(None)
    mp.undo()
    unload_pack(module)


def _export_example_engine(module, folder: Path) -> None:
    """An ONNX engine of the loader node's default model, so BackdropLoadEngine has one to list."""
    import importlib

    folder.mkdir(parents=True, exist_ok=True)
    loader_node = module.NODE_CLASS_MAPPINGS["BackdropInpaintLoader"]
    default_model = loader_node.INPUT_TYPES()["required"]["model"][0][0]
    loader = importlib.import_module(module.__name__ + ".runtime.inpainting.loader")
    engine_export = importlib.import_module(module.__name__ + ".export.engine_export")
    engine_export.export_pipeline_engine(loader.load_pipeline(default_model), engine_export.EngineRequest())


def test_pack_loads_under_a_hyphenated_folder_name(pack):
    assert "-" in pack.__name__
    assert pack.NODE_CLASS_MAPPINGS, "no nodes registered"
    assert not hasattr(pack, "comfy_entrypoint"), "use one registration style only (V1)"
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == set(pack.NODE_CLASS_MAPPINGS)


def test_ids_categories_and_schemas(pack):
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert node_id.startswith("Backdrop"), node_id
        assert cls.CATEGORY.startswith("Backdrop/"), (node_id, cls.CATEGORY)
        schema = cls.INPUT_TYPES()
        assert set(schema) <= TOP_KEYS and "required" in schema, node_id
        params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
        for section in ("required", "optional"):
            for name, spec in schema.get(section, {}).items():
                _check_input_spec(node_id, name, spec)
                assert name in params, f"{node_id}.{cls.FUNCTION} does not accept input {name!r}"
        assert isinstance(cls.RETURN_TYPES, tuple) and all(isinstance(t, str) for t in cls.RETURN_TYPES)
        names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
        assert len(names) == len(cls.RETURN_TYPES), node_id
        tips = getattr(cls, "OUTPUT_TOOLTIPS", None if cls.RETURN_TYPES else ())
        assert tips is not None and len(tips) == len(cls.RETURN_TYPES), f"{node_id}: a tooltip for every output"
        assert all(isinstance(t, str) and len(t) > 10 for t in tips), node_id


def test_nodes_never_run_on_a_gpu_are_marked_experimental(pack):
    """The engine nodes' TensorRT path has never run on a GPU here: ComfyUI's node info must say experimental."""
    for node_id in ("BackdropExportEngine", "BackdropLoadEngine"):
        assert pack.NODE_CLASS_MAPPINGS[node_id].EXPERIMENTAL is True, node_id


def test_errors_shown_in_comfyui_name_a_readable_type(pack):
    """ComfyUI reports ``type.__module__ + '.' + __qualname__``; the pack is imported by a file path, which must not
    leak into the error type the user sees."""
    errors = sys.modules[pack.__name__ + ".runtime.errors"]
    assert "/" in pack.__name__  # loaded by path, as ComfyUI does
    node = pack.NODE_CLASS_MAPPINGS["BackdropProductMask"]()
    with pytest.raises(errors.BackdropError) as caught:
        node.mask(torch.zeros(1, 2, 2, 5), fill_holes=True, keep="main", grow_px=0, edge_refine=True, feather_px=0.0)
    shown = f"{type(caught.value).__module__}.{type(caught.value).__qualname__}"
    assert shown == "comfyui_backdrop.runtime.errors.InvalidInputError"


def _check_input_spec(node_id: str, name: str, spec) -> None:
    where = f"{node_id}.{name}"
    assert isinstance(spec, tuple) and 1 <= len(spec) <= 2, where
    kind, options = spec[0], (spec[1] if len(spec) == 2 else {})
    assert isinstance(options, dict), where
    if isinstance(kind, list):
        assert kind and all(isinstance(v, str) for v in kind), f"{where}: empty or non-string combo"
        assert options.get("default", kind[0]) in kind, where
        return
    assert isinstance(kind, str) and kind.isupper(), where
    if kind in ("INT", "FLOAT"):
        lo, hi, default = options["min"], options["max"], options["default"]
        assert lo <= default <= hi and options.get("step", 1) > 0, where
        assert isinstance(default, PRIMITIVES[kind]), where
    elif kind in ("BOOLEAN", "STRING"):
        assert isinstance(options.get("default", PRIMITIVES[kind]()), PRIMITIVES[kind]), where


def _example(kind, options, made: dict):
    if isinstance(kind, list):
        return options.get("default", kind[0])
    if kind in PRIMITIVES:
        return options.get("default", PRIMITIVES[kind]())
    if kind == "IMAGE":
        photos = [studio_product_photo(96, 128, seed=s)[0] for s in (0, 1)]
        return torch.from_numpy(np.stack(photos).astype(np.float32) / 255.0)
    if kind == "MASK":
        return torch.from_numpy(studio_product_photo(96, 128, seed=0)[1][None].astype(np.float32))
    return made.get(kind)


def _check_output(node_id: str, kind: str, value) -> None:
    where = f"{node_id} -> {kind}"
    if kind in PRIMITIVES:
        assert isinstance(value, PRIMITIVES[kind]), where
    elif kind == "IMAGE":
        assert isinstance(value, torch.Tensor) and value.ndim == 4 and value.shape[-1] == 3, where
        assert value.dtype == torch.float32 and value.min() >= 0 and value.max() <= 1, where
    elif kind == "MASK":
        assert isinstance(value, torch.Tensor) and value.ndim == 3 and value.dtype == torch.float32, where
        assert value.min() >= 0 and value.max() <= 1, where
    else:
        assert value is not None, where


def test_every_node_returns_what_it_declares(pack):
    """Run each node on example inputs (custom types come from the nodes that make them), under
    torch.inference_mode() as ComfyUI's executor does."""
    made: dict[str, object] = {}
    pending = dict(pack.NODE_CLASS_MAPPINGS)
    while pending:
        progressed = False
        for node_id, cls in list(pending.items()):
            schema = cls.INPUT_TYPES()
            kwargs = {}
            ready = True
            for section in ("required", "optional"):
                for name, spec in schema.get(section, {}).items():
                    value = FAST_WIDGETS.get(node_id, {}).get(name)
                    if value is None:
                        value = _example(spec[0], spec[1] if len(spec) > 1 else {}, made)
                    if value is None and section == "required":
                        ready = False
                    elif value is not None:
                        kwargs[name] = value
            if not ready:
                continue
            image_in = {k: v.clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
            with torch.inference_mode():  # ComfyUI executes every node this way
                result = getattr(cls(), cls.FUNCTION)(**kwargs)
            if isinstance(result, dict):  # output nodes may return {"ui": {...}, "result": (...)} like SaveImage
                assert getattr(cls, "OUTPUT_NODE", False) and set(result) <= {"ui", "result"}, node_id
                result = result.get("result", ())
            assert isinstance(result, tuple) and len(result) == len(cls.RETURN_TYPES), node_id
            is_list = getattr(cls, "OUTPUT_IS_LIST", (False,) * len(cls.RETURN_TYPES))
            for kind, value, listed in zip(cls.RETURN_TYPES, result, is_list, strict=True):
                if listed:
                    assert isinstance(value, list) and value, f"{node_id} -> {kind} must be a non-empty list"
                    for item in value:
                        _check_output(node_id, kind, item)
                    value = value[0]
                else:
                    _check_output(node_id, kind, value)
                made.setdefault(kind, value)
            for k, original in image_in.items():
                assert torch.equal(kwargs[k], original), f"{node_id} mutated its input {k}"
            del pending[node_id]
            progressed = True
        assert progressed, f"no example inputs could be made for {sorted(pending)}"
