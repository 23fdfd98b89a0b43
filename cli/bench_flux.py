"""``backdrop bench --model <FLUX folder>``: one FLUX transformer step on torch eager, onnxruntime and OpenVINO.

The same interleaved timing, parity and memory as the UNet step (export/bench.py), on the FLUX transformer
contract (runtime/engines/flux_spec.py): batch ``--batch``, image tokens from ``--size`` / ``--width`` /
``--height`` (one token per 16x16 pixels; Kontext twice as many: the reference image joins the sequence)
and ``--tokens`` text tokens. Rows:

- ``eager``: the torch transformer (fp32, the baseline and reference; bf16 as the CPU allows, as for the UNet);
- ``ort`` / ``ort-plain`` (one row, ``ort-plain``): the portable ONNX export in onnxruntime's CPU provider,
  fp32 (onnxruntime's graph fusions and int8 quantization here are written for SD UNets, so the other
  precisions are skipped rows; ``--backends auto`` can choose it and ``backdrop run --engine auto`` builds it);
- ``openvino``: the OpenVINO IR in every precision this CPU runs (fp32; bf16/fp16 with the unit; int8
  weights by NNCF).

``compile``, ``compile-frozen``, ``ort-int8`` and ``trt`` rows are listed as skipped, with why.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from typing import Any

SKIP_REASONS = {**dict.fromkeys(("compile", "compile-frozen"), "torch.compile is benchmarked for SD UNets only"),
                "trt": "TensorRT is built for SD UNets only"}


def image_tokens(handle: Any, width: int, height: int) -> int:
    """Transformer image tokens for a ``width`` x ``height`` picture (2x2 patches of the 8x latent)."""
    tokens = (height // 16) * (width // 16)
    return 2 * tokens if handle.family == "flux-kontext" else tokens


def flux_support(backend: str, precision: str, plan: Any, support: Callable) -> tuple[bool, str]:
    """(run it, note or reason) for a FLUX transformer row; ``support`` answers for the rows shared with the UNet."""
    if backend in SKIP_REASONS:
        return False, SKIP_REASONS[backend]
    if backend == "ort-plain":
        if precision != "fp32":
            return False, "the FLUX ONNX export is fp32 (onnxruntime's fp16/int8 conversions here are for SD UNets)"
        return (False, "FLUX engines run on the CPU here") if plan.device.type == "cuda" else (True, "")
    return support(backend, precision, plan)


def flux_step(handle: Any, plan: Any, exports: Any, bench: Any) -> tuple[list, list]:
    """Measured rows and skipped rows for one transformer step of ``handle``'s FLUX transformer.

    ``bench`` is the cli.bench module (passed in, not imported, so the two modules do not import each other):
    its row names, baseline, support table, torch precision copies and round printer are shared.
    """
    import torch

    from ..export.bench import Candidate, MemoryProbe, Skipped, measure, parity
    from ..export.flux_export import example_inputs
    from ..runtime.engines.flux_spec import FluxSpec

    row_name = bench.row_name

    transformer = handle.denoiser
    spec = FluxSpec.from_transformer(transformer)
    feeds = example_inputs(spec, batch=plan.batch, img_tokens=image_tokens(handle, plan.width, plan.height),
                           txt_tokens=plan.tokens, seed=plan.seed, device=plan.device)
    probe = MemoryProbe()
    candidates, skipped, outputs = {}, [], {}
    rows = [("ort-plain", precision) if backend in ("ort", "ort-int8") else (backend, precision)
            for backend, precision in plan.rows]
    for backend, precision in dict.fromkeys(rows):
        name = row_name(backend, precision)
        ok, note = flux_support(backend, precision, plan, bench.support)
        if not ok:
            print(f"{name}: skipped ({note})", file=sys.stderr)
            skipped.append(Skipped(name, note))
            continue

        def make(backend: str = backend, precision: str = precision) -> tuple[Any, str]:
            return _flux_backend(backend, precision, transformer, spec, plan, exports, bench._torch_unet)

        row = bench.set_up_row(name, note, make, lambda made: made.run(**feeds), probe, skipped)
        if row is None:
            continue
        made, outputs[name], setup = row
        candidates[(backend, precision)] = Candidate(name, lambda made=made: made.run(**feeds), backend=backend,
                                                     precision=precision, **setup)
        gc.collect()
    reference = outputs[row_name("eager", "fp32")].float().cpu()
    errors = {name: parity(reference, out) for name, out in outputs.items()}
    outputs.clear()
    sync = torch.cuda.synchronize if plan.device.type == "cuda" else None
    ordered = [candidates[r] for r in dict.fromkeys(rows) if r in candidates]
    results = measure(ordered, None, rounds=plan.rounds, warmup=plan.warmup, baseline=bench.BASELINE, sync=sync,
                      on_round=bench._print_round, probe_calls=False)
    for result in results:
        result.max_abs_error, result.max_rel_error = errors[result.name]
    return results, skipped


def _flux_backend(backend: str, precision: str, transformer: Any, spec: Any, plan: Any, exports: Any,
                  torch_copy: Callable) -> tuple[Any, str]:
    from ..runtime.engines.flux_backend import OpenVinoFluxBackend, OrtFluxBackend, TorchFluxBackend

    if backend == "eager":
        return TorchFluxBackend(torch_copy(transformer, precision, exports)), ""
    if backend == "ort-plain":
        if "flux-onnx" not in exports.built:
            from ..export.flux_export import export_flux_onnx

            exports.built["flux-onnx"] = export_flux_onnx(transformer, exports.work / "transformer.onnx")
        return OrtFluxBackend(exports.built["flux-onnx"].path, spec, threads=plan.threads), "portable graph, fp32"
    from ..export.flux_export import export_flux_openvino

    key = f"flux-openvino-{precision}"
    if key not in exports.built:
        exports.built[key] = export_flux_openvino(transformer, exports.work / f"transformer_{precision}.xml",
                                                  precision=precision)
    exported = exports.built[key]
    made = OpenVinoFluxBackend(exported.path, spec, precision=precision, threads=plan.threads)
    return made, f"weights {exported.weight_compression}" if exported.weight_compression else ""
