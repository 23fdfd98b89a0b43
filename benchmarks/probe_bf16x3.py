"""Probe for issue 15: could the fp32 class borrow the AMX bf16 units by splitting every operand in two bf16 parts
("bf16x3": x*w ~ xh*wh + xl*wh + xh*wl, each product exact in bf16 with fp32 accumulation)? Not shipped; this
reproduces the figures that decided it.

    .venv/bin/python benchmarks/probe_bf16x3.py [--threads 2] [--repeats 7] [--channels 320] [--side 64]

One 3x3 convolution of the SD1.5 UNet's first level (320 -> 320 channels, 64x64 latents, batch 2: about 15
GFLOP), against float64 of the same operands:

- torch fp32 and torch bf16 (the two classes as they are);
- torch fp32 with oneDNN's bf16 math mode (``torch.backends.mkldnn.conv.fp32_precision = "bf16"``: bf16
  products, fp32 accumulation *and output*), alone and as the three split products;
- OpenVINO: the same convolution on bf16 operands, converted back to f32 after it (what an exported graph can
  say), and the plain f32 convolution.

The split is accurate enough for the fp32 class (~4e-6), but no engine here runs it faster than fp32: oneDNN's
bf16 math mode converts the f32 source on the fly (slower than a true bf16 convolution), and an OpenVINO
convolution on bf16 operands also writes bf16, which rounds each partial sum to 8 bits (~3e-3). Not collected
by pytest.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from comfyui_backdrop.runtime.engines.openvino_backend import compile_config, shared_core
from comfyui_backdrop.runtime.engines.precision import cpu_info


def _median_ms(call: Callable[[], object], repeats: int) -> tuple[float, object]:
    out = call()
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times), out


def _split(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``a`` as hi + lo, both exactly representable in bf16 (stored as fp32)."""
    hi = a.bfloat16().float()
    return hi, (a - hi).bfloat16().float()


def _error(out, reference: torch.Tensor) -> float:
    out = torch.as_tensor(np.asarray(out)).double() if not isinstance(out, torch.Tensor) else out.double()
    return float((out - reference).abs().max() / reference.abs().max())


def _openvino_rows(x: torch.Tensor, w: torch.Tensor, threads: int, repeats: int) -> list[tuple[str, float, object]]:
    import openvino as ov
    import openvino.opset13 as ops

    core = shared_core()
    rows = []
    for label, operand_type in (("OpenVINO conv on bf16 operands, output converted to f32", ov.Type.bf16),
                                ("OpenVINO fp32", ov.Type.f32)):
        source = ops.parameter(list(x.shape), ov.Type.f32, name="x")
        weights = ops.constant(w.numpy())
        if operand_type == ov.Type.bf16:
            conv = ops.convolution(ops.convert(source, ov.Type.bf16), ops.convert(weights, ov.Type.bf16),
                                   [1, 1], [1, 1], [1, 1], [1, 1])
            result = ops.convert(conv, ov.Type.f32)
        else:
            result = ops.convolution(source, weights, [1, 1], [1, 1], [1, 1], [1, 1])
        compiled = core.compile_model(ov.Model([result], [source]), "CPU", compile_config("fp32", threads))
        request = compiled.create_infer_request()
        feed = {"x": x.numpy()}

        def run(request=request, feed=feed):
            request.infer(feed)
            return request.get_output_tensor(0).data.copy()

        rows.append((label, *_median_ms(run, repeats)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="probe_bf16x3", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--channels", type=int, default=320)
    parser.add_argument("--side", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    c, side = args.channels, args.side
    x = torch.randn(2, c, side, side, generator=generator)
    w = torch.randn(c, c, 3, 3, generator=generator) / (9 * c) ** 0.5
    reference = F.conv2d(x.double(), w.double(), padding=1)
    xh = _split(x)[0]
    wh, wl = _split(w)
    mkldnn_conv = torch.backends.mkldnn.conv
    before = mkldnn_conv.fp32_precision
    rows = []
    with torch.no_grad():
        rows.append(("torch fp32", *_median_ms(lambda: F.conv2d(x, w, padding=1), args.repeats)))
        xb, wb = x.bfloat16(), w.bfloat16()
        rows.append(("torch bf16", *_median_ms(lambda: F.conv2d(xb, wb, padding=1), args.repeats)))
        try:
            mkldnn_conv.fp32_precision = "bf16"
            rows.append(("torch fp32, oneDNN bf16 math mode", *_median_ms(lambda: F.conv2d(x, w, padding=1),
                                                                          args.repeats)))

            def split_products():
                xh_, xl_ = _split(x)  # the activations are split on every call; the weights once
                return F.conv2d(xh_, wh, padding=1) + F.conv2d(xl_, wh, padding=1) + F.conv2d(xh_, wl, padding=1)

            rows.append(("torch bf16x3 (three products, bf16 math mode)", *_median_ms(split_products, args.repeats)))
        finally:
            mkldnn_conv.fp32_precision = before
    rows += _openvino_rows(xh, wh, args.threads, args.repeats)  # bf16-exact operands: only the output rounds
    gflop = 2 * 2 * c * c * 9 * side * side / 1e9
    print(f"{cpu_info().describe()}\n3x3 convolution {c}->{c}, {side}x{side}, batch 2 ({gflop:.1f} GFLOP), "
          f"{args.threads} threads; error = max |out - float64| / max |float64|")
    for label, ms, out in rows:
        target = F.conv2d(xh.double(), wh.double(), padding=1) if label.startswith("OpenVINO") else reference
        print(f"  {label:50s} {ms:8.1f} ms  error {_error(out, target):.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
