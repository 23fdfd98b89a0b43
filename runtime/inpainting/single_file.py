"""Build a diffusers inpainting pipeline from one single-file checkpoint, offline.

The checkpoint is read once (safetensors, or ``torch.load(weights_only=True)``), its architecture
is probed from tensor shapes, and a temporary diffusers config folder is assembled from the
shipped ``configs/<family>/`` templates plus the probed values and tokenizer files found on disk.
Each component is then built by diffusers' own single-file converters from that folder, so no
config is ever fetched from a hub.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import InvalidModelError
from ..models import load_state_dict
from .checkpoint_probe import CheckpointLayout, probe_checkpoint
from .tokenizers import find_tokenizer_dir, write_tokenizer

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
PIPELINE_CLASSES = {"sd15": "StableDiffusionInpaintPipeline", "sdxl": "StableDiffusionXLInpaintPipeline"}


def assemble_config_dir(layout: CheckpointLayout, target: Path, tokenizer_dir: Path) -> Path:
    """Write a diffusers config folder for ``layout`` into ``target`` and return it."""
    shutil.copytree(CONFIGS_DIR / layout.family, target, dirs_exist_ok=True)
    for component, values in layout.overrides.items():
        config_path = target / component / "config.json"
        config = json.loads(config_path.read_text())
        config.update(values)
        config_path.write_text(json.dumps(config, indent=2))
    write_tokenizer(tokenizer_dir, target / "tokenizer", pad_token="<|endoftext|>")
    if layout.family == "sdxl":
        write_tokenizer(tokenizer_dir, target / "tokenizer_2", pad_token="!")
    return target


def load_single_file_pipeline(path: Path, torch_dtype, tokenizer_dir: str | None = None):
    """Load ``path`` as an inpainting pipeline; returns ``(pipeline, layout)``."""
    state = load_state_dict(path)
    layout = probe_checkpoint(state, path.name)
    tokenizers = find_tokenizer_dir(tokenizer_dir)
    with tempfile.TemporaryDirectory(prefix="backdrop-config-") as tmp:
        config_dir = assemble_config_dir(layout, Path(tmp) / layout.family, tokenizers)
        components = _build_components(state, layout, config_dir, torch_dtype, path.name)
    del state
    import diffusers

    pipeline_class = getattr(diffusers, PIPELINE_CLASSES[layout.family])
    extra: dict[str, Any] = {}
    if layout.family == "sd15":
        extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    return pipeline_class(**components, **extra), layout


def _build_components(state: dict, layout: CheckpointLayout, config_dir: Path, torch_dtype, name: str) -> dict:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    common = {"config": str(config_dir), "torch_dtype": torch_dtype, "local_files_only": True}
    try:
        components = {
            "unet": UNet2DConditionModel.from_single_file(state, subfolder="unet", **common),
            "vae": AutoencoderKL.from_single_file(state, subfolder="vae", **common),
            "text_encoder": create_diffusers_clip_model_from_ldm(
                CLIPTextModel, checkpoint=state, subfolder="text_encoder", **common),
            "tokenizer": CLIPTokenizer.from_pretrained(config_dir / "tokenizer", local_files_only=True),
            "scheduler": EulerDiscreteScheduler.from_pretrained(config_dir / "scheduler", local_files_only=True),
        }
        if layout.family == "sdxl":
            components["text_encoder_2"] = create_diffusers_clip_model_from_ldm(
                CLIPTextModelWithProjection, checkpoint=state, subfolder="text_encoder_2", **common)
            components["tokenizer_2"] = CLIPTokenizer.from_pretrained(config_dir / "tokenizer_2",
                                                                      local_files_only=True)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise InvalidModelError(f"{name} could not be converted as a {layout.family} checkpoint: {exc}") from exc
    for part, module in components.items():
        unloaded = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta] \
            if hasattr(module, "named_parameters") else []
        if unloaded:
            raise InvalidModelError(f"{name}: the {part} weights are incomplete; {len(unloaded)} tensors are "
                                    f"missing from the file, e.g. {', '.join(unloaded[:3])}")
    vocab = len(components["tokenizer"])
    if vocab != components["text_encoder"].config.vocab_size:
        raise InvalidModelError(
            f"{name}: the tokenizer found on disk has {vocab} tokens but the text encoder expects "
            f"{components['text_encoder'].config.vocab_size}; point $BACKDROP_CLIP_TOKENIZER at matching files")
    return components
