"""ComfyUI's model folders, tokenizer and settings, as the nodes need them (progress, Cancel and the input/output
folders come from the node's host: ``comfy_host``).

Without ComfyUI (tests, the CLI importing the package) model folders come from ``--models-dir`` /
``BACKDROP_MODELS_DIR`` / ``./models``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..runtime.models import MODEL_FOLDERS, ModelLocator, get_locator, set_locator

try:  # ComfyUI puts these top-level modules on sys.path; outside it they do not exist.
    import folder_paths  # type: ignore[import-not-found]
except ImportError:
    folder_paths = None

IN_COMFYUI = folder_paths is not None


def register_model_folders() -> None:
    """Register every kind of MODEL_FOLDERS (sams, LLM, checkpoints, diffusers, loras, onnx, tensorrt, ...) with
    ComfyUI's folder_paths, and make the runtime resolve model names through them. ComfyUI already knows
    diffusion_models, text_encoders and vae, and maps the legacy unet and clip names onto the first two, so
    those resolve to ComfyUI's own folders (extra_model_paths.yaml included)."""
    if folder_paths is None:
        return
    for kind in MODEL_FOLDERS:
        folder_paths.add_model_folder_path(kind, os.path.join(folder_paths.models_dir, kind))
    set_locator(ModelLocator(lambda kind: [Path(p) for p in folder_paths.get_folder_paths(kind)],
                             description="ComfyUI folder_paths"))


def locator() -> ModelLocator:
    return get_locator()


def model_choices(kind: str) -> list[str]:
    """Names for a model combo widget: only what is really in the folders."""
    try:
        return locator().list(kind)
    except OSError:
        return []


def check_model_name(kind: str, name: str) -> bool | str:
    """For a node's ``VALIDATE_INPUTS``: True if ``name`` is in ``kind``'s folders, else the message that names
    the folder, the file kinds and an example (ComfyUI shows it when a shared workflow names a missing model)."""
    from ..runtime.models import missing_model_message

    try:
        available = locator().list(kind)
        if name in available:
            return True
        return missing_model_message(kind, name, locator().folders(kind), available)
    except (OSError, ValueError) as exc:
        return str(exc)


def check_prefixed_model_name(value: str, kinds: tuple[str, ...]) -> bool | str:
    """``<kind>/<name>`` names (e.g. ``checkpoints/x.safetensors``): the kind must be one of ``kinds``."""
    kind, _, name = value.partition("/")
    if kind not in kinds or not name:
        return f"{value!r} must be {' or '.join(f'{k}/<name>' for k in kinds)}"
    return check_model_name(kind, name)


def clip_tokenizer_dir() -> Path | None:
    """ComfyUI's own SD1 CLIP tokenizer folder (comfy/sd1_tokenizer), or None outside ComfyUI."""
    try:
        import comfy.sd1_clip as sd1_clip  # type: ignore[import-not-found]
    except ImportError:
        return None
    folder = Path(sd1_clip.__file__).resolve().parent / "sd1_tokenizer"
    return folder if (folder / "vocab.json").is_file() else None


def register_clip_tokenizer() -> None:
    """Let single-file checkpoints use ComfyUI's bundled CLIP tokenizer files (and, for FLUX single files, its
    T5 tokenizer)."""
    from ..runtime.inpainting.tokenizers import register_t5_tokenizer_dir, register_tokenizer_dir

    folder = clip_tokenizer_dir()
    if folder is not None:
        register_tokenizer_dir(folder)
    t5_folder = t5_tokenizer_dir()
    if t5_folder is not None:
        register_t5_tokenizer_dir(t5_folder)


def t5_tokenizer_dir() -> Path | None:
    """ComfyUI's own T5 tokenizer folder (comfy/text_encoders/t5_tokenizer: tokenizer.json and
    tokenizer_config.json, what transformers' T5 tokenizer reads), or None outside ComfyUI."""
    try:
        import comfy.sd1_clip as sd1_clip  # type: ignore[import-not-found]
    except ImportError:
        return None
    folder = Path(sd1_clip.__file__).resolve().parent / "text_encoders" / "t5_tokenizer"
    return folder if (folder / "tokenizer.json").is_file() else None


register_model_folders()


def metadata_disabled() -> bool:
    """True when ComfyUI runs with --disable-metadata (then no workflow goes into saved files)."""
    try:
        from comfy.cli_args import args  # type: ignore[import-not-found]
    except ImportError:
        return False
    return bool(getattr(args, "disable_metadata", False))


def model_file_path(kind: str, name: str) -> Path | None:
    """Full path of a model file named in a workflow (checkpoints, loras, vae...), or None if unknown."""
    if folder_paths is not None:
        try:
            path = folder_paths.get_full_path(kind, name)
        except Exception:  # unknown folder kinds raise in some ComfyUI versions
            return None
        return Path(path) if path else None
    if kind not in MODEL_FOLDERS:
        return None
    try:
        return locator().resolve(kind, name)
    except (OSError, ValueError):
        return None
