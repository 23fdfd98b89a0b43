"""nodes/comfy_memory.py: Backdrop's cached models under ComfyUI's memory management.

Without ComfyUI the hooks must stay out of the way (the CLI and headless workflows run the same node classes).
The ComfyUI path is checked on a real ComfyUI only (no stand-in): set ``BACKDROP_COMFYUI_DIR`` to a ComfyUI 0.8
checkout and, unless this interpreter can import ComfyUI's requirements, ``BACKDROP_COMFYUI_PYTHON`` to the
python of its venv. That test runs this file as a script in a child process (ComfyUI's modules are then
importable there and nowhere else) and checks what the child saw.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

COMFYUI_DIR = os.environ.get("BACKDROP_COMFYUI_DIR", "")
SAM_NAME = "tiny_sam.safetensors"
PIPELINE_NAME = "diffusers/tiny-sd15-inpaint"


def test_outside_comfyui_the_node_classes_are_left_alone():
    import torch

    from comfyui_backdrop import nodes
    from comfyui_backdrop.nodes import comfy_memory, inpainting, masking
    from comfyui_backdrop.runtime.models import MODEL_CACHE

    assert not comfy_memory.IN_COMFYUI
    assert nodes.NODE_CLASS_MAPPINGS["BackdropInpaint"] is inpainting.BackdropInpaint
    assert nodes.NODE_CLASS_MAPPINGS["BackdropSAMLoader"] is masking.BackdropSAMLoader
    classes = {"BackdropInpaint": inpainting.BackdropInpaint}
    assert comfy_memory.with_memory_management(classes) is classes
    key = ("test_comfy_memory", "linear")
    MODEL_CACHE.get_or_load(key, lambda: torch.nn.Linear(2, 2))
    try:
        assert comfy_memory.managed_modules() == []  # nothing registers models outside ComfyUI
    finally:
        MODEL_CACHE.free(lambda k: k == key)


@pytest.mark.skipif(not COMFYUI_DIR, reason="set BACKDROP_COMFYUI_DIR to a ComfyUI 0.8 checkout (and "
                    "BACKDROP_COMFYUI_PYTHON to its venv's python) to check the memory hooks on a real ComfyUI")
def test_on_a_real_comfyui(tmp_path, inpaint_models_root):
    from tests.fixtures.sam_fixtures import build_tiny_sam, save_sam

    models = tmp_path / "models"
    save_sam(build_tiny_sam(), models / "sams" / SAM_NAME)
    (models / "diffusers").mkdir()
    (models / "diffusers" / "tiny-sd15-inpaint").symlink_to(
        inpaint_models_root["root"] / "diffusers" / "tiny-sd15-inpaint", target_is_directory=True)
    report = tmp_path / "report.json"
    python = os.environ.get("BACKDROP_COMFYUI_PYTHON") or sys.executable
    done = subprocess.run([python, __file__, COMFYUI_DIR, str(models), str(report)], capture_output=True,
                          text=True, timeout=600, cwd=COMFYUI_DIR)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    seen = json.loads(report.read_text())

    ours = ["BackdropAutoencoderKL", "BackdropCLIPTextModel", "BackdropSam", "BackdropUNet2DConditionModel"]
    loaded = seen["loaded"]
    assert loaded["cache"] == 2 and loaded["managed"] == ours
    assert loaded["comfy"] == sorted([*ours, "Linear"])  # registered with model_management like its own models
    assert seen["masked_fraction"] > 0

    unloaded = seen["after_unload_all_models"]
    assert unloaded["comfy"] == []
    if seen["offload_frees_memory"]:  # a GPU: weights offloaded, entries kept, and loaded back when used
        assert unloaded["cache"] == 2 and unloaded["sam_device"] == seen["offload_device"]
        assert seen["after_reuse"]["sam_device"] == seen["load_device"]
    else:  # CPU: offloading frees nothing, so the entries are released
        assert unloaded["cache"] == 0 and unloaded["managed"] == []
        assert seen["sam_collected_once_unreferenced"]
        assert seen["after_reuse"]["cache"] == 0 and seen["after_reuse"]["masked_fraction"] > 0

    interrupted = seen["after_interrupt"]
    assert interrupted["raised"] == "InterruptProcessingException"
    assert interrupted["comfy"] == ["Linear"]  # Backdrop's models handed back, another pack's model kept
    assert interrupted["cache"] == (2 if seen["offload_frees_memory"] else 0)

    freed = seen["after_free_models_node"]
    assert freed["freed"] == 2 and freed["cache"] == 0 and freed["managed"] == []
    assert freed["comfy"] == ["Linear"]  # unregistered, not left in ComfyUI's list


# ------------------------------------------------------------------------------------------ the child

def _child(comfy_dir: str, models: Path, report: Path) -> None:
    """Run inside a real ComfyUI (its modules on sys.path, as main.py has them) and write what was seen."""
    import gc
    import importlib.util
    import weakref

    sys.path[0] = comfy_dir  # not this tests folder
    import torch
    from comfy.cli_args import args

    args.cpu = not torch.cuda.is_available()
    import comfy.model_management as mm
    import comfy.model_patcher
    import folder_paths

    repo = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("backdrop_pack_loader", repo / "tests" / "nodes" / "pack_loader.py")
    pack_loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack_loader)
    folder = models.parent / "custom_nodes" / "ComfyUI-Backdrop"
    folder.parent.mkdir()
    folder.symlink_to(repo, target_is_directory=True)
    pack = pack_loader.load_pack_like_comfyui(folder)
    for kind in ("sams", "diffusers"):
        folder_paths.add_model_folder_path(kind, str(models / kind))
    cache = sys.modules[pack.__name__ + ".runtime.models"].MODEL_CACHE
    memory = sys.modules[pack.__name__ + ".nodes.comfy_memory"]
    node = {name: cls() for name, cls in pack.NODE_CLASS_MAPPINGS.items()}
    image = torch.rand(1, 96, 128, 3)

    def state(**extra):
        names = sorted(type(lm.model.model).__name__ for lm in mm.current_loaded_models if lm.model is not None)
        return {"cache": len(cache), "managed": sorted(memory.managed_modules()), "comfy": names, **extra}

    def mask(sam):
        out = node["BackdropProductMask"].mask(image=image, fill_holes=True, keep="main", grow_px=0,
                                               edge_refine=True, feather_px=0.0, sam=sam)
        return float(out[0].mean())

    def inpaint(pipeline, product_mask):
        return node["BackdropInpaint"].inpaint(pipeline=pipeline, image=image, product_mask=product_mask,
                                               positive="studio", negative="", variations=1, seed=0, steps=3,
                                               cfg=7.0, scheduler="euler", strength=1.0, resolution=64)

    seen: dict = {"load_device": str(mm.get_torch_device()), "offload_device": str(mm.unet_offload_device())}
    seen["offload_frees_memory"] = seen["load_device"] != seen["offload_device"]
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        other = comfy.model_patcher.ModelPatcher(torch.nn.Linear(8, 8), load_device=mm.get_torch_device(),
                                                 offload_device=mm.unet_offload_device())
        mm.load_models_gpu([other])  # another pack's model, which Backdrop's Cancel must leave alone
        (sam,) = node["BackdropSAMLoader"].load(sam_model=SAM_NAME, device="auto")
        (pipeline,) = node["BackdropInpaintLoader"].load(model=PIPELINE_NAME, device="auto", dtype="fp32")
        seen["loaded"] = state()
        seen["masked_fraction"] = mask(sam)
        product_mask = torch.zeros(1, 96, 128)
        product_mask[:, 30:70, 40:90] = 1.0

        mm.unload_all_models()  # what POST /free {"unload_models": true} runs
        seen["after_unload_all_models"] = state(sam_device=str(next(sam.sam.model.parameters()).device))
        mm.load_models_gpu([other])
        fraction = mask(sam)  # a handle ComfyUI still caches keeps working
        seen["after_reuse"] = state(masked_fraction=fraction, sam_device=str(next(sam.sam.model.parameters()).device))
        if not seen["offload_frees_memory"]:
            model = weakref.ref(sam.sam.model)
            del sam
            gc.collect()
            seen["sam_collected_once_unreferenced"] = model() is None
            (sam,) = node["BackdropSAMLoader"].load(sam_model=SAM_NAME, device="auto")
            (pipeline,) = node["BackdropInpaintLoader"].load(model=PIPELINE_NAME, device="auto", dtype="fp32")

        mm.interrupt_current_processing(True)
        raised = None
        try:
            inpaint(pipeline, product_mask)
        except mm.InterruptProcessingException as exc:
            raised = type(exc).__name__
        seen["after_interrupt"] = state(raised=raised)

        if not len(cache):
            (sam,) = node["BackdropSAMLoader"].load(sam_model=SAM_NAME, device="auto")
            (pipeline,) = node["BackdropInpaintLoader"].load(model=PIPELINE_NAME, device="auto", dtype="fp32")
        (freed,) = node["BackdropFreeModels"].free()
        seen["after_free_models_node"] = state(freed=freed)
    report.write_text(json.dumps(seen, indent=1))


if __name__ == "__main__":
    _child(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
