"""ONNX models on the bundled Triton, which has only the python backend: each becomes a python-backend model
that runs the same ONNX file with onnxruntime, under the same config (names, batching, instances, versions)."""

from meshserve.launcher.onnx_runner.config import (
    ONNX_PLATFORM,
    RunnerError,
    check_config,
    complete_config,
    intra_op_threads,
    is_onnx,
    onnx_file_name,
    runner_config,
)
from meshserve.launcher.onnx_runner.render import TEMPLATE, RunnerSettings, render_model_py
from meshserve.launcher.onnx_runner.signature import OnnxSignature, TensorSpec, read_signature

__all__ = [
    "ONNX_PLATFORM",
    "TEMPLATE",
    "OnnxSignature",
    "RunnerError",
    "RunnerSettings",
    "TensorSpec",
    "check_config",
    "complete_config",
    "intra_op_threads",
    "is_onnx",
    "onnx_file_name",
    "read_signature",
    "render_model_py",
    "runner_config",
]
