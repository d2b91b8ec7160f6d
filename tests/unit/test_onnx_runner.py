"""The ONNX runner: its config follows Triton's onnxruntime backend's rules, and its model.py answers as
onnxruntime does, batching requests, for every datatype both sides hold. model.py runs here outside Triton,
with the bundled triton_python_backend_utils and stand-ins for the classes the stub adds to it."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import json_format, text_format
from onnx import TensorProto
from tritonclient.grpc import model_config_pb2

from meshserve.launcher.onnx_runner import (
    TEMPLATE,
    OnnxSignature,
    RunnerError,
    RunnerSettings,
    TensorSpec,
    check_config,
    complete_config,
    intra_op_threads,
    is_onnx,
    read_signature,
    render_model_py,
    runner_config,
)
from meshserve.launcher.onnx_runner.render import TEMPLATE_LINE
from services.inference.tritonserver import find_bundled_triton
from tests.unit import onnx_graphs

ModelConfig = model_config_pb2.ModelConfig
ADDER = """
name: "adder"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "a", data_type: TYPE_FP32, dims: [ 3 ] }, { name: "b", data_type: TYPE_FP32, dims: [ 3 ] } ]
output [ { name: "sum", data_type: TYPE_FP32, dims: [ 3 ] }, { name: "best", data_type: TYPE_INT64, dims: [ 1 ] } ]
"""


def config(text: str) -> ModelConfig:
    return text_format.Parse(text, ModelConfig())


def adder_signature() -> OnnxSignature:
    return OnnxSignature(
        (TensorSpec("a", "tensor(float)", (None, 3)), TensorSpec("b", "tensor(float)", (None, 3))),
        (TensorSpec("sum", "tensor(float)", (None, 3)), TensorSpec("best", "tensor(int64)", (None, 1))),
    )


# --- the config ---------------------------------------------------------------------------------------------


def test_read_signature_reads_names_types_and_open_dimensions(tmp_path):
    path = onnx_graphs.save(onnx_graphs.adder(), tmp_path / "model.onnx")
    assert read_signature(path) == adder_signature()


def test_a_config_that_fits_its_file_passes():
    check_config(config(ADDER), adder_signature())
    assert is_onnx(config(ADDER)) and is_onnx(config('backend: "onnxruntime"'))
    assert not is_onnx(config('backend: "python"'))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("TYPE_INT64, dims: [ 1 ]", "TYPE_INT32, dims: [ 1 ]"), "output 'best' is TYPE_INT32 in config.pbtxt but TYPE_INT64"),
        (('name: "b", data_type: TYPE_FP32, dims: [ 3 ]', 'name: "b", data_type: TYPE_FP32, dims: [ 4 ]'),
         "input 'b' has shape [-1, 3] in the ONNX file, but config.pbtxt gives [-1, 4]"),
        (('name: "sum"', 'name: "total"'), "config output 'total' is not an output of the ONNX file; its outputs: 'sum', 'best'"),
        ((', { name: "b", data_type: TYPE_FP32, dims: [ 3 ] }', ""), "the ONNX file's input 'b' is missing from config.pbtxt"),
    ],
)  # fmt: skip
def test_a_config_that_does_not_fit_its_file_is_refused_with_what_to_change(change, message):
    with pytest.raises(RunnerError, match="^" + re.escape(message)):
        check_config(config(ADDER.replace(*change)), adder_signature())


def test_batching_needs_an_open_first_dimension_and_reshape_is_what_the_file_sees():
    fixed = OnnxSignature(
        (TensorSpec("x", "tensor(float)", (2, 3)),), (TensorSpec("y", "tensor(float)", (2, 3)),)
    )
    batched = config('max_batch_size: 4 input { name: "x" data_type: TYPE_FP32 dims: 3 }')
    with pytest.raises(
        RunnerError, match="first dimension of input 'x' is fixed at 2 .* set max_batch_size: 0"
    ):
        check_config(batched, fixed)
    check_config(config('input { name: "x" data_type: TYPE_FP32 dims: [2, 3] }'), fixed)
    flat = OnnxSignature((TensorSpec("x", "tensor(float)", (None,)),), ())
    check_config(
        config('max_batch_size: 4 input { name: "x" data_type: TYPE_FP32 dims: 1 reshape {} }'), flat
    )


def test_inputs_and_outputs_left_out_are_completed_from_the_file():
    completed = complete_config(config('platform: "onnxruntime_onnx" max_batch_size: 8'), adder_signature())
    assert [(t.name, t.data_type, list(t.dims)) for t in completed.input] == [("a", 11, [3]), ("b", 11, [3])]
    assert [(t.name, t.data_type, list(t.dims)) for t in completed.output] == [
        ("sum", 11, [3]),
        ("best", 9, [1]),
    ]
    assert completed.max_batch_size == 8 and not completed.HasField("dynamic_batching")  # as the user set it


def test_an_empty_config_gets_triton_auto_complete_batching_when_every_tensor_can_batch():
    completed = complete_config(ModelConfig(), adder_signature())
    assert completed.max_batch_size == 4 and completed.HasField("dynamic_batching")
    fixed = OnnxSignature(
        (TensorSpec("x", "tensor(float)", (2, None)),), (TensorSpec("y", "tensor(float)", (2,)),)
    )
    completed = complete_config(ModelConfig(), fixed)
    assert completed.max_batch_size == 0 and not completed.HasField("dynamic_batching")
    assert [list(t.dims) for t in (*completed.input, *completed.output)] == [[2, -1], [2]]


def test_a_tensor_of_only_the_batch_dimension_is_completed_as_triton_writes_it():
    signature = OnnxSignature(
        (TensorSpec("x", "tensor(float)", (None, 5)),), (TensorSpec("label", "tensor(int64)", (None,)),)
    )
    (label,) = complete_config(config("max_batch_size: 4"), signature).output
    assert list(label.dims) == [1] and label.HasField("reshape") and list(label.reshape.shape) == []
    check_config(complete_config(config("max_batch_size: 4"), signature), signature)


def test_an_output_triton_cannot_carry_must_be_left_out_of_the_config():
    signature = OnnxSignature(
        (TensorSpec("x", "tensor(float)", (None, 2)),), (TensorSpec("seq", "seq(tensor(float))", ()),)
    )
    with pytest.raises(
        RunnerError, match=r"output 'seq' is seq\(tensor\(float\)\), not a tensor .* zipmap off"
    ):
        complete_config(config("max_batch_size: 2"), signature)


def test_the_runner_config_names_the_python_backend_and_keeps_everything_else():
    user = config(
        ADDER
        + """
        default_model_filename: "adder.onnx"
        version_policy { specific { versions: [1, 3] } }
        dynamic_batching { max_queue_delay_microseconds: 100 default_queue_policy { timeout_action: REJECT max_queue_size: 9 } }
        instance_group [ { count: 2, kind: KIND_CPU } ]
        parameters { key: "intra_op_thread_count" value { string_value: "2" } }
        optimization { execution_accelerators { cpu_execution_accelerator { name: "openvino" } } }
        """
    )
    runner = runner_config(user)
    assert runner.backend == "python" and not runner.platform and not runner.default_model_filename
    assert not runner.HasField("optimization")
    kept = ModelConfig()
    kept.CopyFrom(user)
    for name in ("platform", "default_model_filename", "optimization"):
        kept.ClearField(name)
    kept.backend = "python"
    assert runner == kept
    assert intra_op_threads(user) == 2 and intra_op_threads(config(ADDER)) == 1


def test_a_thread_count_that_is_not_a_number_is_refused():
    with pytest.raises(RunnerError, match="intra_op_thread_count must be a whole number >= 0, not 'many'"):
        intra_op_threads(config('parameters { key: "intra_op_thread_count" value { string_value: "many" } }'))


# --- the generated model.py -------------------------------------------------------------------------------------


class FakeTritonError(Exception):
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message: str, code: str = "INTERNAL"):
        super().__init__(message)
        self.code = code


class FakeTensor:
    def __init__(self, name: str, array: np.ndarray):
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class FakeResponse:
    def __init__(self, output_tensors=None, error=None):
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors or []}
        self.error = error


class FakeRequest:
    def __init__(self, **arrays: np.ndarray):
        self._inputs = [FakeTensor(name, array) for name, array in arrays.items()]

    def inputs(self) -> list[FakeTensor]:
        return self._inputs


@pytest.fixture
def pb_utils(monkeypatch) -> types.ModuleType:
    """The bundled triton_python_backend_utils, with stand-ins for what the stub adds to it."""
    spec = importlib.util.spec_from_file_location(
        "triton_python_backend_utils", find_bundled_triton().python_backend_utils
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.Tensor, module.InferenceResponse, module.TritonError = FakeTensor, FakeResponse, FakeTritonError
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    return module


def load_runner(pb_utils, tmp_path: Path, onnx_model, model_config: ModelConfig, settings=None):
    """The rendered model.py in a version directory beside the ONNX file, initialized as Triton would."""
    settings = settings or RunnerSettings()
    version = tmp_path / "model" / "1"
    onnx_graphs.save(onnx_model, version / settings.onnx_file)
    (version / "model.py").write_text(render_model_py(settings))
    spec = importlib.util.spec_from_file_location(f"runner_{id(model_config)}", version / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    args = {
        "model_config": json.dumps(json_format.MessageToDict(model_config, preserving_proto_field_name=True)),
        "model_repository": str(tmp_path / "model"),
        "model_version": "1",
        "model_instance_kind": "CPU",
    }
    model.initialize(args)
    return model


def count_runs(model) -> list:
    runs = []
    real = model.session.run
    model.session = types.SimpleNamespace(run=lambda *a: runs.append(a) or real(*a))
    return runs


def test_rendered_copies_differ_from_the_template_only_in_the_runner_line():
    template = TEMPLATE.read_text()
    assert template.count(TEMPLATE_LINE) == 1
    rendered = render_model_py(RunnerSettings(onnx_file="adder.onnx", intra_op_threads=2))
    assert rendered == template.replace(
        TEMPLATE_LINE, 'RUNNER = {"onnx_file": "adder.onnx", "intra_op_threads": 2}'
    )
    assert render_model_py(RunnerSettings()) == template


def test_requests_that_agree_but_for_the_batch_run_once_and_each_gets_its_own_rows(pb_utils, tmp_path):
    model = load_runner(pb_utils, tmp_path, onnx_graphs.adder(), config(ADDER))
    runs = count_runs(model)
    rng = np.random.default_rng(1)
    rows = [rng.normal(size=(n, 6)).astype(np.float32) for n in (1, 3, 2)]
    responses = model.execute([FakeRequest(a=r[:, :3], b=r[:, 3:]) for r in rows])
    assert len(runs) == 1
    session = ort.InferenceSession(onnx_graphs.adder().SerializeToString())
    for r, response in zip(rows, responses, strict=True):
        total, best = session.run(["sum", "best"], {"a": r[:, :3], "b": r[:, 3:]})
        assert response.error is None
        np.testing.assert_array_equal(response.outputs["sum"], total)
        np.testing.assert_array_equal(response.outputs["best"], best)
        assert response.outputs["sum"].dtype == np.float32 and response.outputs["best"].dtype == np.int64


def test_requests_of_other_shapes_run_apart_and_without_batching_each_runs_alone(pb_utils, tmp_path):
    open_width = config('max_batch_size: 4 input { name: "x" data_type: TYPE_FP32 dims: -1 } '
                        'output { name: "y" data_type: TYPE_FP32 dims: -1 }')  # fmt: skip
    model = load_runner(
        pb_utils, tmp_path / "open", onnx_graphs.identity(TensorProto.FLOAT, ["n", "w"]), open_width
    )
    runs = count_runs(model)
    arrays = [np.ones((1, 2), np.float32), np.ones((1, 3), np.float32), np.zeros((2, 2), np.float32)]
    responses = model.execute([FakeRequest(x=a) for a in arrays])
    assert len(runs) == 2  # widths 2 (stacked) and 3
    for array, response in zip(arrays, responses, strict=True):
        np.testing.assert_array_equal(response.outputs["y"], array)

    unbatched = config('input { name: "x" data_type: TYPE_FP32 dims: [2, 2] } '
                       'output { name: "y" data_type: TYPE_FP32 dims: [2, 2] }')  # fmt: skip
    model = load_runner(
        pb_utils, tmp_path / "fixed", onnx_graphs.identity(TensorProto.FLOAT, [2, 2]), unbatched
    )
    runs = count_runs(model)
    model.execute([FakeRequest(x=np.eye(2, dtype=np.float32)), FakeRequest(x=np.ones((2, 2), np.float32))])
    assert len(runs) == 2


DATATYPES = [
    ("TYPE_BOOL", TensorProto.BOOL, np.array([[True, False]])),
    ("TYPE_UINT8", TensorProto.UINT8, np.array([[0, 255]], np.uint8)),
    ("TYPE_INT8", TensorProto.INT8, np.array([[-128, 127]], np.int8)),
    ("TYPE_INT32", TensorProto.INT32, np.array([[-(2**31), 2**31 - 1]], np.int32)),
    ("TYPE_INT64", TensorProto.INT64, np.array([[-(2**63), 2**63 - 1]], np.int64)),
    ("TYPE_FP16", TensorProto.FLOAT16, np.array([[0.5, -65504]], np.float16)),
    ("TYPE_FP32", TensorProto.FLOAT, np.array([[1.5, -3.25]], np.float32)),
    ("TYPE_FP64", TensorProto.DOUBLE, np.array([[1e300, -1e-300]], np.float64)),
    ("TYPE_STRING", TensorProto.STRING, np.array([["héllo".encode(), b""]], dtype=object)),
]


@pytest.mark.parametrize(("triton_type", "onnx_type", "values"), DATATYPES, ids=[d[0] for d in DATATYPES])
def test_every_datatype_reaches_onnxruntime_and_comes_back_as_triton_sends_it(
    pb_utils, tmp_path, triton_type, onnx_type, values
):
    tensors = f"data_type: {triton_type} dims: 2"
    model_config = config(
        f'max_batch_size: 4 input {{ name: "x" {tensors} }} output {{ name: "y" {tensors} }}'
    )
    model = load_runner(pb_utils, tmp_path, onnx_graphs.identity(onnx_type), model_config)
    check_config(model_config, read_signature(tmp_path / "model" / "1" / "model.onnx"))
    twice = np.concatenate([values, values])
    first, second = model.execute([FakeRequest(x=values), FakeRequest(x=twice)])
    for response, sent in ((first, values), (second, twice)):
        assert response.error is None
        got = response.outputs["y"]
        assert got.dtype == pb_utils.triton_string_to_numpy(triton_type)
        assert got.tolist() == sent.tolist()  # strings come back as bytes, as Triton sends BYTES


def test_a_failed_run_is_an_error_for_its_callers_only_and_the_next_request_succeeds(pb_utils, tmp_path):
    model = load_runner(pb_utils, tmp_path, onnx_graphs.adder(), config(ADDER))
    good = FakeRequest(a=np.ones((1, 3), np.float32), b=np.ones((1, 3), np.float32))
    wrong_width = FakeRequest(a=np.ones((1, 2), np.float32), b=np.ones((1, 2), np.float32))
    ok, bad = model.execute([good, wrong_width])
    assert ok.error is None and bad.error.code == "INVALID_ARG" and "onnxruntime failed" in str(bad.error)
    (again,) = model.execute([good])
    np.testing.assert_array_equal(again.outputs["sum"], [[2, 2, 2]])


def test_the_rendered_file_name_and_thread_count_are_what_the_session_uses(pb_utils, tmp_path):
    settings = RunnerSettings(onnx_file="adder.onnx", intra_op_threads=2)
    model = load_runner(pb_utils, tmp_path, onnx_graphs.adder(), config(ADDER), settings)
    assert model.session.get_session_options().intra_op_num_threads == 2
    assert model.session.get_providers() == ["CPUExecutionProvider"]
