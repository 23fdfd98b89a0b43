"""Export a diffusers ``FluxTransformer2DModel`` (FLUX.1 Fill, Kontext, [dev]) to ONNX or an OpenVINO IR.

The contract (input and output names, dynamic axes) is ``FluxSpec`` (runtime/engines/flux_spec.py);
this module adds the sample input and the two exports. The choices follow the UNet export
(export/onnx_export.py) and why:

- the TorchScript exporter, ``torch.onnx.export(..., dynamo=False)``, at opset 17, the same as the UNet:
  the dynamo exporter emits opset 18+ graphs with functions and renamed weights, which the refit map
  (initializers named after torch weights) and onnxruntime's fusions do not expect. OpenVINO converts
  the torch module directly (TorchScript tracing), as for the UNet.
- Two spots of diffusers' FLUX code do not trace into a graph with dynamic shapes, so both are rewritten
  *for the export only* (``export_patches``; the torch model is unchanged afterwards), with the same math:
  ``torch.nn.RMSNorm`` (the q/k norms) becomes ``aten::rms_norm``, which opset 17 lacks (it arrives in
  opset 23), so it is written out as ``x * rsqrt(mean(x^2) + eps) * weight``; and the rotary embedding's
  ``x.reshape(*x.shape[:-1], -1, 2)`` records the traced batch and sequence length as constants (an
  export at batch 2 then fails at batch 1), so it becomes ``x.unflatten(-1, (-1, 2))``, whose shape is
  read from the tensor at run time.
- RoPE frequencies are computed in float64 inside the graph (diffusers does so on the CPU); onnxruntime's
  CPU provider runs those ops (Sin, Cos, Mul, Cast) in double, so no op is missing there.

Active LoRAs are fused into the exported weights (``fused_active_loras``; the torch model is restored),
and the ONNX export carries a refit map, so the same portable file can take another LoRA stack's
weights by initializer name, as for the UNet. Files are checked and published like the UNet's (staged,
never overwriting, external data above 2 GiB).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..runtime.engines.flux_spec import (
    CONTEXT,
    GUIDANCE,
    HIDDEN,
    IMG_IDS,
    OUTPUT,
    POOLED,
    TIMESTEP,
    TXT_IDS,
    FluxSpec,
)
from ..runtime.errors import InvalidInputError
from .onnx_export import OPSET, OnnxExport, _eval_mode, _torch_export, fused_active_loras, publish_model
from .onnx_files import (
    staging_dir,
)
from .refit import build_refit_map

WRAPPER_PREFIX = "transformer."  # the export wrapper holds the model as ``self.transformer``


class FluxExportWrapper(torch.nn.Module):
    """Positional inputs in ``spec.input_names`` order and a plain tensor output, as an exporter needs them."""

    def __init__(self, transformer: torch.nn.Module, spec: FluxSpec) -> None:
        super().__init__()
        self.transformer = transformer
        self.names = spec.input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.transformer(**dict(zip(self.names, inputs, strict=True)), return_dict=False)[0]


def example_inputs(spec: FluxSpec, batch: int = 2, img_tokens: int = 16, txt_tokens: int = 8, seed: int = 0,
                   dtype: torch.dtype = torch.float32, device: Any = "cpu") -> dict[str, torch.Tensor]:
    """Random FLUX transformer inputs by engine input name (ids as the pipelines make them: float positions)."""
    gen = torch.Generator("cpu").manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    side = max(1, int(img_tokens ** 0.5))
    rows = torch.arange(img_tokens) // side
    img_ids = torch.stack([torch.zeros(img_tokens), rows.float(), (torch.arange(img_tokens) % side).float()], dim=1)
    feeds = {HIDDEN: rand(batch, img_tokens, spec.in_channels), CONTEXT: rand(batch, txt_tokens, spec.context_dim),
             POOLED: rand(batch, spec.pooled_dim), TIMESTEP: torch.full((batch,), 0.7, device=device, dtype=dtype),
             IMG_IDS: img_ids.to(device=device, dtype=dtype),
             TXT_IDS: torch.zeros(txt_tokens, 3, device=device, dtype=dtype)}
    if spec.guidance:
        feeds[GUIDANCE] = torch.full((batch,), 3.5, device=device, dtype=dtype)
    return feeds


def _rms_norm_forward(norm: torch.nn.RMSNorm):
    dims = tuple(range(-len(norm.normalized_shape), 0))

    def forward(x: torch.Tensor) -> torch.Tensor:
        eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
        y = x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)
        return y * norm.weight if norm.weight is not None else y

    return forward


def _traceable_rotary(x: torch.Tensor, freqs_cis: Any, use_real: bool = True, use_real_unbind_dim: int = -1,
                      sequence_dim: int = 2) -> torch.Tensor:
    """diffusers' ``apply_rotary_emb`` for FLUX (real, pairs on the last axis) with a run-time reshape."""
    if not use_real or use_real_unbind_dim != -1:
        raise InvalidInputError("the FLUX export supports the real, interleaved rotary embedding only")
    cos, sin = freqs_cis
    index = (None, slice(None), None, slice(None)) if sequence_dim == 1 else (None, None, slice(None), slice(None))
    cos, sin = cos[index].to(x.device), sin[index].to(x.device)
    x_real, x_imag = x.unflatten(-1, (-1, 2)).unbind(-1)
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)


@contextmanager
def export_patches(transformer: torch.nn.Module) -> Iterator[None]:
    """RMSNorm written out and a run-time-shaped rotary embedding, for tracing only; undone on exit."""
    from diffusers.models.transformers import transformer_flux

    norms = [m for m in transformer.modules() if isinstance(m, torch.nn.RMSNorm)]
    original_rotary = transformer_flux.apply_rotary_emb
    for norm in norms:
        norm.forward = _rms_norm_forward(norm)
    transformer_flux.apply_rotary_emb = _traceable_rotary
    try:
        yield
    finally:
        transformer_flux.apply_rotary_emb = original_rotary
        for norm in norms:
            del norm.forward


def export_flux_onnx(transformer: torch.nn.Module, path: str | os.PathLike, *, external_data: bool | None = None,
                     example_batch: int = 2, check: bool = True) -> OnnxExport:
    """Export ``transformer`` (active LoRAs fused in) to ``path`` (or ``stem-N.onnx`` if taken), fp32, with
    dynamic batch and sequence lengths; the result carries a refit map."""
    import onnx

    spec = FluxSpec.from_transformer(transformer)
    requested = Path(path)
    if requested.suffix.lower() != ".onnx":
        raise InvalidInputError(f"{requested.name}: an ONNX export must end in .onnx")
    feeds = example_inputs(spec, batch=example_batch)
    names = list(spec.input_names)
    with staging_dir(requested.parent) as stage, fused_active_loras(transformer) as fused, _eval_mode(transformer):
        module = transformer if next(transformer.parameters()).dtype == torch.float32 else _fp32_copy(transformer)
        raw_dir = stage / "raw"
        raw_dir.mkdir()
        raw_path = raw_dir / "transformer.onnx"
        with export_patches(module):
            _torch_export(FluxExportWrapper(module, spec), tuple(feeds[n] for n in names), raw_path, names,
                          spec.dynamic_axes(), OPSET, output=OUTPUT)
        model = onnx.load(str(raw_path), load_external_data=False)
        refit_map = build_refit_map(model, module, base_dir=raw_dir, prefix=WRAPPER_PREFIX)
        published, external = publish_model(model, raw_dir, stage, requested, external_data, check)
        del model
    return OnnxExport(path=published[0], files=published, spec=spec, precision="fp32", opset=OPSET,  # type: ignore[arg-type]
                      external_data=external, refit_map=refit_map, fused_adapters=fused)


def export_flux_openvino(transformer: torch.nn.Module, path: str | os.PathLike, precision: str = "fp32",
                         example_batch: int = 2) -> Any:
    """The transformer (active LoRAs fused in) as an OpenVINO IR in ``precision`` (fp32, bf16/fp16 weights,
    or int8 weights by NNCF), dynamic batch and sequence lengths; returns an ``OpenVinoExport``."""
    from .openvino_export import convert_module, save_ir

    spec = FluxSpec.from_transformer(transformer)
    example = example_inputs(spec, batch=example_batch)
    dynamic = {name: tuple(axes) for name, axes in spec.dynamic_axes().items()}
    with fused_active_loras(transformer) as fused:
        module = transformer if next(transformer.parameters()).dtype == torch.float32 else _fp32_copy(transformer)
        with export_patches(module):
            model = convert_module(FluxExportWrapper(module, spec), example, dynamic, [OUTPUT])
        exported = save_ir(model, path, precision)
    exported.fused_adapters = fused
    return exported


def _fp32_copy(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module).float()
