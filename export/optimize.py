"""onnxruntime's UNet graph fusions, made to run on today's stack, plus an int8 dynamic-quantized variant.

``onnxruntime.transformers.optimizer.optimize_model(model_type="unet")`` crashes on current exports: its
attention fusion reads the head count with ``int(array_of_shape_[1])``, which NumPy 2 (>= 2.3) refuses
("only 0-dimensional arrays can be converted to Python scalars"). The torch version was not the cause.
``UnetFusionModel`` below is onnxruntime's own ``UnetOnnxModel`` with that one lookup fixed; every
fusion is still onnxruntime's code.

Fusions are chosen per target. CPU: attention (all of it ends on ``MultiHeadAttention``, whose CPU
kernel is flash attention; see ``flash_self_attention``), LayerNorm/SkipLayerNorm, Gelu and bias
fusions, then Winograd F(4x4, 3x3) for the large 3x3 convolutions (export/winograd.py). The GPU-only
ops (GroupNorm, SkipGroupNorm, BiasSplitGelu, NhwcConv, BiasAdd) stay off because the CPU provider
has no kernels for them, and packed QKV stays off because the CPU ``MultiHeadAttention`` does not
implement it. CUDA: everything, with packed QKV/KV for fp16 like onnxruntime's own Stable Diffusion
pipeline. The fused graph renames and repacks weights, so it is not refittable by name; refit the
portable export instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runtime.errors import InvalidInputError
from .onnx_files import (
    EXTERNAL_DATA_THRESHOLD,
    detach_external_tensors,
    free_name,
    publish,
    reattach_external_tensors,
    staging_dir,
    tensor_bytes,
    write_model,
)
from .winograd import conv_input_sizes, rewrite_convolutions, unet_input_dims

TARGETS = ("cpu", "cuda")


@dataclass
class OptimizedOnnx:
    path: Path
    files: list[Path]
    target: str
    fused_ops: dict[str, int]
    precision: str


def fusion_options(target: str, fp16: bool = False) -> Any:
    """onnxruntime ``FusionOptions`` for a UNet on ``target`` (``cpu`` or ``cuda``)."""
    from onnxruntime.transformers.fusion_options import FusionOptions

    if target not in TARGETS:
        raise InvalidInputError(f"unknown optimization target {target!r}; choose one of {', '.join(TARGETS)}")
    options = FusionOptions("unet")
    gpu = target == "cuda"
    options.enable_group_norm = gpu
    options.enable_skip_group_norm = gpu
    options.enable_bias_splitgelu = gpu
    options.enable_nhwc_conv = gpu
    options.enable_bias_add = gpu
    options.enable_packed_qkv = gpu and fp16
    options.enable_packed_kv = gpu and fp16
    return options


def unet_fusion_model(model: Any) -> Any:
    """onnxruntime's ``UnetOnnxModel`` around ``model``, with its NumPy-2 head-count bug fixed."""
    import numpy as np
    from onnxruntime.transformers.fusion_attention_unet import FusionAttentionUnet
    from onnxruntime.transformers.onnx_model_unet import UnetOnnxModel

    class AttentionFusion(FusionAttentionUnet):
        def get_num_heads(self, reshape_q: Any, is_torch2: bool = False) -> int:
            if not is_torch2:
                return super().get_num_heads(reshape_q, is_torch2)
            parent = self.model.get_parent(reshape_q, 1)
            if parent is not None and parent.op_type == "Concat" and len(parent.input) == 4:
                value = self.model.get_constant_value(parent.input[2])
                if isinstance(value, np.ndarray) and value.size == 1:
                    return int(value.reshape(-1)[0])
            return 0

    class UnetFusionModel(UnetOnnxModel):
        def fuse_multi_head_attention(self, options: Any = None) -> None:
            for cross in (False, True):
                AttentionFusion(self, self.hidden_size, self.num_heads, is_cross_attention=cross,
                                enable_packed_qkv=not cross and (options is None or options.enable_packed_qkv),
                                enable_packed_kv=cross and (options is None or options.enable_packed_kv)).apply()

    return UnetFusionModel(model)


def optimize_unet_onnx(source: str | os.PathLike, target_path: str | os.PathLike, *, target: str = "cpu",
                       fp16: bool = False, winograd: bool | None = None, latent_size: tuple[int, int] = (64, 64),
                       winograd_min_side: int = 16) -> OptimizedOnnx:
    """Fuse ``source`` (an export from export/onnx_export.py) for ``target``; write it to ``target_path``.

    The result uses onnxruntime contrib ops, so it runs on onnxruntime only (TensorRT takes the plain
    export). ``fp16`` converts after fusing, keeping normalisations and the timestep embedding in fp32.
    Large weights stay in the source's ``.data`` file while fusing (onnxruntime's passes copy the whole
    model several times; with the weights in memory an SD1.5 UNet needed over 20 GB) and are streamed
    into the result's file at the end.

    ``winograd`` (default: on for the fp32 CPU target) rewrites the 3x3 convolutions whose feature maps
    are at least ``winograd_min_side`` square at ``latent_size`` (the size to tune for) to Winograd
    F(4x4, 3x3), export/winograd.py. Each rewritten kernel takes 4x its memory: for SD1.5 at 512 px,
    16 rewrites 33 convolutions (+3.3 GB, 1.3x faster), 32 rewrites 22 (+1 GB, 1.15x), 0 turns it off.
    """
    import onnx

    source = Path(source)
    target_path = Path(target_path)
    options = fusion_options(target, fp16)
    model = onnx.load(str(source), load_external_data=False)
    winograd = target == "cpu" and not fp16 and winograd_min_side > 0 if winograd is None else winograd
    sizes = conv_input_sizes(model, unet_input_dims(model, latent_size)) if winograd else {}
    inline_fusion_inputs(model, source.parent, conv_weights=options.enable_nhwc_conv)
    detached = detach_external_tensors(model)
    fusion = unet_fusion_model(model)
    with _quiet_logs():
        if hasattr(fusion, "_optimize"):
            fusion._optimize(options, None)  # the same passes as optimize(), without its tqdm bar
        else:
            fusion.optimize(options)
    fusion.topological_sort()
    _import_contrib_domain(fusion.model)
    model = fusion.model
    if target == "cpu":
        flash_self_attention(model)
    fused = {op: n for op, n in unet_fusion_model(model).get_fused_operator_statistics().items() if n}
    reattach_external_tensors(model, detached)
    with staging_dir(target_path.parent) as spill:
        if sizes:
            count = rewrite_convolutions(model, source.parent, sizes, min_pixels=winograd_min_side**2, spill=spill)
            if count:
                fused["WinogradConv"] = count
        if fp16:
            from .fp16 import convert_unet_to_fp16

            model = convert_unet_to_fp16(model, base_dir=source.parent)
        return _publish(model, target_path, target, fused, "fp16" if fp16 else "fp32", source_dir=source.parent)


def flash_self_attention(model: Any) -> int:
    """Turn self-attention ``Attention`` nodes into QKV MatMul + Split + ``MultiHeadAttention``.

    On the CPU, onnxruntime's ``Attention`` materialises the full softmax matrix (8 x 4096 x 4096 per
    image at 64x64 latents) while ``MultiHeadAttention`` runs its flash kernel; the fusion only emits
    the latter for cross-attention, because the CPU kernel has no packed-QKV form. Here the packed QKV
    projection stays one MatMul and is split into the three separate inputs the CPU kernel takes.
    Returns how many nodes were converted (about 1.2x faster per 4096-token attention here).
    """
    import numpy as np
    from onnx import helper, numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    nodes, added, count = [], [], 0
    replaced_biases: set[str] = set()  # the packed zero biases of converted nodes
    for node in model.graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "Attention" and len(node.input) >= 3 else None
        extra_inputs = [i for i in node.input[3:] if i]
        if weight is None or extra_inputs or len(weight.dims) != 2 or weight.dims[1] % 3:
            nodes.append(node)
            continue
        hidden = int(weight.dims[1]) // 3
        heads = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "num_heads")
        name = node.name or node.output[0]
        sizes = name + "/split_sizes"
        added.append(numpy_helper.from_array(np.array([hidden] * 3, np.int64), sizes))
        replaced_biases.add(node.input[2])
        qkv = [f"{name}/{part}" for part in ("q", "k", "v")]
        attention_inputs = [*qkv]
        bias = initializers.get(node.input[2]) if node.input[2] else None
        if bias is not None and numpy_helper.to_array(bias).any():
            attention_inputs.append(node.input[2])
        nodes += [helper.make_node("MatMul", [node.input[0], node.input[1]], [name + "/qkv"], name=name + "/qkv"),
                  helper.make_node("Split", [name + "/qkv", sizes], qkv, name=name + "/split", axis=-1),
                  helper.make_node("MultiHeadAttention", attention_inputs, list(node.output), name=name + "/mha",
                                   domain="com.microsoft", num_heads=heads)]
        count += 1
    if count:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        used = {name for node in nodes for name in node.input}
        kept = [t for t in model.graph.initializer if t.name in used or t.name not in replaced_biases]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept + added)
    return count


QKV_MATMUL = re.compile(r"/to_[qkv]/MatMul$")
SMALL_TENSOR = 1 << 18  # elements


def inline_fusion_inputs(model: Any, base_dir: Path, conv_weights: bool = False) -> int:
    """Load into the graph only the external tensors the fusions read: q/k/v weights, small tensors and,
    for the NHWC convolution rewrite (``conv_weights``), the convolution weights it transposes."""
    from onnx import TensorProto
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    needed = {node.input[1] for node in model.graph.node if len(node.input) > 1 and (
        (node.op_type == "MatMul" and QKV_MATMUL.search(node.name)) or (conv_weights and node.op_type == "Conv"))}
    count = 0
    for tensor in model.graph.initializer:
        if not uses_external_data(tensor):
            continue
        numel = 1
        for dim in tensor.dims:
            numel *= dim
        if tensor.name in needed or numel < SMALL_TENSOR:
            load_external_data_for_tensor(tensor, str(base_dir))
            tensor.data_location = TensorProto.DEFAULT
            del tensor.external_data[:]
            count += 1
    return count


@contextmanager
def _quiet_logs() -> Iterator[None]:
    """onnxruntime's optimizer and quantizer log advice at WARNING on the root logger; keep errors only."""
    import logging

    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _import_contrib_domain(model: Any) -> None:
    """Declare onnxruntime's ``com.microsoft`` domain, which the fused ops live in (checkers need it)."""
    from onnx import helper

    if any(node.domain == "com.microsoft" for node in model.graph.node) and not any(
            o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def quantize_unet_int8(source: str | os.PathLike, target_path: str | os.PathLike) -> OptimizedOnnx:
    """Dynamic int8 quantization of the constant MatMul weights; activations are quantized at run time.

    Each ``MatMul(x, W)`` becomes onnxruntime's ``DynamicQuantizeMatMul(x, W_int8, scale)`` with one
    symmetric scale per output column. This is what ``onnxruntime.quantization.quantize_dynamic`` emits
    for MatMuls, done one weight at a time: the library's quantizer held 12 GB for an SD1.5 UNet.
    Convolutions stay fp32 (onnxruntime's ConvInteger is slower than its fp32 convolutions on the CPU).
    The error this adds is reported by ``backdrop bench``; int8 is an option, not the fp32 target.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    source = Path(source)
    model = onnx.load(str(source), load_external_data=False)
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    initializers = {t.name: t for t in model.graph.initializer}
    replaced: set[str] = set()
    added = []
    for node in model.graph.node:
        weight = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else ""
        tensor = initializers.get(weight)
        if tensor is None or len(tensor.dims) != 2 or tensor.data_type != onnx.TensorProto.FLOAT or uses[weight] != 1:
            continue
        values = numpy_helper.to_array(tensor, base_dir=str(source.parent))
        scale = np.abs(values).max(axis=0) / 127.0
        scale[scale == 0] = 1.0
        quantized = np.clip(np.rint(values / scale), -127, 127).astype(np.int8)
        added += [numpy_helper.from_array(quantized, weight + "_int8"),
                  numpy_helper.from_array(scale.astype(np.float32), weight + "_scale")]
        node.op_type, node.domain = "DynamicQuantizeMatMul", "com.microsoft"
        node.input[:] = [node.input[0], weight + "_int8", weight + "_scale"]
        replaced.add(weight)
    kept = [t for t in model.graph.initializer if t.name not in replaced]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + added)
    _import_contrib_domain(model)
    return _publish(model, Path(target_path), "cpu", {"DynamicQuantizeMatMul": len(replaced)}, "int8",
                    source_dir=source.parent)


def _publish(model: Any, requested: Path, target: str, fused: dict[str, int], precision: str,
             source_dir: Path | None = None) -> OptimizedOnnx:
    """Write ``model`` (external tensors streamed from ``source_dir``) under a free name next to ``requested``."""
    external = tensor_bytes(model, source_dir) >= EXTERNAL_DATA_THRESHOLD
    final = free_name(requested)
    with staging_dir(final.parent) as stage:
        files = write_model(model, stage / final.name, source_dir, external)
        published = publish(files, final.parent)
    return OptimizedOnnx(path=published[0], files=published, target=target, fused_ops=fused, precision=precision)
