"""The python-backend config.pbtxt that serves an ONNX model through the generated runner.

Triton's onnxruntime backend checks a model's config against the ONNX file when it loads it, and fills in what
the config leaves out (auto-complete). The bundled Triton has no such backend, so these functions do both before
Triton starts, with the same rules: a model they refuse is one Triton's onnxruntime backend would refuse too, and
the message says what to change. Everything the config says about serving (name, batching, instances, versions,
queue policy) is kept; only what names the backend and its files changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from tritonclient.grpc import model_config_pb2

from meshserve.launcher.onnx_runner.signature import OnnxSignature, TensorSpec

__all__ = [
    "DEFAULT_ONNX_FILE",
    "ONNX_PLATFORM",
    "RunnerError",
    "check_config",
    "complete_config",
    "intra_op_threads",
    "is_onnx",
    "onnx_file_name",
    "runner_config",
]

ModelConfig = model_config_pb2.ModelConfig
DataType = model_config_pb2.DataType

ONNX_PLATFORM = "onnxruntime_onnx"
ONNX_BACKEND = "onnxruntime"
DEFAULT_ONNX_FILE = "model.onnx"
# Triton's --backend-config=default-max-batch-size, used when it auto-completes a model that can batch
AUTOCOMPLETE_MAX_BATCH_SIZE = 4
INTRA_OP_THREADS = "intra_op_thread_count"  # the onnxruntime backend's parameter; the runner honours it
DEFAULT_INTRA_OP_THREADS = 1  # Triton batches the requests already; leave the other cores to the server


class RunnerError(ValueError):
    """Why an ONNX model cannot be served through the runner; the message says what to change."""


def is_onnx(config: ModelConfig) -> bool:
    return config.platform == ONNX_PLATFORM or config.backend == ONNX_BACKEND


def onnx_file_name(config: ModelConfig) -> str:
    return config.default_model_filename or DEFAULT_ONNX_FILE


def intra_op_threads(config: ModelConfig) -> int:
    """onnxruntime's intra-op threads for this model: its `intra_op_thread_count` parameter, else one
    (0 lets onnxruntime choose, as in Triton)."""
    if INTRA_OP_THREADS not in config.parameters:
        return DEFAULT_INTRA_OP_THREADS
    text = config.parameters[INTRA_OP_THREADS].string_value
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise RunnerError(f"parameter {INTRA_OP_THREADS} must be a whole number >= 0, not {text!r}")
    return value


def _batch_dim_open(spec: TensorSpec) -> bool:
    return len(spec.shape) > 0 and spec.shape[0] is None


def _tensor_dims(spec: TensorSpec, batching: bool, role: str) -> list[int]:
    if spec.data_type is None:
        raise RunnerError(
            f"{role} {spec.name!r} is {spec.onnx_type}, not a tensor Triton can carry: list the {role}s to "
            f"serve in config.pbtxt (for a scikit-learn classifier, export with zipmap off)"
        )
    if not spec.shape:
        raise RunnerError(f"{role} {spec.name!r} has no shape in the ONNX file: list it in config.pbtxt")
    shape = spec.shape[1:] if batching else spec.shape
    return [-1 if d is None else d for d in shape]


def complete_config(config: ModelConfig, signature: OnnxSignature) -> ModelConfig:
    """A copy of `config` with the inputs and outputs it leaves out read from the ONNX file, as Triton's
    auto-complete does: a config with neither, and max_batch_size 0, gets max_batch_size 4 and a dynamic batcher
    when every tensor of the file has an open first (batch) dimension."""
    completed = ModelConfig()
    completed.CopyFrom(config)
    if not config.input and not config.output and config.max_batch_size == 0:
        tensors = (*signature.inputs, *signature.outputs)
        if tensors and all(_batch_dim_open(t) for t in tensors):
            completed.max_batch_size = AUTOCOMPLETE_MAX_BATCH_SIZE
            if completed.WhichOneof("scheduling_choice") is None:
                completed.dynamic_batching.SetInParent()
    batching = completed.max_batch_size > 0
    if not config.input:
        for spec in signature.inputs:
            _add_tensor(completed.input, spec, batching, "input")
    if not config.output:
        for spec in signature.outputs:
            _add_tensor(completed.output, spec, batching, "output")
    return completed


def _add_tensor(tensors, spec: TensorSpec, batching: bool, role: str) -> None:
    dims = _tensor_dims(spec, batching, role)
    tensor = tensors.add(name=spec.name, data_type=spec.data_type, dims=dims or [1])
    if not dims:  # only a batch dimension: Triton's way to say so is dims [1] seen as [] by the model
        tensor.reshape.SetInParent()


def _check_tensor(
    tensor, spec: TensorSpec | None, specs: Sequence[TensorSpec], batching: bool, role: str
) -> None:
    if spec is None:
        names = ", ".join(repr(s.name) for s in specs) or "none"
        raise RunnerError(
            f"config {role} {tensor.name!r} is not an {role} of the ONNX file; its {role}s: {names}"
        )
    if spec.data_type is None:
        raise RunnerError(f"{role} {spec.name!r} is {spec.onnx_type}, which Triton cannot carry")
    if spec.data_type != tensor.data_type:
        raise RunnerError(
            f"{role} {tensor.name!r} is {DataType.Name(tensor.data_type)} in config.pbtxt but "
            f"{spec.type_name()} in the ONNX file"
        )
    if not spec.shape:
        return  # onnxruntime does not know the rank: nothing to compare
    dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
    if batching:
        if spec.shape[0] is not None:
            raise RunnerError(
                f"max_batch_size is above 0 but the first dimension of {role} {tensor.name!r} is fixed at "
                f"{spec.shape[0]} in the ONNX file: set max_batch_size: 0, or export with an open batch dimension"
            )
        dims = [-1, *dims]
    mismatch = len(dims) != len(spec.shape) or any(
        d != s for d, s in zip(dims, spec.shape, strict=False) if d != -1 and s is not None
    )
    if mismatch:
        model_shape = [-1 if s is None else s for s in spec.shape]
        raise RunnerError(
            f"{role} {tensor.name!r} has shape {model_shape} in the ONNX file, but config.pbtxt gives {dims}"
            + (" (with the batch dimension)" if batching else "")
        )


def check_config(config: ModelConfig, signature: OnnxSignature) -> None:
    """RunnerError when `config` does not fit the ONNX file: an input or output it lacks, another datatype or
    shape, a batch dimension it cannot have, or one of its inputs left out of the config."""
    batching = config.max_batch_size > 0
    inputs = {spec.name: spec for spec in signature.inputs}
    outputs = {spec.name: spec for spec in signature.outputs}
    for tensor in config.input:
        _check_tensor(tensor, inputs.get(tensor.name), signature.inputs, batching, "input")
    for tensor in config.output:
        _check_tensor(tensor, outputs.get(tensor.name), signature.outputs, batching, "output")
    missing = [name for name in inputs if name not in {t.name for t in config.input}]
    if missing:
        raise RunnerError(f"the ONNX file's input {missing[0]!r} is missing from config.pbtxt")


def runner_config(config: ModelConfig) -> ModelConfig:
    """The config Triton gets for the runner: python backend, everything else as the user wrote it. The fields
    that name onnxruntime's files or accelerators go; the runner gets its file name and threads rendered in."""
    runner = ModelConfig()
    runner.CopyFrom(config)
    runner.ClearField("platform")
    runner.backend = "python"
    runner.ClearField("runtime")
    runner.ClearField("default_model_filename")  # for the python backend it would name the .py file
    runner.ClearField("cc_model_filenames")
    runner.optimization.ClearField("execution_accelerators")  # TensorRT/OpenVINO for onnxruntime: not here
    if runner.optimization.ByteSize() == 0:
        runner.ClearField("optimization")
    return runner
