"""A DeepCache-style feature cache: reuse the UNet's deep features between full evaluations.

Adjacent denoising steps change the UNet's deep, low-resolution features very little; the shallow,
full-resolution path carries the detail that does change (DeepCache, Ma et al., CVPR 2024). With
``interval = N`` the UNet runs in full on steps 0, N, 2N... and every block below the outermost level
(down blocks 1.., the mid block, up blocks ..-2) records its output. On the other steps those blocks
return what they recorded instead of computing, so only ``conv_in``, the first down block, the last up
block and ``conv_out`` run; the skip connections of the outermost level are computed fresh.

The published ``deepcache`` package (0.1.1, December 2023) still runs with today's diffusers, but it is
not maintained; this file is the small, explicit version of the same idea, written against the block
structure of ``diffusers.UNet2DConditionModel`` (SD1.5 and SDXL layouts alike): it wraps block
``forward`` methods for the duration of a ``with`` block and restores them afterwards. An OpenVINO UNet
engine does the same with two graphs (the full UNet, which also returns its deep features, and the
shallow UNet exported beside it; export/openvino_export.py); other engines cannot, and say so.

The output differs from the full schedule (that is the trade); ``backdrop bench --feature-cache N``
reports the speed-up and the difference.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInputError

MAX_INTERVAL = 10


@dataclass
class CacheState:
    interval: int
    calls: int = 0
    shallow: bool = False
    shape: tuple[int, ...] | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    full_calls: int = 0
    shallow_calls: int = 0


def deep_blocks(unet: Any) -> dict[str, Any]:
    """The blocks whose outputs are reused: down blocks 1.., the mid block, up blocks ..-2."""
    blocks = {f"down_blocks.{i}": b for i, b in enumerate(unet.down_blocks) if i > 0}
    if getattr(unet, "mid_block", None) is not None:
        blocks["mid_block"] = unet.mid_block
    blocks.update({f"up_blocks.{i}": b for i, b in enumerate(unet.up_blocks) if i < len(unet.up_blocks) - 1})
    return blocks


@contextmanager
def feature_cache(unet: Any, interval: int) -> Iterator[CacheState | None]:
    """Within the block, ``unet`` runs in full every ``interval`` calls and reuses deep features in between.

    ``interval`` 0 or 1 leaves the UNet untouched (yields None). The call count starts at 0 when the
    block is entered, so each sampling run starts with a full evaluation.
    """
    if interval in (0, 1):
        yield None
        return
    if not 2 <= interval <= MAX_INTERVAL:
        raise InvalidInputError(f"feature cache interval must be 0 (off) or 2..{MAX_INTERVAL}, got {interval}")
    backend = getattr(unet, "backend", None)
    if backend is not None and getattr(backend, "supports_feature_cache", False):
        backend.set_feature_cache(interval)  # an OpenVINO engine with its shallow UNet: the same idea, two graphs
        try:
            yield None
        finally:
            backend.set_feature_cache(0)
        return
    if not hasattr(unet, "down_blocks") or not hasattr(unet, "up_blocks"):
        raise InvalidInputError(f"the feature cache reuses the UNet's deep blocks; this UNet ({type(unet).__name__}"
                                f"{' on ' + backend.name if backend is not None else ''}) cannot skip them (only "
                                "the torch UNet and OpenVINO engines can). Turn the feature cache off, or use one "
                                "of those")
    state = CacheState(interval=interval)
    patched = []

    def before_call(_module: Any, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs.get("sample")
        shape = tuple(sample.shape)
        full = state.calls % interval == 0 or shape != state.shape or not state.outputs
        state.shallow, state.shape = not full, shape
        state.calls += 1
        if full:
            state.full_calls += 1
        else:
            state.shallow_calls += 1

    for name, block in deep_blocks(unet).items():
        original = block.forward

        def forward(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            if state.shallow and _name in state.outputs:
                return state.outputs[_name]
            out = _original(*args, **kwargs)
            state.outputs[_name] = out
            return out

        block.forward = forward
        patched.append(block)
    hook = unet.register_forward_pre_hook(before_call, with_kwargs=True)
    try:
        yield state
    finally:
        hook.remove()
        for block in patched:
            del block.forward  # the class's forward again
        state.outputs.clear()
