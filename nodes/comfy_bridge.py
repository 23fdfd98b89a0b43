"""The only place that touches ComfyUI internals: model folders, progress bars, interruption.

Without ComfyUI (tests, the CLI importing the package) everything falls back: folders come from
``BACKDROP_MODELS_DIR`` / ``./models`` and progress goes to an optional plain callback.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..runtime.models import MODEL_FOLDERS, ModelLocator, get_locator, set_locator
from ..runtime.progress import ProgressFn

try:  # ComfyUI puts these top-level modules on sys.path; outside it they do not exist.
    import folder_paths  # type: ignore[import-not-found]
except ImportError:
    folder_paths = None

try:
    import comfy.model_management as _model_management  # type: ignore[import-not-found]
    import comfy.utils as _comfy_utils  # type: ignore[import-not-found]
except ImportError:
    _comfy_utils = None
    _model_management = None

IN_COMFYUI = folder_paths is not None

# Outside ComfyUI a test or host can observe progress through this factory: total -> callback.
fallback_progress_factory: Callable[[int], ProgressFn] | None = None


def register_model_folders() -> None:
    """Register sams, LLM, checkpoints, diffusers, loras, onnx, tensorrt with ComfyUI's folder_paths,
    and make the runtime resolve model names through them."""
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


def progress_for(total: int) -> ProgressFn:
    """A callback for runtime loops: drives ComfyUI's ProgressBar and raises on interruption."""
    if _comfy_utils is not None:
        bar = _comfy_utils.ProgressBar(total)

        def update(done: int, total_: int) -> None:
            _model_management.throw_exception_if_processing_interrupted()
            bar.update_absolute(done, total_)

        return update
    if fallback_progress_factory is not None:
        return fallback_progress_factory(total)
    return lambda done, total_: None


def check_interrupted() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel (no-op outside ComfyUI)."""
    if _model_management is not None:
        _model_management.throw_exception_if_processing_interrupted()


def clip_tokenizer_dir() -> Path | None:
    """ComfyUI's own SD1 CLIP tokenizer folder (comfy/sd1_tokenizer), or None outside ComfyUI."""
    try:
        import comfy.sd1_clip as sd1_clip  # type: ignore[import-not-found]
    except ImportError:
        return None
    folder = Path(sd1_clip.__file__).resolve().parent / "sd1_tokenizer"
    return folder if (folder / "vocab.json").is_file() else None


def register_clip_tokenizer() -> None:
    """Let single-file checkpoints use ComfyUI's bundled CLIP tokenizer files."""
    from ..runtime.inpainting.tokenizers import register_tokenizer_dir

    folder = clip_tokenizer_dir()
    if folder is not None:
        register_tokenizer_dir(folder)


register_model_folders()


# ---- files for the provenance nodes (BackdropSave, BackdropVerify) -------------------------------------
OUTPUT_DIR_ENV = "BACKDROP_OUTPUT_DIR"
INPUT_DIR_ENV = "BACKDROP_INPUT_DIR"


def _fallback_dir(env: str, name: str) -> Path:
    import tempfile

    return Path(os.environ.get(env) or Path(tempfile.gettempdir()) / "comfyui-backdrop" / name).expanduser()


def output_directory() -> Path:
    """ComfyUI's output folder; outside ComfyUI ``$BACKDROP_OUTPUT_DIR``, else a folder in the temp dir."""
    if folder_paths is not None:
        return Path(folder_paths.get_output_directory())
    return _fallback_dir(OUTPUT_DIR_ENV, "output")


def input_directory() -> Path:
    """ComfyUI's input folder; outside ComfyUI ``$BACKDROP_INPUT_DIR``, else a folder in the temp dir."""
    if folder_paths is not None:
        return Path(folder_paths.get_input_directory())
    return _fallback_dir(INPUT_DIR_ENV, "input")


def input_image_names() -> list[str]:
    """Image files directly in the input folder (what LoadImage lists), sorted."""
    folder = input_directory()
    try:
        files = [p.name for p in folder.iterdir() if p.is_file()]
    except OSError:
        return []
    if folder_paths is not None:
        return sorted(folder_paths.filter_files_content_types(files, ["image"]))
    from ..runtime.imaging import IMAGE_SUFFIXES

    return sorted(f for f in files if f.lower().endswith(IMAGE_SUFFIXES))


def input_image_path(name: str) -> Path:
    """Path of an input-folder image chosen in a combo; only listed names are accepted outside ComfyUI
    (inside, ComfyUI validates combo values against the list before the node runs)."""
    if folder_paths is not None:
        return Path(folder_paths.get_annotated_filepath(name))
    if name not in input_image_names():
        raise FileNotFoundError(f"{name!r} is not an image in the input folder {input_directory()}")
    return input_directory() / name


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
