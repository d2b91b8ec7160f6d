"""Small ONNX graphs built with onnx's helper API, for the ONNX runner's and the served repository's tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx
from onnx import TensorProto, helper

__all__ = ["adder", "identity", "save", "sequence_output"]

Shape = Sequence[int | str | None] | None


def _model(nodes, inputs, outputs) -> onnx.ModelProto:
    model = helper.make_model(
        helper.make_graph(nodes, "test", inputs, outputs), opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8  # what the installed onnxruntime reads, whatever onnx writes by default
    onnx.checker.check_model(model)
    return model


def adder(width: int = 3, batch: int | str | None = "batch") -> onnx.ModelProto:
    """sum = a + b (FP32 [batch, width]); best = argmax(sum) per row (INT64 [batch, 1])."""
    a, b = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [batch, width]) for n in "ab")
    total = helper.make_tensor_value_info("sum", TensorProto.FLOAT, [batch, width])
    best = helper.make_tensor_value_info("best", TensorProto.INT64, [batch, 1])
    nodes = [
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("ArgMax", ["sum"], ["best"], axis=1, keepdims=1),
    ]
    return _model(nodes, [a, b], [total, best])


def identity(elem_type: int, shape: Shape = ("batch", 2)) -> onnx.ModelProto:
    """y = x, of any element type."""
    x = helper.make_tensor_value_info("x", elem_type, shape)
    y = helper.make_tensor_value_info("y", elem_type, shape)
    return _model([helper.make_node("Identity", ["x"], ["y"])], [x], [y])


def sequence_output() -> onnx.ModelProto:
    """An output that is a sequence, not a tensor (like skl2onnx's ZipMap): no Triton datatype holds it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])
    seq = helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)
    return _model([helper.make_node("SequenceConstruct", ["x"], ["seq"])], [x], [seq])


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
