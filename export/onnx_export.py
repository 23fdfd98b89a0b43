"""Export a diffusers UNet (SD1.5 or SDXL, 9-channel inpaint or 4-channel) to ONNX.

Exporter and opset, chosen on purpose:
- ``torch.onnx.export(..., dynamo=False)``, the TorchScript exporter. torch made the dynamo exporter the
  default, and that switch broke UNet exports elsewhere (ComfyUI_TensorRT #120): it emits a different
  graph (opset 18+, functions, renamed weights) that onnxruntime's UNet fusions and TensorRT's diffusion
  tooling do not expect. The TorchScript exporter is the proven path for UNets, and naming it
  explicitly keeps the export stable whatever torch's default is.
- opset 17 (``OPSET``): native LayerNormalization, supported by onnxruntime >= 1.14 and TensorRT >= 8.6,
  and the opset onnxruntime's transformer optimizer is written against.

Inputs ``sample [B, C, H, W]``, ``timestep [B]`` (float32), ``encoder_hidden_states [B, T, D]`` and, for
SDXL, ``text_embeds [B, P]`` and ``time_ids [B, 6]``; output ``noise_pred``. Batch, latent height/width
and token count are dynamic. Active LoRAs are fused into the exported weights (the torch model is
restored afterwards), and every export carries a refit map (export/refit.py), so the same file can take
another LoRA's weights by initializer name. Files are checked with the ONNX checker and shape
inference before they appear under their final name; tensors above 2 GiB go to ``<name>.data``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..runtime.engines.spec import CONTEXT, OUTPUT, SAMPLE, TEXT_EMBEDS, TIME_IDS, TIMESTEP, UNetSpec
from ..runtime.errors import InvalidInputError
from .onnx_files import (
    EXTERNAL_DATA_THRESHOLD,
    check_model_file,
    free_name,
    publish,
    staging_dir,
    tensor_bytes,
    write_model,
)
from .refit import RefitMap, build_refit_map, with_dtypes

OPSET = 17
EXPORTER = "torch.onnx.export(dynamo=False), TorchScript exporter"
PRECISIONS = ("fp32", "fp16")


class UNetExportWrapper(torch.nn.Module):
    """Positional inputs and a plain tensor output, as an exporter needs them."""

    def __init__(self, unet: torch.nn.Module, sdxl: bool) -> None:
        super().__init__()
        self.unet = unet
        self.sdxl = sdxl

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                text_embeds: torch.Tensor | None = None, time_ids: torch.Tensor | None = None) -> torch.Tensor:
        added = {"text_embeds": text_embeds, "time_ids": time_ids} if self.sdxl else None
        return self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=added, return_dict=False)[0]


@dataclass
class OnnxExport:
    """What ``export_unet_onnx`` wrote."""

    path: Path
    files: list[Path]
    spec: UNetSpec
    precision: str
    opset: int
    external_data: bool
    refit_map: RefitMap = field(repr=False)
    fused_adapters: list[str] = field(default_factory=list)


def example_inputs(spec: UNetSpec, batch: int = 2, latent: tuple[int, int] | None = None, tokens: int = 77,
                   dtype: torch.dtype = torch.float32, device: Any = "cpu", seed: int = 0) -> dict[str, torch.Tensor]:
    """Random UNet inputs by engine input name (timestep float32, the rest in ``dtype``)."""
    gen = torch.Generator("cpu").manual_seed(seed)
    m = spec.latent_multiple
    h, w = latent or (2 * m, 2 * m)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    feeds = {SAMPLE: rand(batch, spec.in_channels, h, w),
             TIMESTEP: torch.full((batch,), 500.0, device=device), CONTEXT: rand(batch, tokens, spec.context_dim)}
    if spec.is_sdxl:
        feeds[TEXT_EMBEDS] = rand(batch, spec.text_embeds_dim)
        feeds[TIME_IDS] = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0][: spec.time_ids_dim]] * batch,
                                       device=device, dtype=dtype)
    return feeds


def dynamic_axes(spec: UNetSpec) -> dict[str, dict[int, str]]:
    axes = {SAMPLE: {0: "batch", 2: "height", 3: "width"}, TIMESTEP: {0: "batch"},
            CONTEXT: {0: "batch", 1: "tokens"}, OUTPUT: {0: "batch", 2: "height", 3: "width"}}
    if spec.is_sdxl:
        axes.update({TEXT_EMBEDS: {0: "batch"}, TIME_IDS: {0: "batch"}})
    return axes


def export_unet_onnx(unet: torch.nn.Module, path: str | os.PathLike, *, precision: str = "fp32", opset: int = OPSET,
                     external_data: bool | None = None, example_batch: int = 2, tokens: int = 77,
                     check: bool = True) -> OnnxExport:
    """Export ``unet`` to ``path`` (or ``stem-N.onnx`` if taken). Active LoRAs are fused into the export.

    ``precision="fp16"`` converts an fp32 export with the fp32-sensitive ops kept (export/fp16.py); an
    fp16 torch UNet exports as fp16 directly. ``external_data=None`` uses a ``.data`` file only when the
    tensors pass 2 GiB.
    """
    import onnx

    if precision not in PRECISIONS:
        raise InvalidInputError(f"unknown ONNX precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    spec = UNetSpec.from_unet(unet)
    requested = Path(path)
    if requested.suffix.lower() != ".onnx":
        raise InvalidInputError(f"{requested.name}: an ONNX export must end in .onnx")
    dtype = next(unet.parameters()).dtype
    device = next(unet.parameters()).device
    feeds = example_inputs(spec, batch=example_batch, tokens=tokens, dtype=dtype, device=device)
    names = list(spec.input_names)
    with staging_dir(requested.parent) as stage, fused_active_loras(unet) as fused, _eval_mode(unet):
        raw_dir = stage / "raw"
        raw_dir.mkdir()
        raw_path = raw_dir / "unet.onnx"
        _torch_export(UNetExportWrapper(unet, spec.is_sdxl), tuple(feeds[n] for n in names), raw_path, names,
                      dynamic_axes(spec), opset)
        model = onnx.load(str(raw_path), load_external_data=False)
        refit_map = build_refit_map(model, unet, base_dir=raw_dir)
        out_precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")
        if precision == "fp16" and out_precision == "fp32":
            from .fp16 import convert_unet_to_fp16

            model = convert_unet_to_fp16(model, base_dir=raw_dir)
            refit_map = with_dtypes(refit_map, model)
            out_precision = "fp16"
        published, external = publish_model(model, raw_dir, stage, requested, external_data, check)
        del model
    return OnnxExport(path=published[0], files=published, spec=spec, precision=out_precision, opset=opset,
                      external_data=external, refit_map=refit_map, fused_adapters=fused)


def publish_model(model: Any, raw_dir: Path, stage: Path, requested: Path, external_data: bool | None,
                  check: bool) -> tuple[list[Path], bool]:
    """Write ``model`` (its tensors in ``raw_dir``) under a free name beside ``requested``, external data past the
    threshold unless ``external_data`` says, check it when asked, and publish it atomically; returns the published
    files and whether the tensors are external."""
    external = tensor_bytes(model, raw_dir) >= EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
    final = free_name(requested)
    out_dir = stage / "out"
    out_dir.mkdir()
    files = write_model(model, out_dir / final.name, raw_dir, external)
    if check:
        check_model_file(files[0])
    return publish(files, final.parent), external


def _torch_export(module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, names: list[str],
                  axes: dict[str, dict[int, str]], opset: int, output: str = OUTPUT) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        with torch.no_grad():
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset, input_names=names,
                              output_names=[output], dynamic_axes=axes, do_constant_folding=True,
                              export_params=True)


@contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@contextmanager
def fused_active_loras(unet: torch.nn.Module) -> Iterator[list[str]]:
    """Merge every active, enabled, not-yet-merged peft LoRA into its base weight; restore on exit.

    Yields the adapter names merged. Weights (and biases) are restored bit for bit, and each layer's
    merged-adapter list is put back, so the torch model is exactly as before.
    """
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft absent: nothing can be wrapped
        yield []
        return
    saved = []
    names: set[str] = set()
    try:
        with torch.no_grad():
            for module in unet.modules():
                if not isinstance(module, LoraLayer) or module.disable_adapters:
                    continue
                pending = [a for a in module.active_adapters if a in module.lora_A and a not in module.merged_adapters]
                if not pending:
                    continue
                base = module.get_base_layer()
                bias = base.bias.detach().clone() if getattr(base, "bias", None) is not None else None
                saved.append((module, base.weight.detach().clone(), bias, list(module.merged_adapters)))
                module.merge(adapter_names=pending)
                names.update(pending)
        yield sorted(names)
    finally:
        with torch.no_grad():
            for module, weight, bias, merged in reversed(saved):
                base = module.get_base_layer()
                base.weight.copy_(weight)
                if bias is not None:
                    base.bias.copy_(bias)
                module.merged_adapters[:] = merged
