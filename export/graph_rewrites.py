"""Export-time rewrites: diffusers modules traced as graphs that compute the same function with less work.

Each rewrite replaces one module's ``forward`` for the duration of an export (``export_rewrites``) and puts
it back on exit; the torch model is untouched afterwards. Both are exact algebra (only the order of fp32
additions changes, a few 1e-7 relative), so they hold an engine's fp32 1e-4 budget:

- **GEGLU as two linears.** diffusers' ``GEGLU`` projects to twice the inner width and splits the result in
  two (``chunk``). OpenVINO's CPU plugin runs that split with a reference kernel and the wide projection at
  a third of its matmul rate; two half-width projections (the weight's two halves) need neither. SD1.5 UNet,
  512 px, batch 2, bf16 on an AMX Xeon: 45 ms of splits a step gone, 1.49 s -> 1.40 s.
- **Nearest 2x upsampling + 3x3 convolution as one stride-2 transposed convolution** (kernel 4, padding 1).
  Each output pixel of the original sees a 2x2 neighbourhood of the input, with the 3x3 taps summed in
  pairs, so the 4x4 transposed kernel does the same work at 16 taps per input pixel instead of 36 on the
  upsampled map (2.25x fewer multiply-adds). fp32 only: OpenVINO has no bf16 transposed convolution, so in
  bf16 it would fall back to fp32 and lose (measured 31 -> 98 ms); with fp32 activations (fp32 and int8
  engines) it is 1.9x faster per layer (SD1.5 UNet upsamplers 181 -> 98 ms and 189 -> 93 ms; a VAE decoder
  upsampler at 128 px, 512 channels, 942 -> 509 ms).
- **Winograd F(4x4, 3x3) for the UNet's resnet convolutions at the 32 px level** (fp32 engines only): each
  4x4 output tile from a 6x6 input tile with 36 multiplications per channel pair instead of 144, as 36
  batched GEMMs between the transforms (the matrices of export/winograd.py, derived exactly). Where it pays
  was measured on the SD1.5 UNet (512 px, fp32, 2 threads, AMX Xeon): the level whose feature maps are 32 px at
  the UNet's native size, 5.27 -> 5.04 s a step; at 64 px the tile transforms cost more than the GEMMs save
  (5.13 -> 4.62 s with it at 16-64 px, 4.36 s at 16-32 px) and below 16 px the GEMMs get too short. The
  transformed kernels take 4x the memory of the 3x3 ones, so it is kept to levels of at most 640 channels
  (SD1.5: +0.6 GB of weights, 17%; the 1280-channel 16 px level, which would save another 0.4 s, would add
  2.2 GB and take OpenVINO fp32 past the 16 GB budget). Relative error of the SD1.5 UNet: 3e-6.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
import torch.nn.functional as F

GEGLU_SPLIT = "geglu_split"
UPSAMPLE_CONV_TRANSPOSE = "upsample_conv_transpose"
WINOGRAD = "winograd_f4x3"
WINOGRAD_NATIVE_SIDE = 32  # feature-map side (at the UNet's native size) of the level that gets Winograd
WINOGRAD_MAX_CHANNELS = 640  # transformed kernels take 4x the memory: larger levels keep their convolutions
# precisions whose engines run activations in fp32 (int8 compresses weights only)
FP32_ACTIVATIONS = ("fp32", "int8")


def plain_layer(layer: torch.nn.Module, kind: type) -> torch.nn.Module | None:
    """``layer`` as a plain ``kind`` module whose weights are all it computes with: itself, or a peft LoRA
    layer's base layer when no unmerged adapter is active; None when an adapter still adds its own path."""
    if type(layer) is kind:
        return layer
    base = getattr(layer, "base_layer", None)
    if type(base) is not kind:
        return None
    lora_a = getattr(layer, "lora_A", {})
    live = [a for a in getattr(layer, "active_adapters", ()) if a in lora_a]
    if getattr(layer, "disable_adapters", False) or getattr(layer, "merged", False) or not live:
        return base
    return None


class RewrittenForward:
    """A module's replacement forward, ``function(held, *args, **kwargs)``, and the tensors it computes with.

    ``held`` is a module whose buffers are those tensors; ``patched_forward`` makes it a child of the rewritten
    module for the export, so a traced graph reads them as module attributes. A tensor captured by a closure
    would become a constant of the graph, and TorchScript's global compilation unit keeps every traced graph
    alive: after an fp32 SD1.5 export that held 1.3 GB of transformed kernels for the rest of the process.
    """

    def __init__(self, function: Callable[..., torch.Tensor], **tensors: torch.Tensor | None) -> None:
        self.function = function
        self.held = torch.nn.Module()
        for name, tensor in tensors.items():
            self.held.register_buffer(name, tensor, persistent=False)

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.function(self.held, *args, **kwargs)


def geglu_forward(module: torch.nn.Module) -> RewrittenForward | None:
    """A forward for a diffusers ``GEGLU`` that runs its projection as two half-width linears, or None."""
    proj = plain_layer(module.proj, torch.nn.Linear)
    if proj is None or proj.out_features % 2:
        return None
    half = proj.out_features // 2
    weight = proj.weight.detach()
    bias = proj.bias.detach() if proj.bias is not None else None

    def forward(held: torch.nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        hidden = F.linear(hidden_states, held.w_hidden, held.b_hidden)
        return hidden * module.gelu(F.linear(hidden_states, held.w_gate, held.b_gate))

    return RewrittenForward(forward, w_hidden=weight[:half].clone(), w_gate=weight[half:].clone(),
                            b_hidden=None if bias is None else bias[:half].clone(),
                            b_gate=None if bias is None else bias[half:].clone())


def transposed_upsample_kernel(weight: torch.Tensor) -> torch.Tensor:
    """The ``conv_transpose2d`` weight ``[in, out, 4, 4]`` (stride 2, padding 1) equal to nearest 2x
    upsampling followed by a 3x3 convolution with ``weight`` ``[out, in, 3, 3]`` (padding 1).

    Along one axis, output ``2m`` sees input ``m-1`` with tap 0 and ``m`` with taps 1+2; output ``2m+1``
    sees ``m`` with taps 0+1 and ``m+1`` with tap 2. The transposed convolution's taps 3, 1, 2, 0 are those
    four sums. Computed in fp64 and rounded once.
    """

    def along(w: torch.Tensor, dim: int) -> torch.Tensor:
        t0, t1, t2 = w.unbind(dim)
        return torch.stack([t2, t1 + t2, t0 + t1, t0], dim)

    kernel = along(along(weight.detach().double(), 2), 3)
    return kernel.transpose(0, 1).to(weight.dtype).contiguous()


def upsample_forward(module: torch.nn.Module) -> RewrittenForward | None:
    """A forward for a diffusers ``Upsample2D`` (nearest 2x, then a 3x3 convolution) as one transposed
    convolution, or None when the module is configured otherwise."""
    conv = plain_layer(getattr(module, "conv", None), torch.nn.Conv2d) if getattr(module, "conv", None) else None
    if (conv is None or not is_plain_3x3(conv) or not getattr(module, "use_conv", False)
            or getattr(module, "use_conv_transpose", True) or not getattr(module, "interpolate", True)
            or getattr(module, "norm", None) is not None):
        return None
    original = module.forward

    def forward(held: torch.nn.Module, hidden_states: torch.Tensor, output_size: Any = None, *args: Any,
                **kwargs: Any) -> torch.Tensor:
        if output_size is not None and tuple(output_size) != tuple(2 * s for s in hidden_states.shape[-2:]):
            return original(hidden_states, output_size, *args, **kwargs)
        bias = None if held.bias is None else held.bias.to(hidden_states.dtype)
        return F.conv_transpose2d(hidden_states, held.kernel.to(hidden_states.dtype), bias, stride=2, padding=1)

    return RewrittenForward(forward, kernel=transposed_upsample_kernel(conv.weight),
                            bias=conv.bias.detach().clone() if conv.bias is not None else None)


def is_plain_3x3(conv: torch.nn.Module) -> bool:
    """A 3x3, stride-1, padding-1, ungrouped, undilated, zero-padded ``Conv2d``."""
    return (type(conv) is torch.nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def winograd_forward(conv: torch.nn.Conv2d) -> RewrittenForward:
    """A forward computing ``conv`` (a plain 3x3) with Winograd F(4x4, 3x3), for any input size."""
    import numpy as np

    from .winograd import SPAN, TILE, transformed_kernel, winograd_matrices

    a_t, g_m, b_t = winograd_matrices()

    def forward(held: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        transform_in, kernel, transform_out, bias = held.transform_in, held.kernel, held.transform_out, held.bias
        n, c, h, w = x.shape
        th, tw = (h + TILE - 1) // TILE, (w + TILE - 1) // TILE
        padded = F.pad(x, (1, TILE * tw + 1 - w, 1, TILE * th + 1 - h))
        tiles = torch.stack([padded[:, :, i:i + TILE * th:TILE, j:j + TILE * tw:TILE]
                             for i in range(SPAN) for j in range(SPAN)], 0)  # [36, n, c, th, tw]
        v = (transform_in @ tiles.reshape(SPAN * SPAN, -1)).reshape(SPAN * SPAN, n, c, th * tw)
        m = torch.bmm(v.transpose(2, 3).reshape(SPAN * SPAN, n * th * tw, c), kernel)  # [36, n*T, K]
        k = m.shape[-1]
        y = (transform_out @ m.reshape(SPAN * SPAN, -1)).reshape(TILE, TILE, n, th, tw, k)
        y = y.permute(2, 5, 3, 0, 4, 1).reshape(n, k, TILE * th, TILE * tw)[:, :, :h, :w]
        return y if bias is None else y + bias.view(1, -1, 1, 1)

    kernel = torch.from_numpy(transformed_kernel(conv.weight.detach().cpu().numpy(), g_m))  # [36, C, K]
    # the input and output transforms of every tile, as one matrix each over the 36 tile positions
    transform_in = torch.from_numpy(np.kron(b_t, b_t).astype(np.float32))  # [36, 36]
    transform_out = torch.from_numpy(np.kron(a_t, a_t).astype(np.float32))  # [16, 36]
    bias = conv.bias.detach().clone() if conv.bias is not None else None
    return RewrittenForward(forward, kernel=kernel, transform_in=transform_in, transform_out=transform_out, bias=bias)


def winograd_targets(model: torch.nn.Module) -> list[tuple[torch.nn.Module, torch.nn.Conv2d]]:
    """(module, its plain 3x3 convolution) for the resnet convolutions of a diffusers UNet at the level whose
    feature maps are ``WINOGRAD_NATIVE_SIDE`` px at its native size, if that level has at most
    ``WINOGRAD_MAX_CHANNELS`` (a merged LoRA's wrapper counts with its base convolution)."""
    config = getattr(model, "config", None)
    down, up = getattr(model, "down_blocks", None), getattr(model, "up_blocks", None)
    if type(model).__name__ != "UNet2DConditionModel" or config is None or down is None or up is None:
        return []
    native = config.sample_size
    native = min(native) if isinstance(native, (list, tuple)) else int(native)
    levels = len(down)
    targets = []
    for level in range(levels):
        if native // 2**level != WINOGRAD_NATIVE_SIDE or config.block_out_channels[level] > WINOGRAD_MAX_CHANNELS:
            continue
        for block in (down[level], up[levels - 1 - level]):
            for resnet in getattr(block, "resnets", ()):
                for module in (resnet.conv1, resnet.conv2):
                    conv = plain_layer(module, torch.nn.Conv2d)
                    if conv is not None and is_plain_3x3(conv):
                        targets.append((module, conv))
    return targets


def rewrites_for(precision: str) -> tuple[str, ...]:
    """The rewrites an engine in ``precision`` gets (Winograd only in fp32: int8 would quantize its kernels)."""
    if precision == "fp32":
        return GEGLU_SPLIT, UPSAMPLE_CONV_TRANSPOSE, WINOGRAD
    return (GEGLU_SPLIT, UPSAMPLE_CONV_TRANSPOSE) if precision in FP32_ACTIVATIONS else (GEGLU_SPLIT,)


HELD = "_backdrop_rewrite_tensors"  # the child module name of a rewritten forward's tensors (RewrittenForward)


@contextmanager
def patched_forward(module: torch.nn.Module, forward: Callable[..., torch.Tensor]) -> Iterator[None]:
    """``module.forward`` is ``forward`` inside the block (a ``RewrittenForward``'s tensors a child module of
    ``module``), its own (class) forward again after."""
    had_own = "forward" in vars(module)
    own = vars(module).get("forward")
    module.forward = forward
    held = getattr(forward, "held", None)
    if held is not None:
        module.add_module(HELD, held)
    try:
        yield
    finally:
        if held is not None:
            delattr(module, HELD)
        if had_own:
            module.forward = own
        else:
            del module.forward


@contextmanager
def export_rewrites(model: torch.nn.Module, precision: str) -> Iterator[dict[str, int]]:
    """Rewrite the modules of ``model`` that a ``precision`` engine computes faster another way, for the
    duration; yields how many modules each rewrite took (``{"geglu_split": 16, ...}``)."""
    from diffusers.models.activations import GEGLU
    from diffusers.models.upsampling import Upsample2D

    builders = {GEGLU_SPLIT: (GEGLU, geglu_forward), UPSAMPLE_CONV_TRANSPOSE: (Upsample2D, upsample_forward)}
    counts = {name: 0 for name in rewrites_for(precision)}
    with ExitStack() as stack:
        for module in list(model.modules()):  # patching adds child modules (RewrittenForward.held)
            for name in counts.keys() & builders.keys():
                kind, build = builders[name]
                forward = build(module) if isinstance(module, kind) else None
                if forward is not None:
                    stack.enter_context(patched_forward(module, forward))
                    counts[name] += 1
        if WINOGRAD in counts:
            for module, conv in winograd_targets(model):
                stack.enter_context(patched_forward(module, winograd_forward(conv)))
                counts[WINOGRAD] += 1
        yield counts
