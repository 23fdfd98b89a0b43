"""Engine cache keys and the engine cache folder.

An engine is only valid for the exact combination it was built from, so the key hashes all of it:
the base model's weights fingerprint, the LoRA stack (names, content fingerprints, strengths, in
order), the UNet interface, the shape profile, the precision, the format, and for TensorRT the
TensorRT version and the GPU's compute capability (engines do not move between either). The same
inputs always give the same key; changing any one changes it. ``EngineCache`` finds an engine by key
through the manifests beside the engines, so a rebuild is skipped when a matching engine exists.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runtime.engines.manifest import SUFFIX, EngineManifest, read_manifest
from ..runtime.engines.profile import ShapeProfile
from ..runtime.engines.spec import UNetSpec
from ..runtime.errors import BackdropError

KEY_VERSION = 1
KEY_LENGTH = 16


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on."""

    base_fingerprint: str
    loras: tuple[tuple[str, str, float], ...]  # (name, fingerprint, strength), in stack order
    spec: UNetSpec
    profile: ShapeProfile | None
    precision: str
    format: str  # "onnx" | "tensorrt" | "openvino"
    optimized_for: str = ""  # onnx: "", "cpu", "cuda"
    tensorrt_version: str = ""
    compute_capability: str = ""  # "9.0" for an H100
    builder: tuple[tuple[str, Any], ...] = ()  # other build settings that change the engine (opt level, refit)
    component: str = "unet"  # text_encoder, vae_decoder...: other parts of the same pipeline

    def payload(self) -> dict[str, Any]:
        extra = {} if self.component == "unet" else {"component": self.component}  # UNet keys stay as they were
        return {**extra, "v": KEY_VERSION, "base": self.base_fingerprint,
                "loras": [[n, f, round(float(s), 6)] for n, f, s in self.loras],
                "unet": {k: v for k, v in self.spec.to_dict().items() if k != "config"},
                "unet_config": self.spec.config,
                "profile": self.profile.to_dict() if self.profile else None, "precision": self.precision,
                "format": self.format, "optimized_for": self.optimized_for, "trt": self.tensorrt_version,
                "sm": self.compute_capability, "builder": [[k, v] for k, v in self.builder]}

    def digest(self) -> str:
        """A stable hex key (sha256 of the canonical JSON payload, shortened)."""
        canonical = json.dumps(self.payload(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:KEY_LENGTH]


def engine_file_name(spec: UNetSpec, precision: str, key: str, suffix: str, component: str = "unet") -> str:
    """``unet_sd15_inpaint_fp16_<key>.engine`` (``vae_decoder_sd15_...`` for other parts): readable in a model
    list, unique by key."""
    kind = "inpaint" if spec.in_channels == 9 else f"{spec.in_channels}ch"
    return f"{component}_{spec.family}_{kind}_{precision}_{key}{suffix}"


def component_key(unet_manifest: EngineManifest, component: str) -> str:
    """The cache key of a pipeline part exported beside the UNet engine of ``unet_manifest``: the same base
    weights, LoRA stack, precision and format; no shape profile (the parts take any size)."""
    return EngineKey(base_fingerprint=unet_manifest.base_fingerprint, loras=tuple(unet_manifest.loras),
                     spec=unet_manifest.spec, profile=None, precision=unet_manifest.precision,
                     format=unet_manifest.format, component=component).digest()


class EngineCache:
    """Engines in a folder (models/onnx, models/tensorrt or models/openvino), found by the key in their manifests."""

    def __init__(self, folders: Sequence[str | os.PathLike]) -> None:
        self.folders = [Path(f) for f in folders]

    def find(self, key: str) -> tuple[Path, EngineManifest] | None:
        """The engine whose manifest carries ``key`` and whose files are all present, if any."""
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for manifest_file in sorted(folder.rglob(f"*{SUFFIX}")):
                engine = manifest_file.with_name(manifest_file.name[: -len(SUFFIX)])
                if not engine.is_file():
                    continue
                try:
                    manifest = read_manifest(engine)
                except BackdropError:
                    continue  # a stray or broken manifest is not a cache hit
                if manifest.key == key:
                    return engine, manifest
        return None
