"""`backdrop run --engine auto` when the bench chose torch.compile (frozen): the run compiles the pipeline's own
UNet with Inductor's freezing and makes the torch images, product pixels exact; a FLUX-style refusal does not
apply (the choice names no engine file). Uses the tiny SD1.5 inpainting model through the real loaders."""

from __future__ import annotations

import numpy as np
import torch

from comfyui_backdrop.export.engine_choice import EngineChoice, default_choice_path, write_choice
from comfyui_backdrop.runtime.engines.precision import cpu_info


def test_backdrop_run_auto_runs_the_frozen_compile_it_chose(tmp_path, product_photo, inpaint_models):
    from torch._dynamo.utils import counters

    from comfyui_backdrop.cli.main import main
    from tests.cli.test_run import _quick_run, _read, _write

    photo, _ = product_photo
    _write(tmp_path / "bottle.png", photo)
    common = _quick_run(tmp_path / "bottle.png", inpaint_models, "tiny-sd15-inpaint.safetensors")
    assert main([*common, "--out", str(tmp_path / "torch")]) == 0
    choice = EngineChoice(backend="compile-frozen", precision="fp32", label="torch.compile (frozen) fp32", p50_s=1.0,
                          speedup=1.1, max_rel_error=3e-6, error_budget=2e-2, cpu=cpu_info().to_dict())
    assert choice.request(None) is None and choice.frozen_compile
    write_choice(choice, default_choice_path(inpaint_models))
    graphs = counters["stats"]["unique_graphs"]
    try:
        torch._dynamo.reset()
        assert main([*common, "--out", str(tmp_path / "auto"), "--engine", "auto"]) == 0
    finally:
        default_choice_path(inpaint_models).unlink()
    assert counters["stats"]["unique_graphs"] > graphs  # the UNet was compiled, not run eagerly
    name = "bottle_minimal-studio.png"
    reference = _read(tmp_path / "torch" / name).astype(int)
    ours = _read(tmp_path / "auto" / name).astype(int)
    mask = _read(tmp_path / "torch" / "bottle_mask.png") >= 128
    assert np.abs(ours - reference).max() <= 2  # 8-bit PNGs of the same image (fp32 compile: ~1e-6 apart)
    assert np.array_equal(ours[mask], photo[mask])
