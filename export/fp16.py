"""fp16 conversion of a UNet graph that keeps the numerically fragile parts in fp32.

Uses onnxruntime's converter (``onnxruntime.transformers``; onnxconverter-common is not needed) with
symbolic shape inference, which also works above 2 GiB and on graphs with onnxruntime's fused ops.
Kept in fp32: the sinusoidal timestep embedding (fp16 cannot represent ``t * freq`` for t near 1000
precisely enough, so sin/cos would be wrong), normalisation statistics (InstanceNormalization inside
GroupNorm, LayerNormalization, the fused norms) and the converter's default list. Inputs and outputs
stay fp32, so callers feed the same tensors to every precision.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .onnx_files import detach_external_tensors, inline_external_tensors, reattach_external_tensors

if TYPE_CHECKING:
    import onnx

UNET_FP32_OPS = ("InstanceNormalization", "LayerNormalization", "SkipLayerNormalization", "GroupNorm",
                 "SkipGroupNorm", "Sin", "Cos", "Exp", "Pow", "Sqrt", "ReduceMean")
FP32_SCOPES = ("/time_proj/", "/add_time_proj/")


def fp32_node_names(model: onnx.ModelProto) -> list[str]:
    """Nodes of the timestep / micro-conditioning embeddings, which must stay fp32."""
    return [node.name for node in model.graph.node if any(scope in node.name for scope in FP32_SCOPES)]


def convert_unet_to_fp16(model: onnx.ModelProto, base_dir: str | Path | None = None) -> onnx.ModelProto:
    """An fp16 copy of ``model`` with fp32 inputs/outputs and the fragile ops above kept in fp32.

    Types come from symbolic shape inference run before the weights are loaded (external tensors are
    read from ``base_dir`` only for the conversion itself), so a large UNet is not copied with its weights.
    """
    from onnx.external_data_helper import uses_external_data
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    detached = detach_external_tensors(model)  # symbolic inference would try to read them
    add_value_types(model)
    reattach_external_tensors(model, detached)
    if any(uses_external_data(t) for t in model.graph.initializer):
        inline_external_tensors(model, Path(base_dir) if base_dir else None)
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True,
                                         op_block_list=[*DEFAULT_OP_BLOCK_LIST, *UNET_FP32_OPS],
                                         node_block_list=fp32_node_names(model))
    wrapper = OnnxModel(converted)
    wrapper.remove_cascaded_cast_nodes()
    drop_duplicate_casts(wrapper.model)
    wrapper.topological_sort()  # the converter appends its casts at the end of the node list
    return wrapper.model


def add_value_types(model: onnx.ModelProto) -> None:
    """Record every tensor's element type (not shape) in ``value_info``, from symbolic shape inference."""
    from onnx import TensorProto, ValueInfoProto
    from onnxruntime.transformers.shape_infer_helper import SymbolicShapeInferenceHelper

    inferred = SymbolicShapeInferenceHelper(model).infer_shapes(model, auto_merge=True, guess_output_rank=False)
    if inferred is None:
        return
    known = {vi.name for vi in model.graph.value_info}
    for vi in inferred.graph.value_info:
        if vi.name in known or not vi.name or vi.type.tensor_type.elem_type == TensorProto.UNDEFINED:
            continue
        typed = ValueInfoProto()
        typed.CopyFrom(vi)
        typed.type.tensor_type.ClearField("shape")
        model.graph.value_info.append(typed)


def drop_duplicate_casts(model: onnx.ModelProto) -> int:
    """Remove the converter's repeated Cast nodes; returns how many.

    When one fp16 tensor feeds two fp32-blocked nodes, onnxruntime's converter inserts the same
    ``<name>_cast_to_fp32`` Cast twice, which breaks single assignment. The copies are identical
    (same input, same target type), so keeping the first is exact.
    """
    seen: dict[str, tuple] = {}
    duplicates = []
    for node in model.graph.node:
        if node.op_type != "Cast" or len(node.output) != 1:
            continue
        signature = (tuple(node.input), tuple((a.name, a.i) for a in node.attribute))
        if node.output[0] in seen and seen[node.output[0]] == signature:
            duplicates.append(node)
        else:
            seen.setdefault(node.output[0], signature)
    for node in duplicates:
        model.graph.node.remove(node)
    return len(duplicates)
