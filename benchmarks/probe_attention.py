"""Probe for issue 15: the SD1.5 UNet's largest attention alone, OpenVINO against torch, per precision.

    .venv/bin/python benchmarks/probe_attention.py [--threads 2] [--repeats 5] [--heads 8] [--head-dim 40]

One scaled-dot-product attention at 64x64 latents (512 px): batch 2 (CFG), 4096 tokens, 8 heads of 40, the
five self-attentions that take about a third of a bf16 UNet step in every engine. OpenVINO compiles the
opset-13 op as it does inside the UNet engine (the CPU plugin decomposes it into a fused attention subgraph),
torch runs ``scaled_dot_product_attention`` (its flash kernel on the CPU). Prints the median time and the error
against torch fp32 for each. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import torch

from comfyui_backdrop.runtime.engines.openvino_backend import compile_config, shared_core
from comfyui_backdrop.runtime.engines.precision import cpu_info, native_support


def _median_ms(call, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="probe_attention")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=4096)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = [2, args.heads, args.tokens, args.head_dim]
    rng = np.random.default_rng(0)
    qkv = [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]
    reference = torch.nn.functional.scaled_dot_product_attention(*(torch.from_numpy(a) for a in qkv)).numpy()
    print(f"CPU: {cpu_info().describe()}, {args.threads} threads, attention {shape}")
    params = [ops.parameter(shape, ov.Type.f32, name=n) for n in ("q", "k", "v")]
    model = ov.Model([ops.scaled_dot_product_attention(*params, causal=False)], params, "attention")
    core = shared_core()
    for precision in ("fp32", "bf16"):
        native, why = native_support(precision)
        if not native:
            print(f"{precision}: skipped ({why})")
            continue
        compiled = core.compile_model(model, "CPU", compile_config(precision, args.threads))
        request = compiled.create_infer_request()
        ov_ms = _median_ms(lambda request=request: request.infer(qkv), args.repeats)
        ov_error = np.abs(request.get_output_tensor(0).data - reference).max() / np.abs(reference).max()
        dtype = torch.float32 if precision == "fp32" else torch.bfloat16
        tensors = [torch.from_numpy(a).to(dtype) for a in qkv]
        torch_ms = _median_ms(lambda tensors=tensors: torch.nn.functional.scaled_dot_product_attention(*tensors),
                              args.repeats)
        torch_error = (torch.nn.functional.scaled_dot_product_attention(*tensors).float().numpy() - reference)
        print(f"{precision}: OpenVINO {ov_ms:.1f} ms (error {ov_error:.1e}), torch {torch_ms:.1f} ms "
              f"(error {np.abs(torch_error).max() / np.abs(reference).max():.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
