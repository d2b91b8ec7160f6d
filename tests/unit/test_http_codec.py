"""The REST codec against what tritonclient.http itself builds and parses: a REST request becomes the
ModelInferRequest tritonclient.grpc would send for the same tensors, and our replies parse with InferResult."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as http
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import serialize_byte_tensor

from gateway.api.http_codec import (
    ReplyForm,
    cuda_register_request,
    decode_infer_request,
    decode_raw_infer_request,
    encode_infer_response,
    load_request,
    log_settings_json,
    log_settings_request,
    message_json,
    repository_index_json,
    shared_memory_status_json,
    system_register_request,
    trace_setting_json,
    trace_setting_request,
    unload_request,
)
from gateway.serving.batching import merge_key
from meshserve.core.errors import ErrorCode, InvalidArgument, MeshError

ROWS = np.array([[250.0, 3, 80.0, 2, 400], [4800.0, 7, 35.0, 19, 3]], dtype=np.float32)
COUNTS = np.array([[1, -2], [3, 2**40]], dtype=np.int64)
WORDS = np.array([["héllo"], ["wörld"]], dtype=np.object_)
FLAGS = np.array([True, False], dtype=np.bool_)


def http_input(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> http.InferInput:
    tensor = http.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def raw_bytes(array: np.ndarray) -> bytes:
    return serialize_byte_tensor(array).item() if array.dtype == np.object_ else array.tobytes()


def decode(inputs, outputs=None, model="fraud", version="", **options):
    body, header_length = http.InferenceServerClient.generate_request_body(inputs, outputs, **options)
    return decode_infer_request(body, header_length, model, version)


def test_binary_and_json_inputs_become_the_request_tritonclient_grpc_sends():
    tensors = [("features", ROWS, "FP32", True), ("counts", COUNTS, "INT64", False),
               ("words", WORDS, "BYTES", False), ("flags", FLAGS, "BOOL", False), ("raw_words", WORDS, "BYTES", True)]  # fmt: skip
    call = decode(
        [http_input(name, array, datatype, binary) for name, array, datatype, binary in tensors],
        [http.InferRequestedOutput("score"), http.InferRequestedOutput("label", binary_data=False, class_count=2)],
        model="fraud", version="2", request_id="r-1", sequence_id=7, sequence_start=True, priority=3,
        timeout=250_000, parameters={"tag": "a", "n": 5, "f": 0.5, "b": True},
    )  # fmt: skip

    expected = service_pb2.ModelInferRequest(model_name="fraud", model_version="2", id="r-1")
    for name, array, datatype, _ in tensors:
        expected.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        expected.raw_input_contents.append(raw_bytes(array))
    expected.outputs.add(name="score")
    expected.outputs.add(name="label").parameters["classification"].int64_param = 2
    parameters = expected.parameters
    parameters["sequence_id"].int64_param = 7
    parameters["sequence_start"].bool_param = True
    parameters["sequence_end"].bool_param = False
    parameters["priority"].uint64_param = 3
    parameters["timeout"].int64_param = 250_000
    parameters["tag"].string_param = "a"
    parameters["n"].int64_param = 5
    parameters["f"].double_param = 0.5
    parameters["b"].bool_param = True
    assert call.request == expected
    assert call.time_left_s == pytest.approx(0.25)
    assert call.reply_form.wants_binary("score") and not call.reply_form.wants_binary("label")


def test_without_requested_outputs_every_output_comes_back_binary_and_there_is_no_deadline():
    call = decode([http_input("features", ROWS, "FP32")])
    assert call.reply_form.wants_binary("score") and call.time_left_s is None
    assert not call.request.parameters and not call.request.outputs  # binary_data_output stays in the codec
    assert not call.request.inputs[0].parameters  # so is binary_data_size: the request can merge with others


@pytest.mark.parametrize("binary", [True, False])
def test_a_rest_request_merges_with_the_same_request_over_grpc(binary):
    """Whatever form the REST caller used, the gateway may put its rows in one Triton request with gRPC
    callers': the same merge key as tritonclient.grpc's request (typed contents aside)."""
    rest = decode([http_input("features", ROWS, "FP32", binary)], timeout=5_000, model="fraud")
    grpc_request = service_pb2.ModelInferRequest(model_name="fraud", raw_input_contents=[ROWS.tobytes()])
    grpc_request.inputs.add(name="features", datatype="FP32", shape=[2, 5])
    assert merge_key(rest.request) is not None and merge_key(rest.request) == merge_key(grpc_request)


def test_nested_and_flat_json_data_are_the_same_tensor():
    nested = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, 4]]}]}
    flat = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT32", "data": [1, 2, 3, 4]}]}
    one, two = (decode_infer_request(json.dumps(d).encode(), None, "m", "") for d in (nested, flat))
    assert one.request == two.request
    assert one.request.raw_input_contents[0] == np.array([1, 2, 3, 4], np.int32).tobytes()


def test_shared_memory_inputs_pass_their_region_on_and_carry_no_data():
    tensor = http.InferInput("features", [2, 5], "FP32")
    tensor.set_shared_memory("region-a", 40, offset=8)
    call = decode([tensor])
    (sent,) = call.request.inputs
    assert sent.parameters["shared_memory_region"].string_param == "region-a"
    assert sent.parameters["shared_memory_byte_size"].int64_param == 40
    assert sent.parameters["shared_memory_offset"].int64_param == 8
    assert not call.request.raw_input_contents


def _document(data=None, shape=(2, 2), datatype="INT32", **tensor) -> bytes:
    entry = {"name": "x", "shape": list(shape), "datatype": datatype, **tensor}
    if data is not None:
        entry["data"] = data
    return json.dumps({"inputs": [entry]}).encode()


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (_document([1, 2, 3]), None, "input 'x': 3 values in data for shape [2, 2] (expects 4)"),
        (_document([1, 2, 3.5, 4]), None, "input 'x': INT32 data must be integers"),
        (_document([1, 2, True, 4], datatype="INT64"), None, "input 'x': INT64 data must be integers"),
        (_document(["1", 2, 3, 4], datatype="FP32"), None, "input 'x': FP32 data must be numbers"),
        (_document([1, 0, 1, 0], datatype="BOOL"), None, "input 'x': BOOL data must be true or false"),
        (_document([1, 2, 3, 4], datatype="BYTES"), None, "input 'x': BYTES data must be strings"),
        (_document([1, 2, 300, 4], datatype="INT8"), None, "input 'x': a value is outside the INT8 range"),
        (_document([1, 2, 1e39, 4], datatype="FP32"), None, "input 'x': a value is outside the FP32 range"),
        (_document([1, 2, 3, 4], datatype="FP16"), None, "input 'x': FP16 data travels only in binary"),
        (_document([1, 2, 3, 4], datatype="WORD"), None, "input 'x': unknown datatype 'WORD'"),
        (_document([1, 2, 3, 4], shape=(2, -2)), None, "input 'x': shape must be an array of non-negative"),
        (_document(), None, "input 'x': give its data in exactly one way"),
        (_document([1, 2, 3, 4], parameters={"binary_data_size": 16}), None, "input 'x': give its data in"),
        (
            _document(parameters={"binary_data_size": 16}) + b"\0" * 8,
            len(_document(parameters={"binary_data_size": 16})),
            "input 'x': binary_data_size 16 but only 8 bytes",
        ),  # fmt: skip
        (_document([1, 2, 3, 4]) + b"\0" * 4, len(_document([1, 2, 3, 4])), "4 bytes of binary data after"),
        (_document([1, 2, 3, 4]), 10_000, "Inference-Header-Content-Length is 10000 but the body holds"),
        (b'{"inputs": [', None, "the inference request is not valid JSON"),
        (b'{"inputs": [], "parameters": {"p": NaN}}', None, "NaN is not JSON"),
        (b"[1, 2]", None, "the inference request must be a JSON object"),
        (b'{"inputs": [{"shape": [1]}]}', None, "inputs[0] needs a name"),
        (b'{"inputs": [], "parameters": {"p": [1]}}', None, "parameter 'p' must be a string, a number or"),
        (b'{"inputs": [], "parameters": {"timeout": -5}}', None, "parameter 'timeout' must be an integer"),
        (
            b'{"inputs": [], "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}',
            None,
            "output 'y': binary_data must be true or false",
        ),  # fmt: skip
        (b"[" * 100_000, None, "nested too deeply"),
    ],
)
def test_malformed_requests_are_invalid_argument_saying_what_is_wrong(body, header_length, message):
    with pytest.raises(InvalidArgument) as failure:
        decode_infer_request(body, header_length, "m", "")
    assert message in failure.value.message
    assert "Error" not in failure.value.message  # no Python class names


SCORES = np.array([[0.25], [0.75]], dtype=np.float32)
LABELS = np.array([[b"ok"], [b"fraud"]], dtype=np.object_)
WIDE = np.array([[1, -(2**40)], [3, 4]], dtype=np.int64)


def reply_with(*outputs: tuple[str, str, np.ndarray], typed: bool = False) -> service_pb2.ModelInferResponse:
    reply = service_pb2.ModelInferResponse(model_name="fraud", model_version="1", id="r-7")
    reply.parameters["sequence_id"].int64_param = 9
    for name, datatype, array in outputs:
        tensor = reply.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if typed:
            field = {"FP32": "fp32_contents", "INT64": "int64_contents", "BYTES": "bytes_contents"}[datatype]
            getattr(tensor.contents, field).extend(array.ravel().tolist())
        else:
            reply.raw_output_contents.append(raw_bytes(array))
    return reply


OUTPUTS = (("score", "FP32", SCORES), ("label", "BYTES", LABELS), ("wide", "INT64", WIDE))


@pytest.mark.parametrize("typed", [False, True])
@pytest.mark.parametrize("binary", [{}, {"score": True, "label": True}, {"wide": True}])
def test_replies_parse_with_tritonclient_http_binary_or_json_as_asked(binary, typed):
    body, header_length = encode_infer_response(reply_with(*OUTPUTS, typed=typed), ReplyForm(False, binary))
    assert (header_length is None) == (not binary)
    result = http.InferenceServerClient.parse_response_body(body, header_length=header_length)
    for name, datatype, array in OUTPUTS:
        if datatype == "BYTES" and name not in binary:
            array = array.astype(str).astype(np.object_)  # BYTES in JSON are strings, as from Triton
        np.testing.assert_array_equal(result.as_numpy(name), array)
        assert ("binary_data_size" in result.get_output(name).get("parameters", {})) == (name in binary)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("fraud", "1", "r-7")
    assert response["parameters"] == {"sequence_id": 9}


def test_json_replies_carry_flat_data_as_triton_writes_it():
    body, header_length = encode_infer_response(reply_with(*OUTPUTS), ReplyForm())
    outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
    assert header_length is None
    assert outputs["score"] == {"name": "score", "datatype": "FP32", "shape": [2, 1], "data": [0.25, 0.75]}
    assert outputs["label"]["data"] == ["ok", "fraud"]
    assert outputs["wide"]["data"] == [1, -(2**40), 3, 4]


def test_half_precision_outputs_are_binary_only_and_non_utf8_bytes_cannot_be_json():
    halves = np.array([[0.5], [1.5]], dtype=np.float16)
    reply = reply_with(("half", "FP16", halves))
    with pytest.raises(InvalidArgument, match="output 'half' is FP16, which REST carries only in binary"):
        encode_infer_response(reply, ReplyForm())
    body, length = encode_infer_response(reply, ReplyForm(True))
    np.testing.assert_array_equal(
        http.InferenceServerClient.parse_response_body(body, header_length=length).as_numpy("half"), halves
    )
    with pytest.raises(InvalidArgument, match="output 'blob' holds bytes that are not UTF-8"):
        encode_infer_response(
            reply_with(("blob", "BYTES", np.array([b"\xff\xfe"], dtype=np.object_))), ReplyForm()
        )


@pytest.mark.parametrize(
    ("datatype", "data"), [("FP32", b"\0" * 3), ("BYTES", b"\x05\0"), ("BYTES", b"\x0a\0\0\0abc")]
)
def test_an_output_whose_bytes_do_not_fit_its_datatype_is_internal(datatype, data):
    reply = service_pb2.ModelInferResponse(model_name="m")
    reply.outputs.add(name="score", datatype=datatype, shape=[1])
    reply.raw_output_contents.append(data)
    with pytest.raises(MeshError) as failure:
        encode_infer_response(reply, ReplyForm())
    assert failure.value.code is ErrorCode.INTERNAL


def test_an_output_asked_for_in_shared_memory_carries_no_data_as_from_triton():
    wanted = http.InferRequestedOutput("score")
    wanted.set_shared_memory("out", 8)
    call = decode([http_input("features", ROWS, "FP32")], [wanted])
    assert call.request.outputs[0].parameters["shared_memory_region"].string_param == "out"
    reply = reply_with(("score", "FP32", SCORES))
    reply.raw_output_contents[0] = b""  # Triton's gRPC reply: an empty entry, no parameters
    body, length = encode_infer_response(reply, call.reply_form)
    (output,) = json.loads(body)["outputs"]
    assert length is None and output == {"name": "score", "datatype": "FP32", "shape": [2, 1]}


def test_metadata_config_and_statistics_json_have_numbers_where_triton_has_them():
    metadata = service_pb2.ModelMetadataResponse(
        name="fraud", versions=["1", "2"], platform="onnxruntime_onnx"
    )
    metadata.inputs.add(name="features", datatype="FP32", shape=[-1, 5])
    assert message_json(metadata) == {
        "name": "fraud", "versions": ["1", "2"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 5]}], "outputs": [],
    }  # fmt: skip

    config = model_config_pb2.ModelConfig(name="fraud", max_batch_size=64)
    config.input.add(name="features", data_type=model_config_pb2.TYPE_FP32, dims=[5])
    config.dynamic_batching.max_queue_delay_microseconds = 100
    config.parameters["k"].string_value = "v"
    document = message_json(config)
    assert document["max_batch_size"] == 64 and document["input"][0]["dims"] == [5]
    assert document["input"][0]["data_type"] == "TYPE_FP32"
    assert document["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    assert document["parameters"] == {"k": {"string_value": "v"}}

    statistics = service_pb2.ModelStatisticsResponse()
    entry = statistics.model_stats.add(name="fraud", version="1", inference_count=2**40, execution_count=3)
    entry.inference_stats.success.count = 7
    entry.batch_stats.add(batch_size=4).compute_infer.ns = 12
    (stats,) = message_json(statistics)["model_stats"]
    assert stats["inference_count"] == 2**40 and stats["execution_count"] == 3
    assert stats["inference_stats"]["success"] == {"count": 7, "ns": 0}
    assert stats["batch_stats"][0]["compute_infer"] == {"count": 0, "ns": 12}


def test_repository_load_takes_config_and_base64_files_and_unload_its_parameters():
    content = b"\x08\x01onnx bytes"
    document = {"parameters": {"config": '{"backend": "onnxruntime"}',
                               "file:1/model.onnx": base64.b64encode(content).decode()}}  # fmt: skip
    request = load_request("fraud", document)
    assert request.model_name == "fraud"
    assert request.parameters["config"].string_param == '{"backend": "onnxruntime"}'
    assert request.parameters["file:1/model.onnx"].bytes_param == content
    with pytest.raises(InvalidArgument, match="parameter 'file:x' must be base64"):
        load_request("fraud", {"parameters": {"file:x": "not base64!"}})
    unload = unload_request("fraud", {"parameters": {"unload_dependents": True}})
    assert unload.model_name == "fraud" and unload.parameters["unload_dependents"].bool_param is True

    index = service_pb2.RepositoryIndexResponse()
    index.models.add(name="fraud", version="1", state="READY")
    index.models.add(name="echo")
    assert repository_index_json(index) == [
        {"name": "fraud", "version": "1", "state": "READY"},
        {"name": "echo"},
    ]


def test_shared_memory_register_requests_and_status_arrays():
    system = system_register_request("r", {"key": "/shm", "offset": 0, "byte_size": 64})
    assert system == service_pb2.SystemSharedMemoryRegisterRequest(name="r", key="/shm", byte_size=64)
    handle = base64.b64encode(b"cuda-ipc-handle").decode()
    cuda = cuda_register_request("g", {"raw_handle": {"b64": handle}, "device_id": 1, "byte_size": 32})
    assert cuda == service_pb2.CudaSharedMemoryRegisterRequest(
        name="g", raw_handle=b"cuda-ipc-handle", device_id=1, byte_size=32
    )
    with pytest.raises(InvalidArgument, match="byte_size must be an integer"):
        system_register_request("r", {"key": "/shm"})
    status = service_pb2.SystemSharedMemoryStatusResponse()
    status.regions["r"].CopyFrom(status.RegionStatus(name="r", key="/shm", offset=8, byte_size=2**33))
    assert shared_memory_status_json(status) == [
        {"name": "r", "key": "/shm", "offset": 8, "byte_size": 2**33}
    ]


def test_trace_and_log_settings_as_triton_writes_them():
    request = trace_setting_request(
        "fraud", {"trace_level": ["TIMESTAMPS"], "trace_rate": "10", "log_frequency": None}
    )
    assert request.model_name == "fraud"
    assert {k: list(v.value) for k, v in request.settings.items()} == {
        "trace_level": ["TIMESTAMPS"], "trace_rate": ["10"], "log_frequency": []  # null clears
    }  # fmt: skip
    with pytest.raises(InvalidArgument, match="trace setting 'trace_rate' must be a string"):
        trace_setting_request("", {"trace_rate": 10})
    reply = service_pb2.TraceSettingResponse()
    reply.settings["trace_level"].value.append("TIMESTAMPS")
    reply.settings["trace_rate"].value.append("10")
    assert trace_setting_json(reply) == {"trace_level": ["TIMESTAMPS"], "trace_rate": "10"}

    logs = log_settings_request({"log_info": True, "log_verbose_level": 2, "log_format": "ISO8601"})
    assert logs.settings["log_info"].bool_param is True
    assert logs.settings["log_verbose_level"].uint32_param == 2
    answer = service_pb2.LogSettingsResponse()
    answer.settings["log_info"].bool_param = True
    answer.settings["log_verbose_level"].uint32_param = 2
    answer.settings["log_format"].string_param = "ISO8601"
    assert log_settings_json(answer) == {"log_info": True, "log_verbose_level": 2, "log_format": "ISO8601"}
    with pytest.raises(InvalidArgument, match="log setting 'log_info'"):
        log_settings_request({"log_info": None})


# -- raw binary requests (Inference-Header-Content-Length 0) --------------------------------------------------
def _config(*inputs: tuple[str, int, list[int]], max_batch_size: int = 0) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig(name="m", max_batch_size=max_batch_size)
    for name, data_type, dims in inputs:
        config.input.add(name=name, data_type=data_type, dims=dims)
    return config


FRAUD = _config(("features", model_config_pb2.TYPE_FP32, [5]), max_batch_size=64)


def test_a_raw_binary_request_is_the_request_tritonclient_grpc_sends_for_one_row():
    row = ROWS[:1]
    call = decode_raw_infer_request(row.tobytes(), "fraud", "2", FRAUD)
    tensor = triton_grpc.InferInput("features", [1, 5], "FP32")
    tensor.set_data_from_numpy(row)
    expected = service_pb2.ModelInferRequest(model_name="fraud", model_version="2")
    expected.inputs.append(tensor._get_tensor())
    expected.raw_input_contents.append(tensor._get_content())
    assert call.request == expected
    assert call.reply_form == ReplyForm(binary_default=True) and call.time_left_s is None
    assert call.reply_form.wants_binary("score")  # every output, in binary, as Triton answers one


@pytest.mark.parametrize(
    ("config", "data", "shape", "datatype"),
    [
        (_config(("x", model_config_pb2.TYPE_INT32, [-1]), max_batch_size=8), np.arange(3, dtype=np.int32),
         [1, 3], "INT32"),
        (_config(("x", model_config_pb2.TYPE_FP64, [2, -1])), np.zeros((2, 3)), [2, 3], "FP64"),
        (_config(("x", model_config_pb2.TYPE_INT32, [-1]), max_batch_size=8), np.zeros(0, np.int32), [1, 0],
         "INT32"),
        (_config(("x", model_config_pb2.TYPE_BOOL, [4])), FLAGS.repeat(2), [4], "BOOL"),
        (_config(("x", model_config_pb2.TYPE_FP16, [2])), np.ones(2, np.float16), [2], "FP16"),
    ],
)  # fmt: skip
def test_a_variable_sized_dimension_is_deduced_from_the_byte_count(config, data, shape, datatype):
    call = decode_raw_infer_request(data.tobytes(), "m", "", config)
    [tensor] = call.request.inputs
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("x", datatype, shape)
    assert call.request.raw_input_contents == [data.tobytes()]


def test_a_raw_bytes_input_is_its_one_element_in_tritons_layout():
    config = _config(("text", model_config_pb2.TYPE_STRING, [1]), max_batch_size=4)
    call = decode_raw_infer_request("héllo".encode(), "m", "", config)
    [tensor] = call.request.inputs
    assert (tensor.datatype, list(tensor.shape)) == ("BYTES", [1, 1])
    assert call.request.raw_input_contents == [raw_bytes(np.array([["héllo"]], np.object_))]


@pytest.mark.parametrize(
    ("config", "body", "message"),
    [
        (_config(("INPUT0", model_config_pb2.TYPE_INT32, [-1]), ("INPUT1", model_config_pb2.TYPE_STRING, [1])),
         b"\0" * 8, "needs a model of exactly 1 input to deduce the tensor from, but model 'm' has 2: 'INPUT0', "
         "'INPUT1'"),
        (_config(), b"", "model 'm' has 0"),
        (FRAUD, ROWS.tobytes(), "input 'features': byte size mismatch for model 'm': a raw binary request of "
         "shape [1, 5] and datatype FP32 takes 20 bytes, got 40"),
        (FRAUD, b"\0" * 21, "takes 20 bytes, got 21"),
        (FRAUD, b"", "takes 20 bytes, got 0"),
        (_config(("x", model_config_pb2.TYPE_INT32, [-1])), b"\0" * 10, "takes a multiple of 4 bytes, got 10"),
        (_config(("x", model_config_pb2.TYPE_FP32, [-1, -1])), b"\0" * 8, "more than one variable-sized"),
        (_config(("x", model_config_pb2.TYPE_STRING, [-1])), b"hi", "BYTES input needs the input's shape to be"),
        (_config(("x", model_config_pb2.TYPE_STRING, [2])), b"hi", "shape to be [1]; it is [2]"),
    ],
)  # fmt: skip
def test_a_raw_binary_request_that_does_not_fit_the_model_is_refused_naming_why(config, body, message):
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        decode_raw_infer_request(body, "m", "", config)
