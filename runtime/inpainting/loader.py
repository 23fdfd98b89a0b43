"""Load inpainting pipelines offline from models/diffusers folders or models/checkpoints files.

``load_pipeline`` returns a ``LoadedPipeline``: an immutable handle on a cached diffusers pipeline
plus the LoRA stack to apply when it runs. Families: ``sd15`` and ``sdxl`` (UNet inpainting pipelines,
from folders or single files), ``flux-fill`` (diffusers' ``FluxFillPipeline``) and ``flux-kontext``
(``FluxKontextInpaintPipeline``) and ``qwen-image-edit`` (``QwenImageEditInpaintPipeline``), each from a
diffusers folder whose model_index.json names it.
Several handles (different LoRA stacks) share one base pipeline; ``loras.activate`` configures it
under a lock right before each run, so LoRAs switch without reloading the base model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..devices import resolve_device
from ..errors import InvalidInputError, InvalidModelError, MissingModelError
from ..models import MODEL_CACHE, file_fingerprint, get_locator
from .memory import DEFAULT_MEMORY, MemoryOptions, place_pipeline

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DTYPES = ("auto", "fp32", "fp16", "bf16")
SOURCES = ("checkpoints", "diffusers")
FLUX_FILE_KINDS = ("diffusion_models", "unet")  # FLUX transformers as single files (ComfyUI's layout)
UNET_FAMILIES = ("sd15", "sdxl")
FLUX_FILL = "flux-fill"
FLUX_KONTEXT = "flux-kontext"
FLUX_FAMILIES = (FLUX_FILL, FLUX_KONTEXT)
QWEN_EDIT = "qwen-image-edit"
TRANSFORMER_FAMILIES = (*FLUX_FAMILIES, QWEN_EDIT)  # denoised by a diffusers transformer, not a UNet
# model_index.json ``_class_name`` -> family, for the pipeline classes a diffusers folder may name
FOLDER_FAMILIES = {"StableDiffusionInpaintPipeline": "sd15", "StableDiffusionPipeline": "sd15",
                   "StableDiffusionXLInpaintPipeline": "sdxl", "StableDiffusionXLPipeline": "sdxl",
                   "FluxFillPipeline": FLUX_FILL, "FluxKontextPipeline": FLUX_KONTEXT,
                   "FluxKontextInpaintPipeline": FLUX_KONTEXT, "QwenImageEditPipeline": QWEN_EDIT,
                   "QwenImageEditInpaintPipeline": QWEN_EDIT, "QwenImageEditPlusPipeline": QWEN_EDIT}
# family -> the guidance scale its models are made for (FLUX's is distilled guidance, not CFG;
# Qwen-Image-Edit's is true CFG, ``true_cfg_scale`` 4.0 in its model card)
FAMILY_CFG = {"sd15": 7.0, "sdxl": 7.0, FLUX_FILL: 30.0, FLUX_KONTEXT: 2.5, QWEN_EDIT: 4.0}
# family -> the diffusers class a folder of that family is loaded as
PIPELINE_CLASSES = {"sd15": "StableDiffusionInpaintPipeline", "sdxl": "StableDiffusionXLInpaintPipeline",
                    FLUX_FILL: "FluxFillPipeline", FLUX_KONTEXT: "FluxKontextInpaintPipeline",
                    QWEN_EDIT: "QwenImageEditInpaintPipeline"}


class LoraSpec(NamedTuple):
    """One LoRA in a stack: its model name, a content fingerprint and its strength."""

    name: str
    fingerprint: str
    strength: float


@dataclass
class BaseState:
    """Mutable state of one cached base pipeline, shared by every handle on it."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    adapters: dict[str, str] = field(default_factory=dict)  # LoRA fingerprint -> adapter name
    fused: tuple[LoraSpec, ...] = ()
    scheduler_config: dict | None = None  # the model's own scheduler config, before any switch


@dataclass(frozen=True)
class LoadedPipeline:
    """A cached diffusers inpainting pipeline plus the LoRA stack this handle runs with."""

    pipe: Any
    family: str  # "sd15" | "sdxl" | "flux-fill" | "flux-kontext" | "qwen-image-edit"
    name: str
    fingerprint: str
    device: Any
    dtype: Any
    loras: tuple[LoraSpec, ...] = ()
    fuse_loras: bool = False
    state: BaseState = field(default_factory=BaseState, repr=False, compare=False)

    @property
    def is_flux(self) -> bool:
        return self.family in FLUX_FAMILIES

    @property
    def is_transformer(self) -> bool:
        """Denoised by a diffusers transformer (FLUX, Qwen-Image-Edit), not an SD UNet."""
        return self.family in TRANSFORMER_FAMILIES

    @property
    def denoiser(self) -> Any:
        """The network that denoises: the UNet (SD families) or the transformer (FLUX, Qwen-Image-Edit)."""
        return self.pipe.transformer if self.is_transformer else self.pipe.unet

    @property
    def unet_in_channels(self) -> int:
        return int(self.denoiser.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        return int(self.pipe.vae_scale_factor)

    def with_loras(self, loras: tuple[LoraSpec, ...], fuse: bool = False) -> LoadedPipeline:
        """The same base pipeline with another LoRA stack (nothing is loaded until it runs)."""
        return dataclasses.replace(self, loras=tuple(loras), fuse_loras=fuse)

    def with_unet(self, unet: Any) -> LoadedPipeline:
        """A shallow copy whose diffusers pipeline uses another UNet module (an engine backend)."""
        require_unet(self, "an engine UNet")
        pipe = type(self.pipe)(**{**self.pipe.components, "unet": unet})
        pipe.set_progress_bar_config(disable=True)
        return dataclasses.replace(self, pipe=pipe, state=BaseState())

    def describe(self) -> str:
        stack = ", ".join(f"{s.name}@{s.strength:g}" for s in self.loras) or "no LoRA"
        kind = "transformer" if self.is_transformer else "UNet"
        return f"{self.name} ({self.family}, {self.unet_in_channels}-channel {kind}, {stack})"


def require_unet(handle: LoadedPipeline, what: str) -> None:
    """Raise ``InvalidInputError`` unless ``handle`` is an SD1.5/SDXL UNet pipeline (``what`` needs one)."""
    if handle.family == QWEN_EDIT:
        raise InvalidInputError(
            f"{what} needs an SD1.5 or SDXL UNet pipeline, but {handle.name} is {handle.family} (a Qwen-Image "
            "transformer); for Qwen-Image-Edit, inpainting and LoRAs work, LoRA training and engine export do not "
            "(docs/flux.md, Qwen-Image-Edit).")
    if handle.family not in UNET_FAMILIES:
        raise InvalidInputError(
            f"{what} needs an SD1.5 or SDXL UNet pipeline, but {handle.name} is {handle.family} (a FLUX transformer); "
            f"for FLUX.1 Fill and Kontext, inpainting, LoRAs, LoRA training and ONNX/OpenVINO engines work; {what} "
            "is not available yet (docs/flux.md).")


def resolve_dtype(dtype: str, device: str):
    """``auto`` -> fp16 on CUDA, fp32 on CPU. fp16 on the CPU is refused (it is unsupported there)."""
    import torch

    if dtype not in DTYPES:
        raise InvalidInputError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return torch.float16 if device == "cuda" else torch.float32
    if dtype == "fp16" and device == "cpu":
        raise InvalidInputError("fp16 needs a GPU; on the CPU use fp32 (or bf16)")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def available_models() -> list[str]:
    """Every loadable name: ``checkpoints/<file>``, ``diffusers/<folder>``, ``diffusion_models/<file>`` and
    ``unet/<file>`` (a legacy ``unet`` name only when ``diffusion_models`` does not list it: ComfyUI maps one
    folder into the other)."""
    locator = get_locator()
    names = [f"{kind}/{name}" for kind in (*SOURCES, "diffusion_models") for name in locator.list(kind)]
    return names + [f"unet/{n}" for n in locator.list("unet") if f"diffusion_models/{n}" not in names]


def split_model_name(model: str) -> tuple[str, str]:
    """``checkpoints/x.safetensors`` -> (kind, name); a bare name is looked up in both folders."""
    kind, _, rest = model.partition("/")
    if kind in (*SOURCES, *FLUX_FILE_KINDS) and rest:
        return kind, rest
    locator = get_locator()
    for candidate in (*SOURCES, *FLUX_FILE_KINDS):
        if model in locator.list(candidate):
            return candidate, model
    return "checkpoints", model  # resolve() then raises the missing-model error naming the folder


def default_cfg(model: str) -> float:
    """The guidance scale ``model``'s family is made for, read from its model_index.json (no weights are
    loaded): 30 for FLUX.1 Fill, 2.5 for Kontext, 4 for Qwen-Image-Edit (true CFG), 7 for SD1.5/SDXL and for
    anything not found here."""
    try:
        kind, name = split_model_name(model)
        if kind == "diffusers":
            path = get_locator().resolve(kind, name)
            return FAMILY_CFG.get(folder_family(_index_class(path), name), FAMILY_CFG["sd15"])
        path = get_locator().resolve(kind, name)
        if kind in FLUX_FILE_KINDS or (kind == "checkpoints" and _is_flux_file(path)):
            from .flux_files import transformer_family

            return FAMILY_CFG[transformer_family(kind, name, path)]
    except (MissingModelError, InvalidModelError):
        pass  # load_pipeline reports it, with the folder it looked in
    return FAMILY_CFG["sd15"]


def load_pipeline(model: str, device: str = "auto", dtype: str = "auto",
                  tokenizer_dir: str | None = None, *, text_encoders: Sequence[str] = (), vae: str | None = None,
                  t5_tokenizer_dir: str | None = None, memory: MemoryOptions = DEFAULT_MEMORY) -> LoadedPipeline:
    """Load (or fetch from cache) the pipeline named ``model`` from models/checkpoints, models/diffusers or, for a
    FLUX transformer file, models/diffusion_models (legacy models/unet). A FLUX single file (those, or an
    all-in-one FLUX checkpoint) takes its CLIP-L / T5-XXL from ``text_encoders`` (names in models/text_encoders)
    and its autoencoder from ``vae`` (models/vae), else the one fitting file there (``flux_files``).
    ``memory`` chooses offload and an int8 large text encoder (``memory.MemoryOptions``)."""
    kind, name = split_model_name(model)
    path = get_locator().resolve(kind, name)
    memory.check(device=resolve_device(device))
    if kind in FLUX_FILE_KINDS or (kind == "checkpoints" and _is_flux_file(path)):
        return _load_flux_files(kind, name, path, device, dtype, tokenizer_dir, tuple(text_encoders), vae,
                                t5_tokenizer_dir, memory)
    if text_encoders or vae:
        raise InvalidInputError(f"text encoders and a VAE are chosen separately only for FLUX single files "
                                f"(models/diffusion_models); {kind}/{name} brings its own")
    device_name = resolve_device(device)
    if dtype == "auto" and device_name == "cuda" and kind == "diffusers" \
            and _index_class(path).startswith(("Flux", "QwenImage")):
        dtype = "bf16"  # FLUX's and Qwen-Image's activations overflow fp16; they are released in bf16
    torch_dtype = resolve_dtype(dtype, device_name)
    key = ("inpaint", kind, file_fingerprint(path), device_name, str(torch_dtype), *memory.key)
    return MODEL_CACHE.get_or_load(key, lambda: _load(kind, name, path, device_name, torch_dtype, tokenizer_dir,
                                                      memory))


def _load(kind: str, name: str, path: Path, device: str, torch_dtype, tokenizer_dir: str | None,
          memory: MemoryOptions) -> LoadedPipeline:
    if kind == "checkpoints":
        from .single_file import load_single_file_pipeline

        pipe, layout = load_single_file_pipeline(path, torch_dtype, tokenizer_dir)
        family = layout.family
    else:
        pipe, family = _load_diffusers_folder(path, torch_dtype)
    place_pipeline(pipe, family, device, memory)
    pipe.set_progress_bar_config(disable=True)
    import torch

    return LoadedPipeline(pipe=pipe, family=family, name=f"{kind}/{name}", fingerprint=content_fingerprint(path),
                          device=torch.device(device), dtype=torch_dtype)


def _index_class(path: Path) -> str:
    """The ``_class_name`` of a diffusers folder's model_index.json ("" when unreadable)."""
    try:
        return str(json.loads((path / "model_index.json").read_text()).get("_class_name", ""))
    except (OSError, ValueError):
        return ""


def _load_diffusers_folder(path: Path, torch_dtype) -> tuple[Any, str]:
    index = path / "model_index.json"
    if not index.is_file():
        raise MissingModelError(f"{path} is not a diffusers pipeline folder: it has no model_index.json")
    try:
        class_name = json.loads(index.read_text()).get("_class_name", "")
    except json.JSONDecodeError as exc:
        raise InvalidModelError(f"{index} is not valid JSON: {exc}") from exc
    family = folder_family(class_name, path.name)
    import diffusers

    pipeline_class = getattr(diffusers, PIPELINE_CLASSES[family])
    extra: dict[str, Any] = {}
    if family == "sd15":
        extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    try:
        pipe = pipeline_class.from_pretrained(str(path), dtype=torch_dtype, local_files_only=True, **extra)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise InvalidModelError(f"{path.name} could not be loaded as a diffusers inpainting pipeline: {exc}") from exc
    return pipe, family


def folder_family(class_name: str, name: str = "the folder") -> str:
    """The family of a diffusers folder from its model_index.json ``_class_name``; other FLUX and Qwen-Image
    pipelines are refused."""
    if class_name in FOLDER_FAMILIES:
        return FOLDER_FAMILIES[class_name]
    if class_name.startswith("Flux"):
        raise InvalidModelError(
            f"{name} is a {class_name} folder; of the FLUX.1 family FLUX.1 Fill (FluxFillPipeline, e.g. "
            "black-forest-labs/FLUX.1-Fill-dev) and FLUX.1 Kontext (FluxKontextPipeline, e.g. "
            "black-forest-labs/FLUX.1-Kontext-dev) inpaint here with the product kept exact.")
    if class_name.startswith("QwenImage"):
        raise InvalidModelError(
            f"{name} is a {class_name} folder; of the Qwen-Image family Qwen-Image-Edit (QwenImageEditPipeline, e.g. "
            "Qwen/Qwen-Image-Edit, or QwenImageEditPlusPipeline, e.g. Qwen/Qwen-Image-Edit-2509) inpaints here "
            "with the product kept exact.")
    return "sdxl" if "XL" in class_name else "sd15"


def content_fingerprint(path: Path) -> str:
    """A stable content digest of a weights file or folder: sizes plus the first and last MiB of each file."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        size = file.stat().st_size
        label = file.relative_to(path).as_posix() if path.is_dir() else ""
        digest.update(f"{label}:{size}".encode())
        with open(file, "rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(-(1 << 20), os.SEEK_END)
                digest.update(handle.read())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------- FLUX single files (ComfyUI layout)

def _is_flux_file(path: Path) -> bool:
    """An all-in-one FLUX checkpoint in models/checkpoints (its transformer under ``model.diffusion_model.``)."""
    if path.suffix.lower() != ".safetensors":
        return False
    from .flux_probe import is_flux_checkpoint, safetensors_shapes

    try:
        return is_flux_checkpoint(safetensors_shapes(path))
    except InvalidModelError:
        return False  # the SD single-file loader reports the unreadable file


def _load_flux_files(kind: str, name: str, path: Path, device: str, dtype: str, tokenizer_dir: str | None,
                     text_encoders: tuple[str, ...], vae: str | None, t5_tokenizer_dir: str | None,
                     memory: MemoryOptions) -> LoadedPipeline:
    """Choose the parts (headers only), then load them once per distinct set of files, device and dtype."""
    from .flux_files import flux_files

    files = flux_files(kind, name, path, text_encoders, vae)
    device_name = resolve_device(device)
    if dtype == "auto" and device_name == "cuda":
        dtype = "bf16"  # FLUX's activations overflow fp16; it is trained and released in bf16
    torch_dtype = resolve_dtype(dtype, device_name)
    key = ("inpaint-flux-files", *(file_fingerprint(p) for p in files.paths),
           *(part.prefix for part in (files.transformer, files.clip_l, files.t5, files.vae)),
           device_name, str(torch_dtype), *memory.key)

    def load() -> LoadedPipeline:
        import torch

        from .flux_single_file import load_flux_single_file_pipeline

        pipe = load_flux_single_file_pipeline(files, torch_dtype, tokenizer_dir, t5_tokenizer_dir)
        place_pipeline(pipe, files.family, device_name, memory)
        pipe.set_progress_bar_config(disable=True)
        digest = hashlib.sha256("|".join(content_fingerprint(p) for p in files.paths).encode()).hexdigest()[:16]
        return LoadedPipeline(pipe=pipe, family=files.family, name=f"{kind}/{name}", fingerprint=digest,
                              device=torch.device(device_name), dtype=torch_dtype)

    return MODEL_CACHE.get_or_load(key, load)
