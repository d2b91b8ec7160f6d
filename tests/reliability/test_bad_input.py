"""Bad input never gets UNKNOWN, a Python class name or an internal address back: undecodable messages, strings
that are not UTF-8, NaN and infinities, fractions for integer features all get INVALID_ARGUMENT naming what was
wrong, and after each one a valid request still succeeds."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from meshserve.feature.v1 import feature_pb2
from meshserve.gateway.v1 import gateway_pb2

PREDICT = "/meshserve.gateway.v1.PredictionService/Predict"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
GET_FEATURES = "/meshserve.feature.v1.FeatureService/GetOnlineFeatures"
CACHE_GET = "/meshserve.cache.v1.CacheService/Get"


def predict_bytes(entity_key: bytes = b"acct-00042", amount: float = 120.0, category=3) -> bytes:
    """A PredictRequest assembled by hand, so a test can put bytes in a string field that are not UTF-8."""
    value = (
        feature_pb2.Value(int64_value=category)
        if isinstance(category, int)
        else feature_pb2.Value(double_value=category)
    )
    instance = gateway_pb2.Instance(
        entity_key="PLACEHOLDER",
        features={"amount": feature_pb2.Value(double_value=amount), "merchant_category": value},
    ).SerializeToString()
    instance = instance.replace(b"\x0a\x0bPLACEHOLDER", b"\x0a" + bytes([len(entity_key)]) + entity_key)
    request = gateway_pb2.PredictRequest(route="fraud").SerializeToString()
    return request + b"\x12" + bytes([len(instance)]) + instance


def valid_infer() -> bytes:
    row = np.ones((1, 5), np.float32)
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[1, 5])
    return service_pb2.ModelInferRequest(
        model_name="fraud", inputs=[tensor], raw_input_contents=[row.tobytes()]
    ).SerializeToString()


GARBAGE = [
    b"\xff\xff\xff\xff",
    b"\x0a\x40only-a-few-bytes",
    b"\x12\x05\x0a\x03ab",
]  # not a message; truncated


@pytest.fixture
async def call(mesh):
    channels = {name: grpc.aio.insecure_channel(target) for name, target in
                (("gateway", mesh.endpoints.gateway), ("feature", mesh.endpoints.feature),
                 ("cache", mesh.endpoints.cache))}  # fmt: skip

    async def send(where: str, method: str, payload: bytes) -> tuple[grpc.StatusCode, str]:
        try:
            await channels[where].unary_unary(method)(payload, timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        return grpc.StatusCode.OK, ""

    yield send
    for channel in channels.values():
        await channel.close()


def assert_clean(code: grpc.StatusCode, details: str) -> None:
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    for leak in ("Traceback", "<class", "DecodeError", "127.0.0.1", "ipv4:"):
        assert leak not in details, details


@pytest.mark.parametrize(
    ("where", "method", "valid", "names"),
    [
        ("gateway", MODEL_INFER, valid_infer(), "inference.ModelInferRequest"),
        ("gateway", PREDICT, predict_bytes(), "meshserve.gateway.v1.PredictRequest"),
        ("feature", GET_FEATURES, feature_pb2.GetOnlineFeaturesRequest(entity="account", entity_keys=["acct-00001"])
         .SerializeToString(), "meshserve.feature.v1.GetOnlineFeaturesRequest"),
        ("cache", CACHE_GET, b"", "meshserve.cache.v1.GetRequest"),
    ],
    ids=["ModelInfer", "Predict", "GetOnlineFeatures", "cache Get"],
)  # fmt: skip
async def test_undecodable_messages_are_invalid_argument_naming_the_message(
    call, where, method, valid, names
):
    for payload in GARBAGE:
        code, details = await call(where, method, payload)
        assert_clean(code, details)
        assert names in details
        assert (await call(where, method, valid))[0] == grpc.StatusCode.OK  # the service keeps serving


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (predict_bytes(entity_key=b"acct-\xff\xfe"), "PredictRequest"),  # a string field that is not UTF-8
        (predict_bytes(amount=float("nan")), "'amount' must be finite, got nan"),
        (predict_bytes(amount=float("inf")), "'amount' must be finite, got inf"),
        (predict_bytes(category=3.5), "'merchant_category' is an integer, got 3.5"),
    ],
    ids=["non-UTF-8 entity key", "NaN", "infinity", "fraction for an integer"],
)
async def test_values_a_model_cannot_take_are_refused_by_name(call, payload, says):
    code, details = await call("gateway", PREDICT, payload)
    assert_clean(code, details)
    assert says in details
    assert (await call("gateway", PREDICT, predict_bytes()))[0] == grpc.StatusCode.OK


async def test_predict_on_a_route_whose_model_takes_tensors_says_so(call):
    request = gateway_pb2.PredictRequest(route="bluegreen", instances=[gateway_pb2.Instance(entity_key="a")])
    code, details = await call("gateway", PREDICT, request.SerializeToString())
    assert code == grpc.StatusCode.FAILED_PRECONDITION, details
    assert "'bluegreen'" in details and "ModelInfer" in details
