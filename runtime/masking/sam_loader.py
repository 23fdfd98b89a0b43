"""Loading segment-anything (SAM) checkpoints of any size without being told which one they are.

The architecture is read from tensor shapes alone (``detect_architecture``), the model is rebuilt with
segment_anything's own classes (``build_sam``, mirroring ``segment_anything.build_sam._build_sam``) and
the weights are loaded strictly. Files come only from the ``sams`` model folder, through
``ModelLocator.resolve``, and are read with ``load_state_dict`` (safetensors, or
``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import InvalidModelError
from ..models import MODEL_CACHE, ModelLocator, file_fingerprint, get_locator, load_state_dict

if TYPE_CHECKING:
    import torch
    from segment_anything.modeling import Sam

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
CACHE_TAG = "sam"

_ENC = "image_encoder."
_PATCH_KEY = _ENC + "patch_embed.proj.weight"
_BLOCK_RE = re.compile(r"^image_encoder\.blocks\.(\d+)\.")
_LAYER_RE = re.compile(r"^mask_decoder\.transformer\.layers\.(\d+)\.")
_IOU_RE = re.compile(r"^mask_decoder\.iou_prediction_head\.layers\.(\d+)\.weight$")


@dataclass(frozen=True)
class SamArchitecture:
    """Everything needed to rebuild a SAM model; defaults are the official SAM (vit_b) values.

    ``decoder_num_heads`` is not visible in any tensor shape: SAM's 8 is assumed (all official
    checkpoints use it).
    """

    variant: str = "custom"  # "vit_b" | "vit_l" | "vit_h" | "custom"
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    encoder_window_size: int = 14
    encoder_mlp_ratio: float = 4.0
    encoder_qkv_bias: bool = True
    encoder_use_abs_pos: bool = True
    in_chans: int = 3
    image_size: int = 1024
    patch_size: int = 16
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    decoder_attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    @property
    def image_embedding_size(self) -> int:
        return self.image_size // self.patch_size

    def named(self) -> SamArchitecture:
        """A copy whose ``variant`` is the official config it equals, else "custom"."""
        for name, official in OFFICIAL_ARCHITECTURES.items():
            if replace(self, variant=name) == official:
                return replace(self, variant=name)
        return replace(self, variant="custom")


OFFICIAL_ARCHITECTURES: dict[str, SamArchitecture] = {
    "vit_b": SamArchitecture("vit_b", 768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArchitecture("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArchitecture("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
}


def _not_sam(reason: str) -> InvalidModelError:
    return InvalidModelError(
        f"{reason}: this is not a segment-anything checkpoint. Expected the keys of a SAM model "
        "(image_encoder.*, prompt_encoder.*, mask_decoder.*), e.g. sam_vit_b_01ec64.pth."
    )


def _shape(shapes: Mapping[str, tuple[int, ...]], key: str, ndim: int) -> tuple[int, ...]:
    if key not in shapes:
        raise _not_sam(f"no {key}")
    shape = tuple(int(s) for s in shapes[key])
    if len(shape) != ndim:
        raise _not_sam(f"{key} has shape {shape}, expected {ndim} dimensions")
    return shape


def _indices(shapes: Mapping[str, Any], pattern: re.Pattern[str], what: str) -> int:
    found = {int(m.group(1)) for key in shapes if (m := pattern.match(key))}
    if not found:
        raise _not_sam(f"no {what}")
    if found != set(range(len(found))):
        raise InvalidModelError(f"the {what} are numbered {sorted(found)}, expected 0..{len(found) - 1}")
    return len(found)


def detect_architecture(shapes: Mapping[str, tuple[int, ...]]) -> SamArchitecture:
    """Infer a SAM architecture from the tensor shapes of its state dict (key -> shape).

    Raises ``InvalidModelError`` when the keys are not those of a SAM model or do not fit together.
    """
    embed, in_chans, patch, patch_w = _shape(shapes, _PATCH_KEY, 4)
    if patch != patch_w:
        raise InvalidModelError(f"non-square patches {patch}x{patch_w} are not supported")
    depth = _indices(shapes, _BLOCK_RE, "image encoder blocks (image_encoder.blocks.N)")

    grid = None
    use_abs_pos = _ENC + "pos_embed" in shapes
    if use_abs_pos:
        _, gh, gw, pos_dim = _shape(shapes, _ENC + "pos_embed", 4)
        if gh != gw or pos_dim != embed:
            raise InvalidModelError(f"image_encoder.pos_embed has shape {(1, gh, gw, pos_dim)}, "
                                    f"expected (1, N, N, {embed})")
        grid = gh

    rel_lengths, head_dims = [], set()
    for i in range(depth):
        key = f"{_ENC}blocks.{i}.attn.rel_pos_h"
        if key not in shapes:
            raise InvalidModelError(f"no {key}: encoders without relative position embeddings are not SAM")
        length, head_dim = _shape(shapes, key, 2)
        if length % 2 == 0:
            raise InvalidModelError(f"{key} has even length {length}; expected 2 * size - 1")
        rel_lengths.append(length)
        head_dims.add(head_dim)
    if len(head_dims) != 1 or embed % next(iter(head_dims)):
        raise InvalidModelError(f"attention head sizes {sorted(head_dims)} do not divide the width {embed}")
    num_heads = embed // head_dims.pop()

    if grid is None:
        grid = (max(rel_lengths) + 1) // 2
    global_len = 2 * grid - 1
    window_lengths = {n for n in rel_lengths if n != global_len}
    if len(window_lengths) > 1 or any(n > global_len for n in window_lengths):
        raise InvalidModelError(f"relative position sizes {sorted(set(rel_lengths))} fit neither one window "
                                f"size nor the {grid}x{grid} token grid")
    window = (window_lengths.pop() + 1) // 2 if window_lengths else 0
    global_idx = tuple(i for i, n in enumerate(rel_lengths) if n == global_len) if window else ()

    mlp_dim = _shape(shapes, f"{_ENC}blocks.0.mlp.lin1.weight", 2)[0]
    mlp_ratio = mlp_dim / embed
    if int(embed * mlp_ratio) != mlp_dim:  # float rounding; ImageEncoderViT uses int(dim * ratio)
        mlp_ratio = (mlp_dim + 0.5) / embed

    out_chans = _shape(shapes, _ENC + "neck.0.weight", 4)[0]
    prompt_dim = _shape(shapes, "prompt_encoder.no_mask_embed.weight", 2)[1]
    if prompt_dim != out_chans:
        raise InvalidModelError(f"the image encoder outputs {out_chans} channels but the prompt encoder "
                                f"expects {prompt_dim}")
    mask_in_chans = _shape(shapes, "prompt_encoder.mask_downscaling.3.weight", 4)[0]

    num_tokens = _shape(shapes, "mask_decoder.mask_tokens.weight", 2)[0]
    decoder_depth = _indices(shapes, _LAYER_RE, "mask decoder layers (mask_decoder.transformer.layers.N)")
    decoder_mlp = _shape(shapes, "mask_decoder.transformer.layers.0.mlp.lin1.weight", 2)[0]
    cross_key = "mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight"
    cross_dim = _shape(shapes, cross_key, 2)[0]
    if cross_dim <= 0 or prompt_dim % cross_dim:
        raise InvalidModelError(f"cross-attention width {cross_dim} does not divide {prompt_dim}")
    iou_depth = _indices(shapes, _IOU_RE, "IoU head layers (mask_decoder.iou_prediction_head.layers.N)")
    iou_hidden = _shape(shapes, "mask_decoder.iou_prediction_head.layers.0.weight", 2)[0]

    arch = SamArchitecture(
        encoder_embed_dim=embed,
        encoder_depth=depth,
        encoder_num_heads=num_heads,
        encoder_global_attn_indexes=global_idx,
        encoder_window_size=window,
        encoder_mlp_ratio=mlp_ratio,
        encoder_qkv_bias=f"{_ENC}blocks.0.attn.qkv.bias" in shapes,
        encoder_use_abs_pos=use_abs_pos,
        in_chans=in_chans,
        image_size=grid * patch,
        patch_size=patch,
        prompt_embed_dim=prompt_dim,
        mask_in_chans=mask_in_chans,
        decoder_depth=decoder_depth,
        decoder_mlp_dim=decoder_mlp,
        decoder_attention_downsample_rate=prompt_dim // cross_dim,
        num_multimask_outputs=num_tokens - 1,
        iou_head_depth=iou_depth,
        iou_head_hidden_dim=iou_hidden,
    )
    if (prompt_dim // arch.decoder_attention_downsample_rate) % arch.decoder_num_heads:
        raise InvalidModelError(f"the mask decoder width {prompt_dim} cannot be split into "
                                f"{arch.decoder_num_heads} heads (SAM's fixed decoder head count)")
    return arch.named()


def build_sam(arch: SamArchitecture) -> Sam:
    """A ``segment_anything.modeling.Sam`` with ``arch``'s dimensions and freshly initialised weights.

    Built on the current default device, so ``with torch.device("meta"):`` builds it without memory.
    """
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = arch.image_embedding_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.encoder_depth,
            embed_dim=arch.encoder_embed_dim,
            img_size=arch.image_size,
            mlp_ratio=arch.encoder_mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch.encoder_num_heads,
            patch_size=arch.patch_size,
            in_chans=arch.in_chans,
            qkv_bias=arch.encoder_qkv_bias,
            use_abs_pos=arch.encoder_use_abs_pos,
            use_rel_pos=True,
            global_attn_indexes=arch.encoder_global_attn_indexes,
            window_size=arch.encoder_window_size,
            out_chans=arch.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=arch.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=arch.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_num_heads,
                attention_downsample_rate=arch.decoder_attention_downsample_rate,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=arch.iou_head_depth,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )


@dataclass
class LoadedSam:
    """A SAM model ready for inference (eval mode, on ``device``) and where it came from."""

    model: Sam
    architecture: SamArchitecture
    name: str
    device: str


def load_sam(name: str, device: str = "cpu", locator: ModelLocator | None = None) -> LoadedSam:
    """Load the SAM checkpoint ``name`` from the ``sams`` folder (.pth/.pt/.safetensors), any size.

    Cached in ``MODEL_CACHE`` per file (path, size, mtime) and device: loading twice returns the same
    object. Raises ``MissingModelError`` for names not in the folder and ``InvalidModelError`` for files
    that are corrupt, not SAM, or whose weights do not fit the detected architecture.
    """
    import torch

    path = (locator or get_locator()).resolve("sams", name)
    dev = str(torch.device(device))
    key = (CACHE_TAG, file_fingerprint(path), dev)
    return MODEL_CACHE.get_or_load(key, lambda: _load(path, name, dev))


def state_dict_shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """key -> shape, the input of ``detect_architecture``."""
    return {k: tuple(v.shape) for k, v in state.items()}


def _load(path: Any, name: str, device: str) -> LoadedSam:
    import torch

    state = _strip_prefix(load_state_dict(path))
    try:
        arch = detect_architecture(state_dict_shapes(state))
    except InvalidModelError as exc:
        raise InvalidModelError(f"{path.name}: {exc}") from None
    with torch.device("meta"):  # no throw-away random init: the weights are copied in below
        model = build_sam(arch)
    # Fresh (aligned) memory on the target device; copying into it also converts half-precision files.
    model = model.to_empty(device=device)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = str(exc).replace("\n", " ").replace("\t", "")
        raise InvalidModelError(
            f"{path.name} does not fit the {arch.variant} SAM architecture detected from it: {detail}"
        ) from None
    del state
    # The only non-persistent buffers; they are not in any checkpoint.
    model.pixel_mean = torch.tensor(PIXEL_MEAN, dtype=torch.float32, device=device).view(-1, 1, 1)
    model.pixel_std = torch.tensor(PIXEL_STD, dtype=torch.float32, device=device).view(-1, 1, 1)
    model.eval().requires_grad_(False)
    return LoadedSam(model=model, architecture=arch, name=name, device=device)


def _strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Drop a ``module.`` prefix that DataParallel-saved checkpoints put on every key."""
    prefix = "module."
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state
