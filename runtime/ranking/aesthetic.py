"""An optional learned aesthetic score: the LAION improved-aesthetic-predictor over CLIP image embeddings.

The predictor (christophschuhmann/improved-aesthetic-predictor, e.g. ``sac+logos+ava1-l14-linearMSE.pth``) is a
stack of linear layers (``layers.0`` ... ``layers.7``, dropout between them, no activation) that maps an
L2-normalised CLIP image embedding to a mean human rating on a 1..10 scale. It lives in ``models/aesthetic``; the
CLIP vision encoder it was trained on (ViT-L/14 for the released weights: 768-dim embeddings) lives in
``models/clip_vision`` as a transformers-layout file (``vision_model.*``, ``visual_projection.weight``), the way
ComfyUI keeps it. Both load offline (safetensors, or ``torch.load(weights_only=True)``) and are cached together.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, InvalidModelError
from ..models import MODEL_CACHE, ModelLocator, file_fingerprint, get_locator, load_state_dict

PREDICTOR_FOLDER = "aesthetic"
ENCODER_FOLDER = "clip_vision"
CACHE_TAG = "aesthetic"
# heads of the CLIP vision towers in use (not readable from shapes): ViT-B 12, ViT-L/H/g/bigG 16
HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 16, 1408: 16, 1664: 16}
GELU_WIDTHS = (1280, 1408, 1664)  # the open_clip towers (H, g, bigG) use GELU; OpenAI's (B, L) quick GELU
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(weight|bias)$")


@dataclass(frozen=True)
class AestheticScorer:
    """A CLIP vision encoder and the predictor on its embeddings; ``score`` rates pictures 1..10 (higher: better)."""

    encoder: Any  # transformers CLIPVisionModelWithProjection
    processor: Any  # transformers CLIPImageProcessor
    layers: tuple[Any, ...]  # torch.nn.Linear, applied in order
    name: str
    device: str

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """L2-normalised CLIP image embeddings [N, D] of float RGB(A) pictures in 0..1."""
        import torch

        rgb = []
        for image in images:
            array = np.asarray(image, dtype=np.float32)
            if array.ndim != 3 or array.shape[2] not in (3, 4):
                raise InvalidInputError(f"expected [H,W,3] or [H,W,4] pictures to score, got {array.shape}")
            rgb.append(np.rint(np.clip(np.nan_to_num(array[..., :3]), 0.0, 1.0) * 255).astype(np.uint8))
        pixels = self.processor(images=rgb, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            embeds = self.encoder(pixel_values=pixels.to(self.device)).image_embeds.float()
        return torch.nn.functional.normalize(embeds, dim=-1).cpu().numpy()

    def score(self, images: Sequence[np.ndarray]) -> list[float]:
        """The predicted rating of each picture (the LAION scale: about 1..10, higher is better)."""
        import torch

        if not len(images):
            return []
        with torch.inference_mode():
            values = torch.from_numpy(self.embed(images)).to(self.device)
            for layer in self.layers:
                values = layer(values)
        return [float(v) for v in values[:, 0].cpu()]


def load_aesthetic_scorer(predictor: str, encoder: str | None = None, device: str = "cpu",
                          locator: ModelLocator | None = None) -> AestheticScorer:
    """The predictor ``predictor`` (models/aesthetic) on the CLIP vision encoder ``encoder`` (models/clip_vision).

    Without ``encoder``, the one file in models/clip_vision whose embedding size fits the predictor is used; none
    or several is an error naming the folder and the candidates.
    """
    from ..devices import resolve_device

    device = resolve_device(device)
    locator = locator or get_locator()
    predictor_path = locator.resolve(PREDICTOR_FOLDER, predictor)
    width = predictor_input_width(load_state_dict(predictor_path), predictor)
    encoder = encoder or matching_encoder(width, locator)
    encoder_path = locator.resolve(ENCODER_FOLDER, encoder)
    key = (CACHE_TAG, file_fingerprint(predictor_path), file_fingerprint(encoder_path), device)
    return MODEL_CACHE.get_or_load(key, lambda: _load(predictor_path, predictor, encoder_path, encoder, device))


def predictor_input_width(state: dict[str, Any], name: str) -> int:
    """The embedding size a predictor state dict expects (the input width of its first layer)."""
    layers = _predictor_layers(state, name)
    return int(state[f"layers.{layers[0]}.weight"].shape[1])


def encoder_embedding_width(path: Path) -> int | None:
    """The embedding size of a CLIP vision file, read from its header only (None when it is not one)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            if "visual_projection.weight" not in set(handle.keys()):
                return None
            return int(handle.get_slice("visual_projection.weight").get_shape()[0])
    except Exception:  # not a safetensors file, or unreadable: not a candidate
        return None


def matching_encoder(width: int, locator: ModelLocator | None = None) -> str:
    """The one models/clip_vision file whose embeddings are ``width`` wide."""
    locator = locator or get_locator()
    names = locator.list(ENCODER_FOLDER)
    fitting = [n for n in names if encoder_embedding_width(locator.resolve(ENCODER_FOLDER, n)) == width]
    if len(fitting) == 1:
        return fitting[0]
    folders = ", ".join(str(f) for f in locator.folders(ENCODER_FOLDER))
    if not fitting:
        raise InvalidModelError(
            f"the aesthetic predictor needs a CLIP vision encoder with {width}-dim embeddings (ViT-L/14 for the "
            f"LAION predictor, e.g. clip-vit-large-patch14.safetensors) in models/{ENCODER_FOLDER} ({folders}); "
            f"found {', '.join(names) or 'no files'} there")
    raise InvalidInputError(f"several CLIP vision encoders in models/{ENCODER_FOLDER} give {width}-dim embeddings "
                            f"({', '.join(fitting)}); name the one the predictor was trained on")


def _predictor_layers(state: dict[str, Any], name: str) -> list[int]:
    indices = sorted({int(m.group(1)) for m in map(_LAYER_KEY.match, state) if m})
    if not indices or any(f"layers.{i}.weight" not in state or getattr(state[f"layers.{i}.weight"], "ndim", 0) != 2
                          for i in indices):
        raise InvalidModelError(f"{name} is not an aesthetic predictor: models/{PREDICTOR_FOLDER} holds the LAION "
                                "improved-aesthetic-predictor MLP (keys layers.N.weight / layers.N.bias), e.g. "
                                "sac+logos+ava1-l14-linearMSE.safetensors")
    return indices


def _load(predictor_path: Path, predictor: str, encoder_path: Path, encoder: str, device: str) -> AestheticScorer:
    import torch

    state = load_state_dict(predictor_path)
    layers = []
    for index in _predictor_layers(state, predictor):
        weight = state[f"layers.{index}.weight"]
        bias = state.get(f"layers.{index}.bias")
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            layer.weight.copy_(weight.float())
            if bias is not None:
                layer.bias.copy_(bias.float())
        layers.append(layer.to(device).eval())
    if any(a.out_features != b.in_features for a, b in itertools.pairwise(layers)) or \
            layers[-1].out_features != 1:
        raise InvalidModelError(f"{predictor}: its layers do not chain into one rating "
                                f"({[tuple(layer.weight.shape) for layer in layers]})")
    vision, processor = _load_encoder(encoder_path, encoder, device)
    if vision.config.projection_dim != layers[0].in_features:
        raise InvalidModelError(f"{encoder} gives {vision.config.projection_dim}-dim embeddings but {predictor} "
                                f"expects {layers[0].in_features}")
    return AestheticScorer(encoder=vision, processor=processor, layers=tuple(layers),
                           name=f"{predictor} on {encoder}", device=device)


def _load_encoder(path: Path, name: str, device: str) -> tuple[Any, Any]:
    """A transformers ``CLIPVisionModelWithProjection`` and its image processor from one file; the config from
    the tensor shapes (a full CLIP file's text tower is ignored)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    state = {k: v for k, v in load_state_dict(path).items()
             if k.startswith(("vision_model.", "visual_projection."))}
    try:
        patch = state["vision_model.embeddings.patch_embedding.weight"]
        positions = state["vision_model.embeddings.position_embedding.weight"].shape[0]
        width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
        layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("vision_model.encoder.layers."))
        config = CLIPVisionConfig(
            hidden_size=width, patch_size=patch_size, image_size=patch_size * round((positions - 1) ** 0.5),
            num_hidden_layers=layers, num_attention_heads=HEADS_BY_WIDTH.get(width, max(1, width // 64)),
            intermediate_size=int(state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
            projection_dim=int(state["visual_projection.weight"].shape[0]),
            hidden_act="gelu" if width in GELU_WIDTHS else "quick_gelu")
    except (KeyError, ValueError, IndexError) as exc:
        raise InvalidModelError(f"{name} is not a CLIP vision encoder in the transformers layout "
                                f"(vision_model.*, visual_projection.weight): missing {exc}") from None
    model = CLIPVisionModelWithProjection(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise InvalidModelError(f"{name}: the CLIP vision weights do not fit the architecture read from their shapes "
                                f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    side = config.image_size
    processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                   image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD))
    return model.to(device).eval(), processor
