"""Bad input gets one clear status naming what was wrong, no work is done for it, and the next call succeeds."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from meshserve.feature.v1 import feature_pb2
from meshserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tests.helpers import triton_counts

ROW = np.array([[120.0, 3, 80.0, 2, 400]], dtype=np.float32)
ROW_BYTES = ROW.tobytes()


def infer_request(model="fraud", name="features", datatype="FP32", shape=(1, 5), data=ROW_BYTES):
    return service_pb2.ModelInferRequest(
        model_name=model,
        inputs=[service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)],
        raw_input_contents=[data],
    )


def good_predict(**features) -> gateway_pb2.PredictRequest:
    values = {
        "amount": feature_pb2.Value(double_value=10.0),
        "merchant_category": feature_pb2.Value(int64_value=1),
    }
    values.update(features)
    return gateway_pb2.PredictRequest(
        route="fraud", instances=[gateway_pb2.Instance(entity_key="acct-00001", features=values)]
    )


@pytest.fixture
def stubs(mesh):
    options = [("grpc.max_send_message_length", 64 * 2**20), ("grpc.max_receive_message_length", 64 * 2**20)]
    with grpc.insecure_channel(mesh.endpoints.gateway, options=options) as channel:
        yield (
            service_pb2_grpc.GRPCInferenceServiceStub(channel),
            gateway_pb2_grpc.PredictionServiceStub(channel),
        )


def assert_refused_then_served(stubs, call, code: grpc.StatusCode, *phrases: str):
    oip, predict = stubs
    with pytest.raises(grpc.RpcError) as failure:
        call()
    assert failure.value.code() == code, failure.value.details()
    for phrase in phrases:
        assert phrase in failure.value.details()
    assert "Traceback" not in failure.value.details()
    # the service keeps serving
    assert oip.ModelInfer(infer_request(), timeout=10).model_name == "fraud"
    assert len(predict.Predict(good_predict(), timeout=10).predictions) == 1


def test_unknown_route_is_not_found(stubs):
    oip, predict = stubs
    assert_refused_then_served(stubs, lambda: oip.ModelInfer(infer_request(model="nope"), timeout=10),
                               grpc.StatusCode.NOT_FOUND, "Request for unknown model: 'nope' is not found")  # fmt: skip
    request = good_predict()
    request.route = "nope"
    assert_refused_then_served(
        stubs, lambda: predict.Predict(request, timeout=10), grpc.StatusCode.NOT_FOUND, "'nope'"
    )


@pytest.mark.parametrize(
    ("request_", "phrase"),
    [
        (
            infer_request(datatype="FP64", data=ROW.astype(np.float64).tobytes()),
            "data-type is 'FP64', but model 'fraud' expects 'FP32'",
        ),
        (infer_request(shape=(1, 4), data=ROW[:, :4].tobytes()), "Expected [-1,5], got [1,4]"),
        (infer_request(name="inputs"), "unexpected inference input 'inputs' for model 'fraud'"),
        (service_pb2.ModelInferRequest(model_name="fraud"), "missing required input(s) ['features']"),
        (
            infer_request(data=ROW.tobytes()[:8]),
            "byte size mismatch for input 'features' for model 'fraud'. Expected 20, got 8",
        ),
    ],
)
def test_wrong_dtype_shape_or_missing_input_is_invalid_argument_naming_the_input(stubs, request_, phrase):
    oip, _ = stubs
    assert_refused_then_served(stubs, lambda: oip.ModelInfer(request_, timeout=10),
                               grpc.StatusCode.INVALID_ARGUMENT, "'features'" if "unexpected" not in phrase else "'inputs'", phrase)  # fmt: skip


@pytest.mark.parametrize(
    ("features", "phrase"),
    [
        ({"amount": None}, "missing request feature 'amount'"),
        ({"amount": feature_pb2.Value(string_value="ten")}, "'amount' must be a number"),
        (
            {"amount": feature_pb2.Value(double_value=-5.0)},
            "'amount'=-5.0 is outside its range: must be between 0 and 1000000",
        ),
        ({"colour": feature_pb2.Value(double_value=1.0)}, "unknown request feature 'colour'"),
    ],
)
def test_bad_predict_features_are_invalid_argument_naming_the_feature(stubs, features, phrase):
    _, predict = stubs
    request = good_predict(**{k: v for k, v in features.items() if v is not None})
    for name, value in features.items():
        if value is None:
            del request.instances[0].features[name]
    assert_refused_then_served(
        stubs, lambda: predict.Predict(request, timeout=10), grpc.StatusCode.INVALID_ARGUMENT, phrase
    )


def test_oversized_message_is_resource_exhausted_before_any_work(mesh, stubs):
    oip, _ = stubs
    before = triton_counts(mesh.endpoints.triton_grpc, "fraud", "1")
    big = np.zeros((1_000_000, 5), dtype=np.float32)  # 20 MB > the 16 MiB limit the test mesh sets
    assert_refused_then_served(
        stubs, lambda: oip.ModelInfer(infer_request(shape=big.shape, data=big.tobytes()), timeout=10),
        grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max",  # refused by the transport, before any handler
    )  # fmt: skip
    after = triton_counts(mesh.endpoints.triton_grpc, "fraud", "1")
    assert after[0] - before[0] <= 2  # only the valid follow-up calls reached Triton


def test_too_many_predict_instances_is_resource_exhausted_before_any_work(mesh, stubs):
    _, predict = stubs
    request = good_predict()
    request.instances.extend([request.instances[0]] * 1024)  # 1025 > the limit of 1024
    before = triton_counts(mesh.endpoints.triton_grpc, "fraud", "1")
    assert_refused_then_served(stubs, lambda: predict.Predict(request, timeout=10),
                               grpc.StatusCode.RESOURCE_EXHAUSTED, "1025 instances", "limit is 1024")  # fmt: skip
    after = triton_counts(mesh.endpoints.triton_grpc, "fraud", "1")
    assert after[0] - before[0] <= 2


def test_a_request_larger_than_grpcs_default_4_mib_is_served_whole(stubs):
    """Triton takes messages up to 2 GiB; a drop-in gateway must not refuse what Triton would serve."""
    oip, _ = stubs
    values = np.arange(1_500_000, dtype=np.int32).reshape(1, -1)  # 6 MB
    names = np.array([[b"big"]], dtype=np.object_)
    request = service_pb2.ModelInferRequest(
        model_name="echo",
        inputs=[
            service_pb2.ModelInferRequest.InferInputTensor(
                name="INPUT0", datatype="INT32", shape=values.shape
            ),
            service_pb2.ModelInferRequest.InferInputTensor(name="INPUT1", datatype="BYTES", shape=[1, 1]),
        ],
        raw_input_contents=[values.tobytes(), len(names[0, 0]).to_bytes(4, "little") + names[0, 0]],
    )
    reply = oip.ModelInfer(request, timeout=30)
    outputs = {t.name: i for i, t in enumerate(reply.outputs)}
    echoed = np.frombuffer(reply.raw_output_contents[outputs["OUTPUT0"]], dtype=np.int32)
    assert np.array_equal(echoed, values.ravel() * 2 + 2)  # what echo version 2 (the route's) makes of it
