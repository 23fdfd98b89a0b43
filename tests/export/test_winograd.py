"""Winograd F(4x4, 3x3): exact algebra, onnxruntime parity at any size, and only eligible convolutions rewritten."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from comfyui_backdrop.export.winograd import conv_input_sizes, rewrite_convolutions, winograd_matrices


def test_matrices_compute_the_correlation_exactly():
    a_t, g, b_t = winograd_matrices()
    rng = np.random.default_rng(0)
    for _ in range(5):
        d, w = rng.standard_normal(6), rng.standard_normal(3)
        expected = np.array([d[k:k + 3] @ w for k in range(4)])
        assert np.allclose(a_t @ ((g @ w) * (b_t @ d)), expected, atol=1e-12)
    assert np.array_equal(b_t * 2, np.round(b_t * 2))  # dyadic: exact in fp32
    with pytest.raises(ValueError, match="distinct"):
        winograd_matrices((Fraction(0), Fraction(1), Fraction(1), Fraction(2), Fraction(3)))


def conv_model(kernel=3, stride=1, channels=(32, 48), group=1, pads=1):
    c, k = channels
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((k, c // group, kernel, kernel)) / np.sqrt(c * kernel * kernel)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", kernel_shape=[kernel, kernel],
                            strides=[stride, stride], pads=[pads] * 4, group=group)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", k, "h2", "w2"])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_rewritten_convolution_matches_at_any_size(tmp_path):
    model = conv_model()
    direct = session(model)
    sizes = conv_input_sizes(model, {"x": [2, 32, 16, 16]})
    assert sizes == {"conv": (16, 16)}
    assert rewrite_convolutions(model, None, sizes, min_pixels=256, spill=tmp_path) == 1
    assert "Conv" not in {n.op_type for n in model.graph.node}
    rng = np.random.default_rng(2)
    fast = None
    for shape in [(2, 32, 16, 16), (1, 32, 10, 14), (3, 32, 4, 8), (1, 32, 5, 3)]:  # sides not multiples of 4 too
        x = rng.standard_normal(shape).astype(np.float32)
        ref = direct.run(None, {"x": x})[0]
        fast = fast or _from_spill(model)
        out = fast.run(None, {"x": x})[0]
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-5


def _from_spill(model):
    """Load the spilled kernels back in (the spill file is private to write_model) and open a session."""
    from comfyui_backdrop.export.onnx_files import inline_external_tensors

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inline_external_tensors(copy, None)
    onnx.checker.check_model(copy, full_check=True)
    return session(copy)


@pytest.mark.parametrize(("kwargs", "sized", "why"), [
    ({"stride": 2}, (16, 16), "stride 2"),
    ({"kernel": 1, "pads": 0}, (16, 16), "1x1"),
    ({"group": 2}, (16, 16), "grouped"),
    ({"channels": (8, 48)}, (16, 16), "too few channels"),
    ({}, (8, 8), "map too small"),
])
def test_ineligible_convolutions_stay_direct(kwargs, sized, why):
    model = conv_model(**kwargs)
    sizes = {"conv": sized} if kwargs.get("kernel", 3) == 3 and kwargs.get("stride", 1) == 1 and "group" not in kwargs \
        else conv_input_sizes(model, {"x": [1, model.graph.input[0].type.tensor_type.shape.dim[1].dim_value, 16, 16]})
    assert rewrite_convolutions(model, None, sizes, min_pixels=256) == 0, why
    assert [n.op_type for n in model.graph.node] == ["Conv"]
