"""The rest of the pipeline on engines: text encoder(s), VAE encoder and VAE decoder as OpenVINO IR.

At 512 px one VAE decode costs more than a UNet step, so exporting only the UNet leaves most of a
short schedule in eager torch. Each part is traced through a small wrapper that fixes its inputs and
outputs (runtime/engines/components.py names them):

- text encoder: ``input_ids [B, T]`` (int64) -> ``output_0`` (``out[0]``: last hidden state, or the
  projected pooled embedding for ``CLIPTextModelWithProjection``) and ``penultimate_hidden_state``;
- VAE encoder: ``image [B, 3, H, W]`` -> ``moments [B, 2*C, H/8, W/8]`` (mean and log-variance, after
  ``quant_conv``); the pipeline samples from them with its own generator, as before;
- VAE decoder: ``latents [B, C, h, w]`` -> ``image [B, 3, 8h, 8w]`` (``post_quant_conv`` included).

Each part is an engine with its own manifest and cache key (the key adds the component name to the
UNet's: same base weights, LoRA stack, precision and format; a ``w8a8`` UNet's parts are exported in its float
layers' precision, bf16 or fp32), so ``attach_pipeline_engines`` finds
the parts of a UNet engine from that engine's manifest alone. Batch, size and token count are dynamic.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..runtime.engines.components import (
    TEXT_INPUT,
    TEXT_OUTPUTS,
    VAE_DECODER_INPUT,
    VAE_DECODER_OUTPUT,
    VAE_ENCODER_INPUT,
    VAE_ENCODER_OUTPUT,
)
from ..runtime.engines.manifest import EngineManifest, write_manifest
from ..runtime.engines.precision import float_part
from ..runtime.engines.spec import UNetSpec
from ..runtime.progress import ProgressFn, report
from .cache import EngineCache, component_key, engine_file_name
from .graph_rewrites import export_rewrites
from .memory_need import check_export_fits, fp32_copy_bytes, fp32_weight_bytes
from .openvino_export import CONVERTER, convert_module, openvino_exporter, save_ir

PIPELINE_COMPONENTS = ("text_encoder", "text_encoder_2", "vae_encoder", "vae_decoder")


class TextEncoderWrapper(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder(input_ids, output_hidden_states=True)
        return out[0], out.hidden_states[-2]


class VaeEncoderWrapper(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(image).latent_dist.parameters


class VaeDecoderWrapper(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents, return_dict=False)[0]


def component_modules(pipe: Any) -> dict[str, torch.nn.Module]:
    """The torch modules of a pipeline's exportable parts (``text_encoder_2`` only for SDXL)."""
    parts = {"text_encoder": getattr(pipe, "text_encoder", None),
             "text_encoder_2": getattr(pipe, "text_encoder_2", None), "vae_encoder": pipe.vae, "vae_decoder": pipe.vae}
    return {name: module for name, module in parts.items() if isinstance(module, torch.nn.Module)}


def convert_component(name: str, module: torch.nn.Module, tokens: int = 77, precision: str = "fp32") -> Any:
    """The ``ov.Model`` of one part for a ``precision`` engine (an fp32 copy is traced if the module is in another
    dtype; the VAE goes through ``export_rewrites`` for that precision)."""
    param = next(module.parameters())
    if param.dtype != torch.float32:
        import copy

        module = copy.deepcopy(module).float()
    if name.startswith("text_encoder"):
        example = {TEXT_INPUT: torch.zeros(1, tokens, dtype=torch.int64)}
        return convert_module(TextEncoderWrapper(module), example, {TEXT_INPUT: (0, 1)}, TEXT_OUTPUTS)
    channels = int(module.config.latent_channels)
    if name == "vae_encoder":
        example = {VAE_ENCODER_INPUT: torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))}
        return convert_module(VaeEncoderWrapper(module), example, {VAE_ENCODER_INPUT: (0, 2, 3)},
                              [VAE_ENCODER_OUTPUT])
    example = {VAE_DECODER_INPUT: torch.randn(1, channels, 8, 8, generator=torch.Generator().manual_seed(0))}
    with export_rewrites(module, precision):
        return convert_module(VaeDecoderWrapper(module), example, {VAE_DECODER_INPUT: (0, 2, 3)},
                              [VAE_DECODER_OUTPUT])


def export_component(name: str, module: torch.nn.Module, path: str | os.PathLike, precision: str) -> Any:
    """One part as IR at ``path`` (weights shared with ``module`` while converting; saved at once)."""
    return save_ir(convert_component(name, module, precision=precision), path, precision)


def export_components(pipe: Any, spec: UNetSpec, unet_manifest: EngineManifest, folder: str | os.PathLike,
                      search: Sequence[str | os.PathLike] = (), names: Sequence[str] | None = None,
                      memory_limit: float | None = None, progress: ProgressFn | None = None
                      ) -> dict[str, tuple[Path, EngineManifest, bool]]:
    """Export (or find in the cache) every part of ``pipe`` beside its UNet engine: {name: (path, manifest,
    cached)}. The LoRA stack must already be active on ``pipe`` (text-encoder LoRAs are baked in). Each export is
    checked against ``memory_limit`` first, as in ``export_engine``; ``progress(done, total)`` counts the parts."""
    from .onnx_export import fused_active_loras

    folder = Path(folder)
    results = {}
    wanted = {n: m for n, m in component_modules(pipe).items() if names is None or n in names}
    for name, module in wanted.items():
        report(progress, len(results), len(wanted))
        key = component_key(unet_manifest, name)
        hit = EngineCache([folder, *search]).find(key)
        if hit is not None:
            results[name] = (hit[0], hit[1], True)
            continue
        target = folder / engine_file_name(spec, unet_manifest.precision, key, ".xml", component=name)
        precision = float_part(unet_manifest.precision)  # a w8a8 UNet's parts: its float layers' precision
        check_export_fits(f"the {name.replace('_', ' ')}", "openvino", precision, fp32_weight_bytes(module),
                          memory_limit, copy_bytes=fp32_copy_bytes(module))
        with fused_active_loras(module) as fused:
            exported = export_component(name, module, target, precision)
        manifest = unet_manifest.replace(file=exported.path.name, key=key, component=name, profile=None,
                                         precision=precision,
                                         exporter=openvino_exporter(CONVERTER), refit_map={},
                                         extra={"weight_compression": exported.weight_compression,
                                                "inputs": exported.inputs, "outputs": exported.outputs,
                                                "fused_adapters": fused}, created="")
        write_manifest(manifest, exported.path)
        results[name] = (exported.path, manifest, False)
    report(progress, len(results), len(wanted))
    return results
