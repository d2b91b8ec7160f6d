"""Merging ModelInfer requests and splitting replies, against a model simulated row by row in numpy."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2, service_pb2

from gateway.serving.batching import SplitError, batch_plan, merge, merge_key, split, timeout_us, to_raw

InputTensor = service_pb2.ModelInferRequest.InferInputTensor
Output = service_pb2.ModelInferRequest.InferRequestedOutputTensor


def bytes_raw(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


def request(
    inputs: dict[str, np.ndarray],
    *,
    typed: bool = False,
    id: str = "",
    outputs=("OUT",),
    model="m",
    version="1",
) -> service_pb2.ModelInferRequest:
    message = service_pb2.ModelInferRequest(model_name=model, model_version=version, id=id)
    for name, array in inputs.items():
        datatype = "BYTES" if array.dtype == object else {"float32": "FP32", "int32": "INT32", "int64": "INT64",
                                                           "float16": "FP16", "bool": "BOOL", "int8": "INT8",
                                                           "uint8": "UINT8", "float64": "FP64"}[str(array.dtype)]  # fmt: skip
        tensor = message.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if typed:
            field = {"FP32": "fp32_contents", "INT32": "int_contents", "INT64": "int64_contents",
                     "BOOL": "bool_contents", "INT8": "int_contents", "UINT8": "uint_contents",
                     "FP64": "fp64_contents", "BYTES": "bytes_contents"}[datatype]  # fmt: skip
            getattr(tensor.contents, field).extend(array.ravel().tolist())
        elif datatype == "BYTES":
            message.raw_input_contents.append(bytes_raw(list(array.ravel())))
        else:
            message.raw_input_contents.append(array.tobytes())
    for name in outputs:
        message.outputs.add(name=name)
    return message


def decode(message: service_pb2.ModelInferRequest, index: int) -> np.ndarray:
    tensor = message.inputs[index]
    shape = list(tensor.shape)
    if tensor.datatype == "BYTES":
        data, items, position = message.raw_input_contents[index], [], 0
        while position < len(data):
            (length,) = struct.unpack_from("<I", data, position)
            items.append(data[position + 4 : position + 4 + length])
            position += 4 + length
        return np.array(items, dtype=object).reshape(shape)
    dtype = {"FP32": np.float32, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16, "BOOL": np.bool_,
             "INT8": np.int8, "UINT8": np.uint8, "FP64": np.float64}[tensor.datatype]  # fmt: skip
    return np.frombuffer(message.raw_input_contents[index], dtype=dtype).reshape(shape)


def run_model(message: service_pb2.ModelInferRequest) -> service_pb2.ModelInferResponse:
    """A row-wise model as Triton would answer it: OUT = first input (as is), SUM = row sums of numeric inputs."""
    if not message.raw_input_contents:
        message, given = merge([message]), message  # typed contents, as Triton reads them
        message.id = given.id
    first = decode(message, 0)
    reply = service_pb2.ModelInferResponse(model_name=message.model_name, model_version="1", id=message.id)
    out = reply.outputs.add(name="OUT", datatype=message.inputs[0].datatype, shape=list(first.shape))
    reply.raw_output_contents.append(
        bytes_raw(list(first.ravel())) if out.datatype == "BYTES" else first.tobytes()
    )
    if first.dtype != object:
        sums = first.reshape(first.shape[0], -1).astype(np.float64).sum(axis=1, keepdims=True)
        reply.outputs.add(name="SUM", datatype="FP64", shape=list(sums.shape))
        reply.raw_output_contents.append(sums.tobytes())
    return reply


def assert_same(a: service_pb2.ModelInferResponse, b: service_pb2.ModelInferResponse) -> None:
    assert a.id == b.id and a.model_name == b.model_name
    assert [(o.name, o.datatype, list(o.shape)) for o in a.outputs] == [
        (o.name, o.datatype, list(o.shape)) for o in b.outputs
    ]
    assert list(a.raw_output_contents) == list(b.raw_output_contents)


RNG = np.random.default_rng(7)
CASES = {
    "fp32": lambda n: {"x": RNG.normal(size=(n, 5)).astype(np.float32)},
    "two int32 inputs": lambda n: {
        "a": RNG.integers(-100, 100, (n, 16)).astype(np.int32),
        "b": RNG.integers(-100, 100, (n, 16)).astype(np.int32),
    },
    "int64 3-d": lambda n: {"x": RNG.integers(0, 1 << 40, (n, 2, 3)).astype(np.int64)},
    "fp16": lambda n: {"x": RNG.normal(size=(n, 4)).astype(np.float16)},
    "bool": lambda n: {"x": RNG.integers(0, 2, (n, 3)).astype(bool)},
    "int8": lambda n: {"x": RNG.integers(-128, 127, (n, 3)).astype(np.int8)},
    "bytes": lambda n: {"x": np.array([[f"row-{RNG.integers(1000)}-{'z' * k}".encode()] for k in range(n)], dtype=object)},
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
def test_merged_answers_equal_unmerged_ones_row_for_row(case, typed):
    if typed and case == "fp16":
        pytest.skip("FP16 has no typed contents in the protocol")
    requests = [
        request(CASES[case](n), typed=typed and k % 2 == 0, id=f"r{k}") for k, n in enumerate([1, 3, 2, 1])
    ]
    keys = {merge_key(r) for r in requests}
    assert len(keys) == 1 and None not in keys
    alone = [run_model(r) for r in requests]
    for r in requests:
        to_raw(r)  # what the gateway does to each caller's request before merging it
    merged = merge(requests)
    assert merged.inputs[0].shape[0] == 7 and len(merged.raw_input_contents) == len(merged.inputs)
    for mine, theirs in zip(split(run_model(merged), requests), alone, strict=True):
        assert_same(mine, theirs)


def test_what_cannot_share_a_call_gets_another_key_or_none():
    x = np.ones((2, 5), np.float32)
    base = merge_key(request({"x": x}))
    assert merge_key(request({"x": x}, id="other")) == base  # the id is per caller
    timed = request({"x": x})
    timed.parameters["timeout"].int64_param = 5000
    assert merge_key(timed) == base  # so is Triton's timeout
    assert merge_key(request({"x": np.ones((2, 6), np.float32)})) != base  # another non-batch shape
    assert merge_key(request({"x": x.astype(np.float64)})) != base  # another datatype
    assert merge_key(request({"x": x}, version="2")) != base
    assert merge_key(request({"x": x}, model="other")) != base
    assert merge_key(request({"x": x}, outputs=("OUT", "SUM"))) != base
    prioritised = request({"x": x})
    prioritised.parameters["priority"].uint64_param = 1
    assert merge_key(prioritised) != base
    classified = request({"x": x})
    classified.outputs[0].parameters["classification"].int64_param = 3
    assert merge_key(classified) != base
    for alone in ("sequence_id", "sequence_start"):
        sequence = request({"x": x})
        sequence.parameters[alone].int64_param = 1
        assert merge_key(sequence) is None
    shm = request({"x": x})
    shm.inputs[0].parameters["shared_memory_region"].string_param = "region"
    assert merge_key(shm) is None
    ragged = request({"a": np.ones((2, 5), np.float32), "b": np.ones((3, 5), np.float32)})
    assert merge_key(ragged) is None
    assert merge_key(request({"x": np.float32(1.0).reshape(())})) is None  # no batch dimension


def test_a_reply_that_breaks_the_batch_is_refused():
    requests = [request({"x": np.ones((1, 5), np.float32)}), request({"x": np.ones((2, 5), np.float32)})]
    reply = run_model(merge(requests))
    reply.outputs[0].shape[0] = 2  # the model answered fewer rows than it was given
    with pytest.raises(SplitError, match="3 rows"):
        split(reply, requests)


def test_typed_output_contents_are_split_too():
    requests = [request({"x": np.arange(5, dtype=np.float32).reshape(1, 5)}, id=str(k)) for k in range(2)]
    reply = service_pb2.ModelInferResponse(model_name="m", model_version="1")
    out = reply.outputs.add(name="OUT", datatype="INT32", shape=[2, 2])
    out.contents.int_contents.extend([1, 2, 3, 4])
    first, second = split(reply, requests)
    assert list(first.outputs[0].contents.int_contents) == [1, 2] and first.id == "0"
    assert list(second.outputs[0].contents.int_contents) == [3, 4] and list(second.outputs[0].shape) == [1, 2]


def config(**fields) -> model_config_pb2.ModelConfig:
    message = model_config_pb2.ModelConfig(max_batch_size=64, **fields)
    message.dynamic_batching.SetInParent()
    return message


def test_batch_plans_follow_the_model_config():
    plan = batch_plan(config(instance_group=[model_config_pb2.ModelInstanceGroup(count=2)]))
    assert plan.mergeable and plan.max_rows == 64 and plan.max_in_flight == 2
    assert batch_plan(config(), max_in_flight=5, max_rows=16) == batch_plan(config(), 5, 16)
    assert batch_plan(config(), max_rows=16).max_rows == 16
    assert batch_plan(config(), max_rows=1000).max_rows == 64  # never above the model's limit
    assert batch_plan(config(), max_in_flight=5).max_in_flight == 5
    gpus = batch_plan(config(instance_group=[model_config_pb2.ModelInstanceGroup(count=1, gpus=[0, 1])]))
    assert gpus.max_in_flight == 2
    assert batch_plan(config()).max_in_flight == 1
    assert "max_batch_size" in batch_plan(model_config_pb2.ModelConfig(max_batch_size=0)).why_alone
    assert "dynamic batcher" in batch_plan(model_config_pb2.ModelConfig(max_batch_size=8)).why_alone
    stateful = config()
    stateful.sequence_batching.SetInParent()
    assert not batch_plan(stateful).mergeable
    decoupled = config()
    decoupled.model_transaction_policy.decoupled = True
    assert not batch_plan(decoupled).mergeable
    ragged = config(input=[model_config_pb2.ModelInput(name="x", allow_ragged_batch=True)])
    assert not batch_plan(ragged).mergeable


def test_triton_timeout_is_the_time_left_unless_the_caller_asked_for_less():
    message = request({"x": np.ones((1, 5), np.float32)})
    assert timeout_us(message, 0.25) == 250_000
    message.parameters["timeout"].int64_param = 1000
    assert timeout_us(message, 0.25) == 1000
    message.parameters["timeout"].int64_param = 10**9
    assert timeout_us(message, 0.25) == 250_000


def test_typed_contents_become_raw_per_caller():
    typed = request({"x": np.array([[1, 2, 3]], np.int32)}, typed=True)
    to_raw(typed)
    assert not typed.inputs[0].HasField("contents")
    assert typed.raw_input_contents[0] == np.array([[1, 2, 3]], np.int32).tobytes()
