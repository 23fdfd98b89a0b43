"""An engine export that would not fit in memory is refused before it starts, with its need and a way out, instead of
the out-of-memory killer ending the process (ComfyUI with its queue): export_engine, the export node and
`backdrop run --engine auto` (which goes on with torch). What is available reads the kernel and a container's
cgroup limit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from comfyui_backdrop.export.engine_export import BaseIdentity, EngineRequest, export_engine
from comfyui_backdrop.export.memory_need import (
    GIB,
    available_bytes,
    cgroup_headroom,
    check_export_fits,
    check_load_fits,
    export_need,
    load_need,
)
from comfyui_backdrop.runtime.errors import InsufficientMemoryError
from tests.fixtures.tiny_unets import tiny_sd15_unet

pytest.importorskip("openvino", reason="the cpu-engines extra (openvino) is not installed")
BASE = BaseIdentity(name="checkpoints/tiny.safetensors", fingerprint="memfp")
SD15_WEIGHTS = int(3.44e9)


def _files(folder, **contents) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in contents.items():
        (folder / name.replace("_", ".", 1)).write_text(text)


def test_a_container_limit_caps_what_is_available(tmp_path):
    v2 = tmp_path / "v2"
    _files(v2, memory_max=str(8 * GIB), memory_current=str(6 * GIB),
           memory_stat=f"anon {5 * GIB}\ninactive_file {GIB}\nactive_file 0\n")
    assert cgroup_headroom(v2) == 3 * GIB  # 8 - (6 - 1 reclaimable page cache)
    _files(v2, memory_max="max\n")
    assert cgroup_headroom(v2) is None  # no limit
    v1 = tmp_path / "v1"
    _files(v1 / "memory", memory_limit_in_bytes=str(4 * GIB), memory_usage_in_bytes=str(5 * GIB),
           memory_stat=f"cache {GIB}\ntotal_inactive_file {GIB // 2}\n")
    assert cgroup_headroom(v1) == 0  # over its limit already: nothing left, never negative
    _files(v1 / "memory", memory_limit_in_bytes="9223372036854771712")
    assert cgroup_headroom(v1) is None  # v1's "unlimited"
    assert cgroup_headroom(tmp_path / "none") is None
    left = available_bytes()
    assert left is None or 0 < left < 2**50


def test_the_check_names_the_need_and_a_lighter_precision_that_fits():
    precisions = ("fp32", "bf16", "int8", "w8a8")
    need = {p: export_need("openvino", p, SD15_WEIGHTS) for p in precisions}
    assert need["bf16"] < 2 * GIB < min(need["fp32"], need["int8"], need["w8a8"])  # the measured SD1.5 peaks
    with pytest.raises(InsufficientMemoryError) as refused:
        check_export_fits("the unet", "openvino", "fp32", SD15_WEIGHTS, limit=2 * GIB, others=precisions)
    message = str(refused.value)
    assert refused.value.need == need["fp32"] and refused.value.available == 2 * GIB
    assert message.startswith("exporting the unet (3.2 GiB of fp32 weights) as OpenVINO fp32 needs about "
                              f"{need['fp32'] / GIB:.1f} GiB") and "2.0 GiB is the limit given" in message
    assert "memory_gib" in message and "--engine-memory" in message
    assert f"export bf16 (about {need['bf16'] / GIB:.1f} GiB)" in message  # only what would fit is offered
    assert "int8 (about" not in message and "w8a8 (about" not in message
    check_export_fits("the unet", "openvino", "fp32", SD15_WEIGHTS, limit=need["fp32"])  # just fits
    check_export_fits("the unet", "openvino", "fp32", SD15_WEIGHTS, limit=math.inf)  # the check turned off
    with pytest.raises(InsufficientMemoryError, match="0.5 GiB is the limit given. Free memory .*, or give"):
        check_export_fits("the unet", "openvino", "int8", SD15_WEIGHTS, limit=GIB / 2, others=precisions)
    # opening an OpenVINO fp32 engine compiles a copy of its own: more than its export
    assert load_need("openvino", "fp32", SD15_WEIGHTS) > 1.5 * need["fp32"]
    with pytest.raises(InsufficientMemoryError, match="^loading unet.xml .* as OpenVINO fp32"):
        check_load_fits("unet.xml", "openvino", "fp32", SD15_WEIGHTS, limit=4 * GIB)


@pytest.mark.parametrize("request_", [EngineRequest(format="openvino", precision="bf16"),
                                      EngineRequest(format="onnx", precision="fp32")], ids=["openvino", "onnx"])
def test_export_engine_refuses_before_writing_anything_and_a_cached_engine_needs_no_memory(tmp_path, request_):
    unet = tiny_sd15_unet()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    with pytest.raises(InsufficientMemoryError, match="exporting the unet"):
        export_engine(unet, BASE, request_, tmp_path, memory_limit=1024)
    assert list(tmp_path.iterdir()) == []  # no engine, no manifest, no staging folder left
    assert all(np.array_equal(v.numpy(), before[k].numpy()) for k, v in unet.state_dict().items())
    built = export_engine(unet, BASE, request_, tmp_path)  # the machine has plenty for a tiny UNet
    assert not built.cached and built.path.is_file()
    again = export_engine(unet, BASE, request_, tmp_path, memory_limit=1024)  # found in the cache: nothing to build
    assert again.cached and again.path == built.path


def test_the_engine_nodes_refuse_with_the_need_and_comfyui_keeps_running(inpaint_models):
    from comfyui_backdrop.nodes.engines import BackdropExportEngine, BackdropLoadEngine
    from comfyui_backdrop.runtime.errors import InvalidInputError
    from comfyui_backdrop.runtime.inpainting.loader import load_pipeline

    handle = load_pipeline("checkpoints/tiny-sd15-inpaint.safetensors")
    # 176 px: no other test exports this engine (a cached one is found, not refused)
    widgets = {"format": "openvino", "precision": "int8", "resolutions": "176x176", "images_per_batch": 1,
               "onnx_target": "portable (refittable, TensorRT input)", "refittable": False, "optimization_level": 3}
    folder = inpaint_models / "openvino"
    existing = set(folder.iterdir()) if folder.is_dir() else set()
    with pytest.raises(InsufficientMemoryError, match="engine nodes' memory_gib"):
        BackdropExportEngine().export(handle, **widgets, memory_gib=1e-6)
    assert (set(folder.iterdir()) if folder.is_dir() else set()) == existing
    with pytest.raises(InvalidInputError, match="memory_gib"):
        BackdropExportEngine().export(handle, **widgets, memory_gib=-1.0)
    engine = BackdropExportEngine().export(handle, **widgets)[0]  # what the machine has: plenty for a tiny UNet
    load = {"engine": engine, "provider": "auto", "threads": 1}
    with pytest.raises(InsufficientMemoryError, match=f"loading {engine.split('/')[1]} .* as OpenVINO int8"):
        BackdropLoadEngine().load(handle, **load, memory_gib=1e-6)
    on_engine = BackdropLoadEngine().load(handle, **load)[0]
    assert on_engine.pipe.unet is not handle.pipe.unet


def test_run_with_engine_auto_stays_on_torch_when_the_export_would_not_fit(tmp_path, product_photo, inpaint_models,
                                                                           capsys):
    from comfyui_backdrop.cli.main import main
    from comfyui_backdrop.export.engine_choice import EngineChoice, default_choice_path, write_choice
    from comfyui_backdrop.runtime.engines.precision import cpu_info
    from tests.cli.test_run import _quick_run, _read, _write

    photo, _ = product_photo
    _write(tmp_path / "bottle.png", photo)
    common = _quick_run(tmp_path / "bottle.png", inpaint_models, "tiny-sd15-inpaint.safetensors")
    assert main([*common, "--out", str(tmp_path / "torch")]) == 0
    choice = EngineChoice(backend="openvino", precision="bf16", label="OpenVINO bf16", p50_s=1.0, speedup=2.0,
                          max_rel_error=1e-2, error_budget=2e-2, cpu=cpu_info().to_dict())
    write_choice(choice, default_choice_path(inpaint_models))
    try:
        capsys.readouterr()
        assert main([*common, "--out", str(tmp_path / "auto"), "--engine", "auto", "--engine-memory", "1e-6"]) == 0
        err = capsys.readouterr().err
        assert "--engine auto runs on torch" in err and "OpenVINO bf16 needs about" in err
        name = "bottle_minimal-studio.png"
        assert np.array_equal(_read(tmp_path / "auto" / name), _read(tmp_path / "torch" / name))
        assert main([*common, "--out", str(tmp_path / "bad"), "--engine-memory", "4"]) == 2
        assert "give --engine" in capsys.readouterr().err
        assert main([*common, "--out", str(tmp_path / "bad"), "--engine", "auto", "--engine-memory", "0"]) == 2
        assert "positive number of GiB" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    finally:
        default_choice_path(inpaint_models).unlink()


def test_attach_refuses_an_engine_that_would_not_fit_and_leaves_the_pipeline_as_it_was(tmp_path, inpaint_models):
    from comfyui_backdrop.export.attach import attach_engine
    from comfyui_backdrop.runtime.inpainting.loader import load_pipeline

    handle = load_pipeline("checkpoints/tiny-sd15-inpaint.safetensors")
    unet = handle.pipe.unet
    built = export_engine(unet, BaseIdentity(handle.name, handle.fingerprint), EngineRequest(format="onnx"), tmp_path)
    with pytest.raises(InsufficientMemoryError, match=f"loading {built.path.name} .* as ONNX fp32"):
        attach_engine(handle, built.path, memory_limit=1024)
    assert handle.pipe.unet is unet
    assert attach_engine(handle, built.path, memory_limit=math.inf).pipe.unet is not unet


def test_an_openvino_export_of_a_half_precision_unet_counts_its_fp32_copy(tmp_path):
    import torch

    from comfyui_backdrop.export.memory_need import fp32_copy_bytes, fp32_weight_bytes

    unet = tiny_sd15_unet()
    weights = fp32_weight_bytes(unet)
    half = tiny_sd15_unet().to(torch.bfloat16)
    assert fp32_copy_bytes(unet) == 0 and fp32_copy_bytes(half) == weights == fp32_weight_bytes(half)
    limit = export_need("openvino", "fp32", weights) + weights // 2  # the need, but not the need and a copy
    with pytest.raises(InsufficientMemoryError, match="an fp32 copy of its weights included"):
        export_engine(half, BASE, EngineRequest(format="openvino"), tmp_path, memory_limit=limit)
    assert list(tmp_path.iterdir()) == []
    assert not export_engine(unet, BASE, EngineRequest(format="openvino"), tmp_path, memory_limit=limit).cached
