"""Probe for issue 15: would static int8 (activations and weights, NNCF) put OpenVINO's SD1.5 UNet step in the
bf16 error class? Not shipped; this reproduces the figures that decided it.

    .venv/bin/python benchmarks/probe_int8_static.py --keep-float conv_io,time          # everything else int8
    .venv/bin/python benchmarks/probe_int8_static.py --keep-float conv_io,time,conv     # linears + attention int8
    .venv/bin/python benchmarks/probe_int8_static.py --baseline                         # the bf16 engine alone
    .venv/bin/python benchmarks/probe_int8_static.py --keep-float conv_io,time --preset mixed  # asymmetric ranges

The SD1.5-inpaint UNet with random weights (seed 0) is exported as the bf16 engine is (export_unet_openvino),
fixed to 512 px, batch 2; NNCF ``quantize`` (transformer model type, symmetric activations unless ``--preset
mixed``, no bias correction unless ``--bias-correction``) calibrates on six input sets that the measurement does
not use (seeds 11-16, timesteps 100-900); the engine then runs with OpenVINO's bf16 hint (what is not quantized
runs in bf16 on AMX). Error: max |out - torch fp32| / max |torch fp32| on the bench's own input (seed 0,
timestep 500). Each run takes about 4 minutes and up to 16 GB (peak RSS). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from comfyui_backdrop.cli.bench import build_unet
from comfyui_backdrop.export.onnx_export import example_inputs
from comfyui_backdrop.export.openvino_export import export_unet_openvino
from comfyui_backdrop.runtime.engines.openvino_backend import compile_config, kernels, shared_core
from comfyui_backdrop.runtime.engines.precision import cpu_info
from comfyui_backdrop.runtime.engines.spec import UNetSpec
from comfyui_backdrop.runtime.engines.time_embedding import HostTimeEmbeddings

# Layers a run can keep out of int8, by name pattern of the converted graph.
GROUPS = {
    "conv_io": [r".*conv_in/.*", r".*conv_out/.*"],
    "time": [r".*time_embedding.*", r".*time_emb_proj.*"],
    "conv": [r".*aten::_convolution/.*"],
    "linear": [r".*aten::linear/.*"],
    "resnet_conv": [r".*resnets.*conv[12]/.*"],
    "shortcut_sampler": [r".*conv_shortcut/.*", r".*samplers.*"],
}
CALIBRATION = ((11, 900), (12, 700), (13, 500), (14, 300), (15, 100), (16, 600))


def feeds(spec: UNetSpec, host: HostTimeEmbeddings, seed: int, timestep: float) -> tuple[dict, dict]:
    """(engine feeds as numpy, torch inputs) for one random input set."""
    raw = example_inputs(spec, batch=2, latent=(64, 64), tokens=77, seed=seed)
    raw["timestep"] = torch.full((2,), float(timestep))
    embedded = host({n: raw[n] for n in spec.input_names})
    return {k: v.numpy() for k, v in embedded.items()}, raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep-float", default="conv_io,time",
                        help=f"comma-separated layer groups left out of int8: {', '.join(GROUPS)}")
    parser.add_argument("--baseline", action="store_true", help="no quantization: the bf16 engine alone")
    parser.add_argument("--preset", choices=("performance", "mixed"), default="performance",
                        help="NNCF preset: symmetric activations (performance) or asymmetric (mixed)")
    parser.add_argument("--bias-correction", action="store_true", help="let NNCF correct each layer's output bias")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    import nncf
    import openvino as ov

    torch.set_num_threads(2)
    unet = build_unet("sd15", None, 0, torch.float32, torch.device("cpu"))
    spec = UNetSpec.from_unet(unet)
    host = HostTimeEmbeddings(spec)
    test, raw = feeds(spec, host, 0, 500.0)
    with torch.no_grad():
        reference = unet(raw["sample"], raw["timestep"], encoder_hidden_states=raw["encoder_hidden_states"]).sample
    reference = reference.numpy().astype(np.float64)
    core = shared_core()
    with tempfile.TemporaryDirectory() as tmp:
        xml = export_unet_openvino(unet, Path(tmp) / "unet.xml", precision="bf16").path
        del unet
        model = core.read_model(str(xml))
        model = ov.Model([model.get_results()[0]], model.get_parameters(), "unet")  # noise_pred only
        model.reshape({p.get_any_name(): ov.PartialShape(list(test[p.get_any_name()].shape)) for p in model.inputs})
        label = "bf16 engine (no int8)"
        if not args.baseline:
            groups = [g for g in args.keep_float.split(",") if g]
            unknown = sorted(set(groups) - set(GROUPS))
            if unknown:
                parser.error(f"unknown groups {unknown}; choose from {', '.join(GROUPS)}")
            patterns = [p for g in groups for p in GROUPS[g]]
            started = time.perf_counter()
            model = nncf.quantize(
                model, nncf.Dataset([feeds(spec, host, s, t)[0] for s, t in CALIBRATION]),
                model_type=nncf.ModelType.TRANSFORMER, subset_size=len(CALIBRATION),
                preset=nncf.QuantizationPreset(args.preset),
                advanced_parameters=nncf.AdvancedQuantizationParameters(
                    disable_bias_correction=not args.bias_correction),
                ignored_scope=nncf.IgnoredScope(patterns=patterns, validate=False) if patterns else None)
            label = (f"static int8 ({args.preset}{', bias corrected' if args.bias_correction else ''}), float: "
                     f"{','.join(groups) or 'nothing'} ({time.perf_counter() - started:.0f} s)")
        compiled = core.compile_model(model, "CPU", compile_config("bf16", 2))
        request = compiled.create_infer_request()
        request.infer(test)
        times = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            request.infer(test)
            times.append(time.perf_counter() - started)
        out = request.get_output_tensor(0).data.astype(np.float64)
    error = np.abs(out - reference).max() / np.abs(reference).max()
    rms = np.sqrt(np.mean((out - reference) ** 2) / np.mean(reference**2))
    top = sorted(kernels(compiled)["primitives"].items(), key=lambda kv: -kv[1])[:6]
    print(f"{cpu_info().describe()}\n{label}: p50 {statistics.median(times):.3f} s, min {min(times):.3f} s, "
          f"max rel err {error:.2e}, rms rel err {rms:.2e}\nkernels: {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
