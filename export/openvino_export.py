"""Convert pipeline parts (UNet, text encoders, VAE encoder and decoder) to OpenVINO IR, in a chosen precision.

Why straight from torch and not through the ONNX file: ``ov.convert_model`` traces the module itself
(TorchScript), shares the weights with it instead of copying them, and needs no 3.4 GB intermediate
file for an SD1.5 UNet; the ONNX route would add an export and a read. The UNet goes through the same
``UNetExportWrapper`` and LoRA fusion (``fused_active_loras``) as the ONNX export, so both engines
compute the same function from the same weights, with the same input and output names.

Precision is applied here, once:
- ``fp32``: weights kept in fp32 (``compress_to_fp16=False``), so the engine can meet a 1e-4 budget;
- ``bf16`` / ``fp16``: weights stored in fp16 (half the file); the CPU plugin runs bf16/fp16 kernels;
- ``int8``: NNCF ``compress_weights`` (INT8_ASYM, per output channel) on every MatMul/Conv weight;
  activations stay f32. NNCF is imported only for int8; without it the error names the extra.
- ``w8a8`` (UNet only): NNCF ``quantize``, static int8 of weights and activations, its scales collected on
  calibration inputs (export/calibration.py); ``conv_in``, ``conv_out`` and the time embedding stay float (the
  UNet's narrowest layers, where int8 costs the most accuracy for the least time). Float weights stay fp32.

Files are written to a private staging folder and hard-linked into place under a free name (an
existing engine is never overwritten); ``<name>.xml`` always has ``<name>.bin`` beside it.

The feature cache on an engine (runtime/inpainting/feature_cache.py on the torch UNet) needs two graphs,
so every OpenVINO UNet export writes both: the full UNet, which also returns ``deep_features`` (the
hidden state entering the last up block), and a *shallow* UNet (``unet_shallow_...xml``) that takes those
features as an input and computes only ``conv_in``, the first down block, the last up block and
``conv_out``. It is traced from the same module with the deep blocks' ``forward`` replaced, so both
graphs share one definition of the UNet.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..runtime.engines.manifest import SUFFIX
from ..runtime.engines.openvino_backend import DEEP_FEATURES, EXTRA, import_openvino
from ..runtime.engines.precision import check_precision
from ..runtime.engines.spec import CONTEXT, OUTPUT, SAMPLE, TEXT_EMBEDS, TIME_IDS, TIMESTEP, UNetSpec
from ..runtime.engines.time_embedding import (
    TIME_IDS_EMBEDDING,
    TIMESTEP_EMBEDDING,
    HostTimeEmbeddings,
    embeds_on_host,
)
from ..runtime.errors import InvalidInputError, InvalidModelError, OutputWriteError
from .graph_rewrites import export_rewrites
from .onnx_export import UNetExportWrapper, _eval_mode, example_inputs, fused_active_loras
from .onnx_files import publish, staging_dir
from .time_embedding_inputs import EmbeddingInputsWrapper

TRACE_CHECK = False  # torch.jit.trace's check, OpenVINO's default (benchmarks/probe_export_memory.py --trace-check)
NO_CALIBRATION = "a w8a8 engine needs calibration inputs (export/calibration.py); none were given"
CONVERTER = "openvino.convert_model(torch module, TorchScript tracing)"
# Layers of a w8a8 UNet left float, by name in the converted graph (the converter names ops after the modules).
FLOAT_SCOPES = (r".*conv_in/.*", r".*conv_out/.*", r".*time_embedding.*", r".*time_emb_proj.*",
                r".*add_embedding.*")
# How quantize_static collects a w8a8 engine's scales; the engine cache key carries it (a change exports anew).
W8A8_RECIPE = "nncf.quantize transformer preset performance, no bias correction; conv_in/conv_out/time embedding float"
# The axes of each input that stay dynamic in the IR (everything else is fixed by the example).
UNET_DYNAMIC = {SAMPLE: (0, 2, 3), TIMESTEP: (0,), CONTEXT: (0, 1), TEXT_EMBEDS: (0,), TIME_IDS: (0,),
                TIMESTEP_EMBEDDING: (0,), TIME_IDS_EMBEDDING: (0,), DEEP_FEATURES: (0, 2, 3)}


@dataclass
class OpenVinoExport:
    """What an OpenVINO export wrote."""

    path: Path  # the .xml
    files: list[Path]  # .xml and .bin
    precision: str
    weight_compression: str = ""  # "int8_asym" for int8, "fp16" for bf16/fp16, "" for fp32
    fused_adapters: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    shallow: OpenVinoExport | None = None  # the shallow UNet for the feature cache
    rewrites: dict[str, int] = field(default_factory=dict)  # export_rewrites applied: {name: modules}


def openvino_exporter(converter: str) -> dict[str, Any]:
    from ..runtime.engines.precision import cpu_info

    return {"exporter": converter, "openvino": import_openvino().__version__, "torch": torch.__version__,
            "cpu": cpu_info().describe()}


def free_ir_name(requested: Path) -> Path:
    """``requested`` (``x.xml``), or ``x-N.xml``, such that ``.xml``, ``.bin`` and the manifest are all free."""
    n = 0
    while True:
        stem = requested.stem if n == 0 else f"{requested.stem}-{n}"
        xml = requested.with_name(stem + ".xml")
        if not any(p.exists() for p in (xml, xml.with_suffix(".bin"), xml.with_name(xml.name + SUFFIX))):
            return xml
        n += 1


def convert_module(module: torch.nn.Module, example: dict[str, torch.Tensor], dynamic: dict[str, Sequence[int]],
                   output_names: Sequence[str]) -> Any:
    """``module(**example)`` traced into an ``ov.Model`` whose inputs/outputs carry these names; the axes
    listed in ``dynamic`` are left dynamic."""
    ov = import_openvino()
    names = list(example)
    shapes = []
    for name in names:
        tensor = example[name]
        dims = [-1 if axis in dynamic.get(name, ()) else int(d) for axis, d in enumerate(tensor.shape)]
        shapes.append((ov.PartialShape(dims), ov.Type.i64 if tensor.dtype == torch.int64 else ov.Type.f32))
    with warnings.catch_warnings(), torch.no_grad(), _eval_mode(module):
        warnings.simplefilter("ignore")
        try:
            model = ov.convert_model(_traced(module, tuple(example[n] for n in names)), input=shapes)
        except Exception as exc:  # the frontends raise their own types (OpConversionFailure, RuntimeError...)
            raise InvalidModelError(f"OpenVINO could not convert the {type(module).__name__}: {exc}") from exc
    if len(model.outputs) != len(output_names):
        raise InvalidModelError(f"the converted model has {len(model.outputs)} outputs, expected {list(output_names)}")
    for port, name in zip(model.inputs, names, strict=True):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, output_names, strict=True):
        port.get_tensor().set_names({name})
    return model


def _traced(module: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> Any:
    """The decoder ``ov.convert_model`` makes of ``module`` (TorchScript tracing on ``example``), without
    ``torch.jit.trace``'s check (unless ``TRACE_CHECK``), which runs the module twice more to compare (a quarter
    of an SD1.5 UNet's export time; the engines' parity tests check the result instead), as OpenVINO's own
    notebooks convert diffusion models."""
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    return TorchScriptPythonDecoder(module, example_input=example, trace_kwargs={"check_trace": TRACE_CHECK})


def import_nncf(precision: str) -> Any:
    """``nncf`` (its log quietened), or an error naming the extra that installs it."""
    try:
        import nncf
    except ImportError as exc:
        raise InvalidInputError(f"{precision} OpenVINO engines need NNCF: pip install 'comfyui-backdrop[{EXTRA}]' "
                                "(or `pip install nncf`)") from exc
    import logging

    logging.getLogger("nncf").setLevel(logging.ERROR)
    return nncf


def quantize_static(model: Any, feeds: Sequence[dict[str, Any]]) -> Any:
    """``model`` with int8 weights and activations, its activation scales from ``feeds`` (engine input name ->
    array); the float layers are those ``FLOAT_SCOPES`` match."""
    if not feeds:
        raise InvalidInputError(NO_CALIBRATION)
    nncf = import_nncf("w8a8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nncf.quantize(
            model, nncf.Dataset(list(feeds)), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds),
            preset=nncf.QuantizationPreset.PERFORMANCE,
            advanced_parameters=nncf.AdvancedQuantizationParameters(disable_bias_correction=True),
            ignored_scope=nncf.IgnoredScope(patterns=list(FLOAT_SCOPES), validate=False))


def apply_precision(model: Any, precision: str, feeds: Sequence[dict[str, Any]] | None = None
                    ) -> tuple[Any, bool, str]:
    """(model, compress_to_fp16, weight compression label) for ``precision``; ``feeds`` calibrate ``w8a8``."""
    check_precision(precision)
    if precision == "int8":
        nncf = import_nncf(precision)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        return model, False, "int8_asym"
    if precision == "w8a8":
        label = f"int8 weights and activations ({len(feeds or ())} calibration inputs)"
        return quantize_static(model, feeds or ()), False, label
    if precision in ("bf16", "fp16"):
        return model, True, "fp16"
    return model, False, ""


def write_failure(final: Path, exc: Exception) -> str:
    """Why writing the engine ``final`` failed, with the free space where it was going."""
    import shutil

    try:
        free = f"{shutil.disk_usage(final.parent).free / 2**30:.1f} GiB free there"
    except OSError:
        free = "its free space unknown"
    return (f"the OpenVINO engine {final.name} could not be written to {final.parent} ({free}; an fp32 SD1.5 UNet "
            f"engine takes about 4 GB, an SDXL one 10 GB): {exc}. Free some space or choose another models folder; "
            "nothing was left behind")


def save_ir(model: Any, requested: str | os.PathLike, precision: str,
            feeds: Sequence[dict[str, Any]] | None = None) -> OpenVinoExport:
    """Apply ``precision`` (``feeds`` calibrate ``w8a8``) and write ``model`` as ``requested`` (``.xml`` +
    ``.bin``), atomically, never overwriting (a taken name becomes ``stem-N.xml``)."""
    ov = import_openvino()
    requested = Path(requested)
    if requested.suffix.lower() != ".xml":
        raise InvalidInputError(f"{requested.name}: an OpenVINO IR must end in .xml")
    inputs = [p.get_any_name() for p in model.inputs]
    outputs = [p.get_any_name() for p in model.outputs]
    model, compress, compression = apply_precision(model, precision, feeds)
    final = free_ir_name(requested)
    with staging_dir(final.parent) as stage:
        staged = stage / final.name
        try:
            ov.save_model(model, str(staged), compress_to_fp16=compress)
        except RuntimeError as exc:  # OpenVINO reports a failed write as a bare stream error
            raise OutputWriteError(write_failure(final, exc)) from exc
        files = publish([staged, staged.with_suffix(".bin")], final.parent)
    return OpenVinoExport(path=files[0], files=files, precision=precision, weight_compression=compression,
                          inputs=inputs, outputs=outputs)


def unet_wrapper(unet: torch.nn.Module, sdxl: bool, embedded: bool) -> torch.nn.Module:
    """The positional-input UNet to trace: with the time embeddings as inputs (``embedded``) or the timestep."""
    return EmbeddingInputsWrapper(unet, sdxl) if embedded else UNetExportWrapper(unet, sdxl)


class DeepFeatureUNet(torch.nn.Module):
    """The UNet returning ``(noise_pred, deep_features)``: its output and the input of its last up block."""

    def __init__(self, unet: torch.nn.Module, sdxl: bool, embedded: bool = False) -> None:
        super().__init__()
        self.unet = unet
        self.wrapper = unet_wrapper(unet, sdxl, embedded)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}
        hook = self.unet.up_blocks[-2].register_forward_hook(lambda _m, _a, out: captured.__setitem__("deep", out))
        try:
            noise = self.wrapper(*inputs)
        finally:
            hook.remove()
        return noise, captured["deep"]


class ShallowUNet(torch.nn.Module):
    """The UNet's outermost level only; the deep blocks' result comes in as ``deep_features``."""

    def __init__(self, unet: torch.nn.Module, sdxl: bool, embedded: bool = False) -> None:
        super().__init__()
        self.unet = unet
        self.wrapper = unet_wrapper(unet, sdxl, embedded)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        *unet_inputs, deep = inputs
        replaced = []

        def passthrough(count: int):
            def forward(*args: Any, **kwargs: Any) -> Any:
                hidden = kwargs.get("hidden_states", args[0] if args else None)
                return (hidden, tuple(hidden for _ in range(count))) if count else hidden

            return forward

        unet = self.unet
        for block in list(unet.down_blocks)[1:]:
            count = len(block.resnets) + len(getattr(block, "downsamplers", None) or ())
            block.forward = passthrough(count)  # same number of skip tensors; only skipped blocks read them
            replaced.append(block)
        if unet.mid_block is not None:
            unet.mid_block.forward = passthrough(0)
            replaced.append(unet.mid_block)
        for block in list(unet.up_blocks)[:-1]:
            block.forward = lambda *_a, **_k: deep
            replaced.append(block)
        try:
            return self.wrapper(*unet_inputs)
        finally:
            for block in replaced:
                del block.forward


def export_unet_openvino(unet: torch.nn.Module, path: str | os.PathLike, precision: str = "fp32",
                         example_batch: int = 2, tokens: int = 77, shallow_path: str | os.PathLike | None = None,
                         calibration: Sequence[dict[str, torch.Tensor]] | None = None) -> OpenVinoExport:
    """The UNet (active LoRAs fused in) as an IR with dynamic batch, latent size and token count, returning
    ``noise_pred`` and ``deep_features``; with ``shallow_path`` also the shallow UNet for the feature cache
    (``exported.shallow``). The sinusoidal time embeddings are inputs (``timestep_embedding``...), computed in
    fp32 by the backend, so a bf16 engine never takes ``sin`` of a bf16 timestep. ``calibration`` (UNet input
    sets by ``UNetSpec.input_names``, export/calibration.py) is required for ``w8a8`` and unused otherwise; a set's
    ``deep_features``, if it has them, calibrate the shallow graph (else they are computed here)."""
    spec = UNetSpec.from_unet(unet)
    param = next(unet.parameters())
    feeds = example_inputs(spec, batch=example_batch, tokens=tokens, dtype=torch.float32, device=param.device)
    example = {n: feeds[n] for n in spec.input_names}
    embedded = embeds_on_host(spec)
    if embedded:
        example = HostTimeEmbeddings(spec)(example)
    host = HostTimeEmbeddings(spec) if embedded else dict
    calibration = list(calibration or ()) if precision == "w8a8" else []
    if precision == "w8a8" and not calibration:  # said before the conversion, not after it
        raise InvalidInputError(NO_CALIBRATION)
    sets = [host({n: s[n] for n in spec.input_names}) for s in calibration]
    with fused_active_loras(unet) as fused:
        module = unet if param.dtype == torch.float32 else _fp32_copy(unet)
        with export_rewrites(module, precision) as rewrites:  # both graphs traced with the same rewrites
            model = convert_module(DeepFeatureUNet(module, spec.is_sdxl, embedded), example, UNET_DYNAMIC,
                                   [OUTPUT, DEEP_FEATURES])
            exported = save_ir(model, path, precision, [_numpy(s) for s in sets])
            del model
            if shallow_path is not None:
                deep_unet = DeepFeatureUNet(module, spec.is_sdxl, embedded).eval()
                with torch.no_grad():
                    deep = deep_unet(*example.values())[1]
                    shallow_sets = [{**s, DEEP_FEATURES: c[DEEP_FEATURES] if DEEP_FEATURES in c else
                                     deep_unet(*s.values())[1]} for s, c in zip(sets, calibration, strict=True)]
                shallow = convert_module(ShallowUNet(module, spec.is_sdxl, embedded),
                                         {**example, DEEP_FEATURES: deep}, UNET_DYNAMIC, [OUTPUT])
                exported.shallow = save_ir(shallow, shallow_path, precision, [_numpy(s) for s in shallow_sets])
    exported.fused_adapters = fused
    exported.rewrites = rewrites
    return exported


def _numpy(feeds: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {name: tensor.detach().float().numpy() for name, tensor in feeds.items()}


def _fp32_copy(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module).float()
