"""Where models live: the folder kinds, and listing and resolving model names in them.

Model names only ever come from folder listings: ``resolve`` refuses anything that is not listed, so
a name can never smuggle in an arbitrary path. Inside ComfyUI the folders come from ``folder_paths``
(nodes/ installs a locator for that); outside, from ``--models-dir`` / ``BACKDROP_MODELS_DIR``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import MissingModelError

MODELS_DIR_ENV = "BACKDROP_MODELS_DIR"


@dataclass(frozen=True)
class FolderSpec:
    """What one model folder holds: file extensions (or whole folders) and an example name."""

    extensions: tuple[str, ...]
    example: str
    holds: str

    @property
    def holds_folders(self) -> bool:
        return not self.extensions


MODEL_FOLDERS: dict[str, FolderSpec] = {
    "sams": FolderSpec((".pth", ".pt", ".safetensors"), "sam_vit_b_01ec64.pth",
                       "segment-anything checkpoints"),
    "LLM": FolderSpec((), "Florence-2-base/", "vision-language models in transformers format, one folder each"),
    "checkpoints": FolderSpec((".safetensors", ".ckpt"), "sd-v1-5-inpainting.safetensors",
                              "single-file SD checkpoints"),
    "diffusers": FolderSpec((), "stable-diffusion-inpainting/", "diffusers pipeline folders (model_index.json)"),
    "loras": FolderSpec((".safetensors",), "product_backgrounds.safetensors", "LoRA weights"),
    "onnx": FolderSpec((".onnx",), "unet_sd15_inpaint.onnx", "exported ONNX UNets"),
    "tensorrt": FolderSpec((".engine", ".plan"), "unet_sd15_inpaint_fp16.engine", "TensorRT engines"),
    "openvino": FolderSpec((".xml",), "unet_sd15_inpaint_fp32.xml",
                           "OpenVINO IR engines (.xml with its .bin) for the CPU: UNet, text encoders, VAE"),
    "upscale_models": FolderSpec((".safetensors", ".pth", ".pt"), "RealESRGAN_x2plus.safetensors",
                                 "super-resolution models spandrel reads (ESRGAN, Real-ESRGAN, SwinIR ...)"),
    "diffusion_models": FolderSpec((".safetensors",), "flux1-fill-dev.safetensors",
                                   "diffusion transformers as single files: FLUX.1 Fill / Kontext (BFL or diffusers "
                                   "layout, bf16/fp16/fp8)"),
    "unet": FolderSpec((".safetensors",), "flux1-fill-dev.safetensors",
                       "the legacy name of models/diffusion_models (FLUX transformers as single files)"),
    "text_encoders": FolderSpec((".safetensors",), "t5xxl_fp16.safetensors",
                                "text encoders as single files: CLIP-L (clip_l.safetensors) and T5-XXL for FLUX"),
    "clip": FolderSpec((".safetensors",), "clip_l.safetensors",
                       "the legacy name of models/text_encoders (CLIP-L and T5-XXL single files)"),
    "vae": FolderSpec((".safetensors",), "ae.safetensors", "autoencoders as single files: FLUX's ae.safetensors"),
    "aesthetic": FolderSpec((".safetensors", ".pth", ".pt"), "sac+logos+ava1-l14-linearMSE.safetensors",
                            "aesthetic predictors: the LAION improved-aesthetic-predictor MLP on CLIP embeddings"),
    "clip_vision": FolderSpec((".safetensors",), "clip-vit-large-patch14.safetensors",
                              "CLIP vision encoders (transformers layout: vision_model.*, visual_projection)"),
}


def default_models_dir() -> Path:
    """``$BACKDROP_MODELS_DIR`` if set, else ``./models``."""
    return Path(os.environ.get(MODELS_DIR_ENV) or "models").expanduser()


class ModelLocator:
    """Lists and resolves model names per folder kind (``sams``, ``LLM``, ``checkpoints``...)."""

    def __init__(self, folders_for: Callable[[str], list[Path]], description: str = "") -> None:
        self._folders_for = folders_for
        self.description = description

    @classmethod
    def from_models_dir(cls, models_dir: str | os.PathLike | None = None) -> ModelLocator:
        root = Path(models_dir).expanduser() if models_dir else default_models_dir()
        return cls(lambda kind: [root / kind], description=f"models dir {root}")

    def folders(self, kind: str) -> list[Path]:
        _spec(kind)
        return [Path(p) for p in self._folders_for(kind)]

    def list(self, kind: str) -> list[str]:
        """Names available in ``kind``'s folders, relative to their folder, sorted and de-duplicated."""
        spec = _spec(kind)
        names: set[str] = set()
        for folder in self.folders(kind):
            if not folder.is_dir():
                continue
            if spec.holds_folders:
                names.update(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
                continue
            for path in _model_files(folder):
                if path.suffix.lower() in spec.extensions:
                    names.add(path.relative_to(folder).as_posix())
        return sorted(names)

    def resolve(self, kind: str, name: str) -> Path:
        """The path of ``name`` in ``kind``'s folders; it must be one of ``list(kind)``."""
        available = self.list(kind)
        if name not in available:
            raise MissingModelError(missing_model_message(kind, name, self.folders(kind), available))
        for folder in self.folders(kind):
            candidate = folder / name
            if candidate.exists():
                return candidate
        raise MissingModelError(missing_model_message(kind, name, self.folders(kind), available))


MAX_FOLDER_DEPTH = 32


def _model_files(folder: Path, ancestors: frozenset[tuple[int, int]] = frozenset(), depth: int = 0
                 ) -> Iterator[Path]:
    """Files under ``folder``, hidden entries left out, following symbolic links to files *and* folders
    (as ComfyUI's ``os.walk(followlinks=True)`` does). A link back to a folder on the current path (a
    loop) is not entered again, and the walk stops MAX_FOLDER_DEPTH folders down."""
    try:
        info = folder.stat()
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:  # unreadable, or a link to nothing
        return
    key = (info.st_dev, info.st_ino)
    if key in ancestors or depth > MAX_FOLDER_DEPTH:
        return
    ancestors = ancestors | {key}
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            is_dir, is_file = entry.is_dir(), entry.is_file()  # both follow symbolic links
        except OSError:
            continue
        if is_dir:
            yield from _model_files(Path(entry.path), ancestors, depth + 1)
        elif is_file:
            yield Path(entry.path)


def missing_model_message(kind: str, name: str, folders: list[Path], available: list[str]) -> str:
    spec = _spec(kind)
    kinds = "a folder per model" if spec.holds_folders else ", ".join(spec.extensions)
    where = ", ".join(str(f) for f in folders) or f"models/{kind}"
    found = ", ".join(available[:8]) if available else "nothing"
    return (
        f"Model {name!r} was not found in models/{kind} ({where}). That folder holds {spec.holds} "
        f"({kinds}), for example models/{kind}/{spec.example}. Found there: {found}. "
        "Nothing is downloaded: put the file there yourself."
    )


def _spec(kind: str) -> FolderSpec:
    try:
        return MODEL_FOLDERS[kind]
    except KeyError:
        raise ValueError(f"unknown model folder kind {kind!r}; known: {', '.join(MODEL_FOLDERS)}") from None


_locator_lock = threading.Lock()
_locator: ModelLocator | None = None


def get_locator() -> ModelLocator:
    """The locator in use: ComfyUI's folders inside ComfyUI, else ``default_models_dir()``."""
    global _locator
    with _locator_lock:
        if _locator is None:
            _locator = ModelLocator.from_models_dir()
        return _locator


def set_locator(locator: ModelLocator | None) -> None:
    """Install a locator (``None`` goes back to the default)."""
    global _locator
    with _locator_lock:
        _locator = locator


@contextmanager
def models_dir_locator(models_dir: str | os.PathLike | None) -> Iterator[None]:
    """For a CLI command: every loader reads ``models_dir`` (when given) until the block ends."""
    previous = get_locator()
    if models_dir:
        set_locator(ModelLocator.from_models_dir(Path(models_dir)))
    try:
        yield
    finally:
        set_locator(previous)
