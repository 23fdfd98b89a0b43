"""The JSON manifest beside every exported engine: what it is, what it was built from and for.

``unet_sd15_fp16-1a2b3c4d.engine`` has ``unet_sd15_fp16-1a2b3c4d.engine.json`` next to it. Loading an
engine reads its manifest for the UNet interface (so no torch weights are needed), the shape profile,
the LoRA stack baked in and, for refitting, the map from ONNX initializers to torch weight names.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, InvalidModelError, MissingModelError
from ..files import write_bytes_exclusive
from .denoiser import spec_from_dict
from .profile import ShapeProfile
from .spec import UNetSpec

SUFFIX = ".json"
SCHEMA = 1
FORMATS = ("onnx", "tensorrt", "openvino")
COMPONENTS = ("unet", "transformer", "unet_shallow", "text_encoder", "text_encoder_2", "vae_encoder", "vae_decoder")


@dataclass(frozen=True)
class EngineManifest:
    """Everything known about one engine file."""

    format: str  # "onnx" | "tensorrt" | "openvino"
    file: str  # the engine's file name (the manifest sits beside it)
    spec: UNetSpec  # the UNet (or FluxSpec: FLUX transformer) interface; for another component, its pipeline's
    precision: str  # "fp32" | "fp16" | "bf16" | "int8"
    key: str = ""  # the engine cache key (export/cache.py)
    profile: ShapeProfile | None = None
    base_model: str = ""
    base_fingerprint: str = ""
    loras: tuple[tuple[str, str, float], ...] = ()  # (name, fingerprint, strength) baked in
    optimized_for: str = ""  # "" (portable), "cpu" or "cuda": the graph was rewritten for that provider
    exporter: dict[str, Any] = field(default_factory=dict)
    tensorrt: dict[str, Any] = field(default_factory=dict)  # version, compute_capability, refittable, ...
    refit_map: dict[str, Any] = field(default_factory=dict, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    component: str = "unet"  # which part of the pipeline the file computes (COMPONENTS)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "format": self.format, "file": self.file, "precision": self.precision,
                "key": self.key, "unet": self.spec.to_dict(),
                "profile": self.profile.to_dict() if self.profile else None,
                "base_model": self.base_model, "base_fingerprint": self.base_fingerprint,
                "loras": [{"name": n, "fingerprint": f, "strength": s} for n, f, s in self.loras],
                "optimized_for": self.optimized_for, "exporter": self.exporter, "tensorrt": self.tensorrt,
                "extra": self.extra, "created": self.created or _now(), "component": self.component,
                "refit_map": self.refit_map}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineManifest:
        try:
            fmt = str(data["format"])
            if fmt not in FORMATS:
                raise InvalidModelError(f"unknown engine format {fmt!r} in the manifest; known: {FORMATS}")
            component = str(data.get("component", "unet"))
            if component not in COMPONENTS:
                raise InvalidModelError(f"unknown pipeline component {component!r} in the manifest; known: "
                                        f"{COMPONENTS}")
            profile = ShapeProfile.from_dict(data["profile"]) if data.get("profile") else None
            return cls(format=fmt, file=str(data["file"]), spec=spec_from_dict(data["unet"]),
                       precision=str(data["precision"]), key=str(data.get("key", "")), profile=profile,
                       base_model=str(data.get("base_model", "")),
                       base_fingerprint=str(data.get("base_fingerprint", "")),
                       loras=tuple((str(x["name"]), str(x["fingerprint"]), float(x["strength"]))
                                   for x in data.get("loras", [])),
                       optimized_for=str(data.get("optimized_for", "")), exporter=dict(data.get("exporter", {})),
                       tensorrt=dict(data.get("tensorrt", {})), refit_map=dict(data.get("refit_map", {})),
                       extra=dict(data.get("extra", {})), created=str(data.get("created", "")),
                       component=component)
        except (KeyError, TypeError, ValueError, InvalidInputError) as exc:
            raise InvalidModelError(f"the engine manifest is incomplete or malformed: {exc}") from exc

    def replace(self, **changes: Any) -> EngineManifest:
        return dataclasses.replace(self, **changes)


def manifest_path(engine_path: str | os.PathLike) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SUFFIX)


def read_manifest(engine_path: str | os.PathLike) -> EngineManifest:
    """The manifest beside ``engine_path``; a clear error if it is missing or unreadable."""
    path = manifest_path(engine_path)
    if not path.is_file():
        raise MissingModelError(
            f"{Path(engine_path).name} has no manifest ({path.name}) beside it, so its UNet interface and profile "
            "are unknown. Export engines with BackdropExportEngine (or export.engine_export.export_engine), which "
            "writes both files.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidModelError(f"{path.name} is not a readable JSON manifest: {exc}") from exc
    manifest = EngineManifest.from_dict(data)
    if manifest.file != Path(engine_path).name:
        raise InvalidModelError(f"{path.name} describes {manifest.file!r}, not {Path(engine_path).name!r}; "
                                "engine files must keep the names they were exported with")
    return manifest


def write_manifest(manifest: EngineManifest, engine_path: str | os.PathLike) -> Path:
    """Write the manifest beside ``engine_path`` atomically; an existing manifest is never overwritten."""
    path = manifest_path(engine_path)
    payload = json.dumps(manifest.to_dict(), indent=1, sort_keys=False).encode("utf-8")
    try:
        return write_bytes_exclusive(path, payload, rename=False)
    except FileExistsError:
        raise InvalidModelError(f"{path} already exists; it was left untouched") from None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
