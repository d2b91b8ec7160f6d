"""What an ONNX file takes and returns, read with onnxruntime: the tensors' names, Triton datatypes and shapes.

onnxruntime (a runtime dependency) rather than the `onnx` package (an optional extra) reads the file, the same
way the runner will load it, so a file that reads here also loads there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2

__all__ = ["ONNX_TO_TRITON", "OnnxSignature", "TensorSpec", "read_signature"]

DataType = model_config_pb2.DataType

# onnxruntime's type strings -> Triton datatypes, for the types both sides (and numpy, in the python backend) hold.
ONNX_TO_TRITON: dict[str, int] = {
    "tensor(bool)": DataType.TYPE_BOOL,
    "tensor(uint8)": DataType.TYPE_UINT8,
    "tensor(uint16)": DataType.TYPE_UINT16,
    "tensor(uint32)": DataType.TYPE_UINT32,
    "tensor(uint64)": DataType.TYPE_UINT64,
    "tensor(int8)": DataType.TYPE_INT8,
    "tensor(int16)": DataType.TYPE_INT16,
    "tensor(int32)": DataType.TYPE_INT32,
    "tensor(int64)": DataType.TYPE_INT64,
    "tensor(float16)": DataType.TYPE_FP16,
    "tensor(float)": DataType.TYPE_FP32,
    "tensor(double)": DataType.TYPE_FP64,
    "tensor(string)": DataType.TYPE_STRING,
}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    onnx_type: str  # e.g. "tensor(float)", or "seq(map(int64,tensor(float)))" for a ZipMap output
    shape: tuple[int | None, ...]  # None: a dimension the file leaves open (unknown or symbolic)

    @property
    def data_type(self) -> int | None:
        """The Triton datatype, or None when the python backend cannot carry this type."""
        return ONNX_TO_TRITON.get(self.onnx_type)

    def type_name(self) -> str:
        return DataType.Name(self.data_type) if self.data_type is not None else self.onnx_type


@dataclass(frozen=True, slots=True)
class OnnxSignature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def _spec(arg) -> TensorSpec:
    # onnxruntime reports a symbolic dimension as its name (a str) and an unknown one as None
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or ()))
    return TensorSpec(arg.name, arg.type, shape)


def read_signature(path: Path) -> OnnxSignature:
    """The inputs and outputs of the ONNX file at `path`; onnxruntime's own error when it cannot load it."""
    import onnxruntime as ort  # imported here: loading it costs ~0.3 s, and only ONNX models need it

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # only the signature
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # errors only: warnings about unused initializers are noise here
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return OnnxSignature(
        tuple(_spec(arg) for arg in session.get_inputs()), tuple(_spec(arg) for arg in session.get_outputs())
    )
