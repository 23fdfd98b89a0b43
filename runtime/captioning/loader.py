"""Loading vision-language captioners from ``models/LLM`` (one transformers-format folder each), offline.

Names come only from the folder listing (``ModelLocator.resolve``). Before transformers is asked,
the folder is checked: a ``config.json`` of an image-text-to-text architecture, weights, processor
and tokenizer files, and no model code of its own unless remote code was allowed. Everything loads
with ``local_files_only=True``; models are cached in ``MODEL_CACHE`` and freed by ``free_captioners``.

Families: Florence-2 (native ``florence2``; older remote-code folders need ``allow_remote_code``),
BLIP and BLIP-2, Qwen2-VL and Qwen2.5-VL, plus any other image-text-to-text model with a chat
template (``chat``) or without one (``plain``, the instruction is passed as text).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..devices import DEVICES, resolve_device
from ..errors import InvalidInputError, InvalidModelError
from ..models import MODEL_CACHE, ModelLocator, file_fingerprint, get_locator

if TYPE_CHECKING:
    import torch

    from .captioner import Captioner

logger = logging.getLogger(__name__)

CACHE_TAG = "captioner"
DTYPES = ("auto", "fp32", "fp16", "bf16")
FAMILY_BY_MODEL_TYPE = {
    "florence2": "florence2",
    "blip": "blip",
    "blip-2": "blip2",
    "qwen2_vl": "qwen_vl",
    "qwen2_5_vl": "qwen_vl",
}
# auto_map entries a remote-code VLM may name, most specific first.
REMOTE_AUTO_CLASSES = ("AutoModelForImageTextToText", "AutoModelForVision2Seq", "AutoModelForCausalLM",
                       "AutoModelForSeq2SeqLM")
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
REMOTE_CODE_WARNING = ("allow_remote_code runs Python files shipped inside the model folder with your user's "
                       "rights. Only enable it for folders you trust.")


@dataclass(frozen=True)
class FolderInfo:
    """What a model folder holds, read from its files without importing transformers."""

    path: Path
    model_type: str
    family: str
    remote_code: bool
    auto_map: dict[str, str]


def inspect_folder(path: Path) -> FolderInfo:
    """Read ``config.json`` and check that the folder holds a complete VLM; raise InvalidModelError if not."""
    config_file = path / "config.json"
    if not path.is_dir() or not config_file.is_file():
        raise InvalidModelError(
            f"models/LLM/{path.name} is not a transformers model folder: it has no config.json. A captioner "
            "folder holds config.json, weights (*.safetensors), the processor config (preprocessor_config.json "
            "or processor_config.json) and tokenizer files (tokenizer.json...), as saved by save_pretrained.")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidModelError(f"models/LLM/{path.name}/config.json cannot be read: {exc}") from exc
    if not isinstance(config, dict):
        raise InvalidModelError(f"models/LLM/{path.name}/config.json does not hold a JSON object")
    model_type = str(config.get("model_type") or "")
    auto_map = config.get("auto_map") if isinstance(config.get("auto_map"), dict) else {}
    remote = bool(auto_map)
    if not remote and not _is_image_text_to_text(model_type):
        what = f"a {model_type!r} model" if model_type else "a model without a model_type"
        raise InvalidModelError(
            f"models/LLM/{path.name} is {what}, not a vision-language model: it cannot caption images. "
            "Use Florence-2, BLIP / BLIP-2, Qwen2-VL / Qwen2.5-VL or another image-text-to-text model.")
    family = FAMILY_BY_MODEL_TYPE.get(model_type, "")
    _check_files(path)
    return FolderInfo(path=path, model_type=model_type, family=family, remote_code=remote, auto_map=auto_map)


def _is_image_text_to_text(model_type: str) -> bool:
    if model_type in FAMILY_BY_MODEL_TYPE:
        return True
    if not model_type:
        return False
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def _check_files(path: Path) -> None:
    names = {p.name for p in path.iterdir()}
    missing = []
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        missing.append("weights (model.safetensors, or pytorch_model.bin)")
    if not names.intersection(PROCESSOR_FILES):
        missing.append("the image processor config (preprocessor_config.json or processor_config.json)")
    if not names.intersection(TOKENIZER_FILES):
        missing.append("tokenizer files (tokenizer.json, or vocab.txt / vocab.json + merges.txt / tokenizer.model)")
    if missing:
        raise InvalidModelError(
            f"models/LLM/{path.name} is incomplete: it has no {'; no '.join(missing)}. Copy the whole model "
            "folder (everything save_pretrained wrote, including the processor and tokenizer files).")


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto`` -> fp32 on CPU, bf16 on GPUs that support it, else fp16. fp16 on CPU falls back to fp32."""
    import torch

    if dtype not in DTYPES:
        raise InvalidInputError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        if device == "cpu":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype == "fp16" and device == "cpu":
        logger.warning("fp16 is not supported for generation on the CPU; using fp32")
        return torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def load_captioner(name: str, device: str = "auto", dtype: str = "auto", allow_remote_code: bool = False,
                   locator: ModelLocator | None = None) -> Captioner:
    """Load (or reuse from the cache) the captioner in ``models/LLM/<name>``. Returns a ``Captioner``."""
    path = (locator or get_locator()).resolve("LLM", name)
    info = inspect_folder(path)
    if info.remote_code and not allow_remote_code:
        code = ", ".join(_code_files(info.auto_map))
        raise InvalidModelError(
            f"models/LLM/{name} ships its own model code ({code or 'auto_map in config.json'}) and remote code is "
            "not allowed. Enable allow_remote_code if you trust that folder, or use a native transformers version "
            "of the model (for Florence-2: a converted folder such as florence-community/Florence-2-base).")
    run_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, run_device)
    key = (CACHE_TAG, _folder_fingerprint(path), run_device, str(torch_dtype), bool(allow_remote_code))
    return MODEL_CACHE.get_or_load(key, lambda: _load(info, name, run_device, torch_dtype, allow_remote_code))


def _code_files(auto_map: dict) -> list[str]:
    """The .py files an auto_map points at ("modeling_florence2.Florence2..." -> modeling_florence2.py)."""
    refs = [v for value in auto_map.values() for v in (value if isinstance(value, list) else [value])]
    return sorted({str(ref).split("--")[-1].split(".")[0] + ".py" for ref in refs if ref})


def free_captioners() -> int:
    """Drop every cached captioner; returns how many were freed."""
    return MODEL_CACHE.free(lambda key: isinstance(key, tuple) and bool(key) and key[0] == CACHE_TAG)


def _folder_fingerprint(path: Path) -> tuple:
    files = sorted(p for p in path.iterdir() if p.is_file())
    return (str(path.resolve()), tuple((*file_fingerprint(p)[1:], p.name) for p in files))


def _load(info: FolderInfo, name: str, device: str, torch_dtype, allow_remote_code: bool):
    import transformers

    from .captioner import Captioner

    if info.remote_code:
        logger.warning("%s Loading remote code from models/LLM/%s.", REMOTE_CODE_WARNING, name)
    common: dict[str, Any] = {"local_files_only": True, "trust_remote_code": bool(allow_remote_code)}
    try:
        processor = transformers.AutoProcessor.from_pretrained(str(info.path), **common)
    except Exception as exc:  # transformers raises OSError, ValueError, TypeError, KeyError...
        raise InvalidModelError(
            f"the processor of models/LLM/{name} could not be loaded ({type(exc).__name__}: {exc}). The folder "
            "needs its processor config and tokenizer files, as written by processor.save_pretrained.") from exc
    if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
        raise InvalidModelError(
            f"models/LLM/{name} has no complete image+text processor (found {type(processor).__name__}); it needs "
            "both the image processor config and the tokenizer files.")
    auto_class = _auto_class(info, transformers)
    dtype_kwarg = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    try:
        model, loading = auto_class.from_pretrained(str(info.path), output_loading_info=True,
                                                    **{dtype_kwarg: torch_dtype}, **common)
    except Exception as exc:
        raise InvalidModelError(
            f"the model in models/LLM/{name} could not be loaded ({type(exc).__name__}: {exc})") from exc
    _check_loading(model, loading, name)
    model = model.to(device).eval()
    family = info.family or ("chat" if getattr(processor, "chat_template", None) else "plain")
    return Captioner(model=model, processor=processor, family=family, name=name, device=device,
                     dtype=torch_dtype)


def _auto_class(info: FolderInfo, transformers):
    if info.remote_code:
        for class_name in REMOTE_AUTO_CLASSES:
            if class_name in info.auto_map and hasattr(transformers, class_name):
                return getattr(transformers, class_name)
        raise InvalidModelError(
            f"models/LLM/{info.path.name}'s auto_map names none of {', '.join(REMOTE_AUTO_CLASSES)}: it is not "
            "a captioning model.")
    return transformers.AutoModelForImageTextToText


def _check_loading(model, loading: dict, name: str) -> None:
    """Refuse weights that do not fit the architecture (most parameters left random); warn on a few."""
    missing = set(loading.get("missing_keys") or ())
    mismatched = loading.get("mismatched_keys") or []
    if mismatched:
        raise InvalidModelError(f"models/LLM/{name}: weights do not match config.json (shape mismatch in "
                                f"{len(mismatched)} tensors, e.g. {next(iter(mismatched))})")
    if not missing:
        return
    params = dict(model.named_parameters())
    lost = sum(params[k].numel() for k in missing if k in params)
    total = sum(p.numel() for p in params.values())
    if total and lost / total > 0.5:
        raise InvalidModelError(
            f"models/LLM/{name}: the weights do not fit the architecture in config.json ({len(missing)} tensors "
            f"missing, {lost / total:.0%} of the parameters would be random).")
    logger.warning("models/LLM/%s: %d tensors missing from the weights and left at their initial values: %s",
                   name, len(missing), ", ".join(sorted(missing)[:5]))


__all__ = ["DEVICES", "DTYPES", "REMOTE_CODE_WARNING", "FolderInfo", "free_captioners", "inspect_folder",
           "load_captioner", "resolve_device", "resolve_dtype"]
