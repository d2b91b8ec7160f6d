"""Unmodified tritonclient (sync and asyncio) against the gateway: model names are route names."""

from __future__ import annotations

import asyncio
import queue

import grpc
import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.helpers import feature_vector, score_directly

# Triton batches concurrent rows as it likes, and a row's float32 score may then differ by a rounding step
SCORE_RTOL = 1e-6

ROWS = np.vstack(
    [
        feature_vector("acct-00001", amount=25.0, merchant_category=1),
        feature_vector("acct-00002", amount=4_000.0, merchant_category=7),
        feature_vector("acct-00003", amount=310.0, merchant_category=4),
    ]
)


def infer_input(matrix: np.ndarray) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("features", list(matrix.shape), "FP32")
    tensor.set_data_from_numpy(matrix)
    return tensor


def test_sync_client_sees_a_live_ready_server_and_route_named_models(mesh):
    client = triton_grpc.InferenceServerClient(mesh.endpoints.gateway)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("fraud")
    assert not client.is_model_ready("no-such-route")
    assert client.get_server_metadata().name == "triton"  # as Triton's own examples require
    metadata = client.get_model_metadata("fraud")
    assert metadata.name == "fraud"
    assert list(metadata.versions) == ["1", "2"]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("features", "FP32", [-1, 5])]
    config = client.get_model_config("fraud").config
    assert config.name == "fraud" and config.max_batch_size == 64


def test_sync_infer_matches_triton_directly_with_binary_output(mesh):
    client = triton_grpc.InferenceServerClient(mesh.endpoints.gateway)
    result = client.infer("fraud", [infer_input(ROWS)], outputs=[triton_grpc.InferRequestedOutput("score")])
    assert result.get_response().model_name == "fraud"
    assert result.get_response().model_version == "1"
    assert result.get_response().raw_output_contents  # binary output came back as raw bytes
    np.testing.assert_allclose(
        result.as_numpy("score")[:, 0], score_directly(mesh.endpoints.triton_grpc, ROWS), rtol=SCORE_RTOL
    )


def test_requested_version_pins_the_variant(mesh):
    client = triton_grpc.InferenceServerClient(mesh.endpoints.gateway)
    result = client.infer("fraud", [infer_input(ROWS)], model_version="2")
    assert result.get_response().model_version == "2"
    np.testing.assert_allclose(
        result.as_numpy("score")[:, 0], score_directly(mesh.endpoints.triton_grpc, ROWS, "2"), rtol=SCORE_RTOL
    )


def test_typed_contents_in_binary_output_out_and_trailing_metadata_names_the_variant(mesh):
    binary = service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="score")
    binary.parameters["binary_data"].bool_param = True
    request = service_pb2.ModelInferRequest(
        model_name="fraud",
        outputs=[binary],
        inputs=[
            service_pb2.ModelInferRequest.InferInputTensor(
                name="features",
                datatype="FP32",
                shape=list(ROWS.shape),
                contents={"fp32_contents": ROWS.ravel()},
            )
        ],
    )
    with grpc.insecure_channel(mesh.endpoints.gateway) as channel:
        reply, call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer.with_call(
            request, timeout=10
        )
    trailing = dict(call.trailing_metadata())
    assert trailing["x-meshserve-variant"] == "stable"
    assert trailing["x-meshserve-model-version"] == "1"
    scores = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32)
    np.testing.assert_allclose(scores, score_directly(mesh.endpoints.triton_grpc, ROWS), rtol=SCORE_RTOL)


def test_sync_stream_infer(mesh):
    client = triton_grpc.InferenceServerClient(mesh.endpoints.gateway)
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for n in range(len(ROWS)):
            client.async_stream_infer("fraud", [infer_input(ROWS[n : n + 1])], request_id=str(n))
        client.async_stream_infer("nope", [infer_input(ROWS[:1])], request_id="bad")
        answers = [results.get(timeout=10) for _ in range(len(ROWS) + 1)]
    finally:
        client.stop_stream()
    expected = score_directly(mesh.endpoints.triton_grpc, ROWS)
    errors = [error for _, error in answers if error is not None]
    assert len(errors) == 1 and "unknown model: 'nope'" in str(errors[0])
    scores = {r.get_response().id: r.as_numpy("score")[0, 0] for r, e in answers if e is None}
    assert scores.keys() == {"0", "1", "2"}
    np.testing.assert_allclose([scores[str(n)] for n in range(len(ROWS))], expected, rtol=SCORE_RTOL)


async def test_aio_client_infer_and_stream(mesh):
    async with triton_aio.InferenceServerClient(mesh.endpoints.gateway) as client:
        assert await client.is_server_ready()
        assert await client.is_model_ready("fraud")
        tensor = triton_aio.InferInput("features", list(ROWS.shape), "FP32")
        tensor.set_data_from_numpy(ROWS)
        result = await client.infer("fraud", [tensor])
        expected = score_directly(mesh.endpoints.triton_grpc, ROWS)
        np.testing.assert_allclose(result.as_numpy("score")[:, 0], expected, rtol=SCORE_RTOL)

        async def requests():
            for n in range(len(ROWS)):
                row = triton_aio.InferInput("features", [1, 5], "FP32")
                row.set_data_from_numpy(ROWS[n : n + 1])
                yield {"model_name": "fraud", "inputs": [row], "request_id": str(n)}

        scores = {}
        async for result, error in client.stream_infer(requests()):
            assert error is None
            scores[result.get_response().id] = result.as_numpy("score")[0, 0]
            if len(scores) == len(ROWS):
                break
        np.testing.assert_allclose([scores[str(n)] for n in range(len(ROWS))], expected, rtol=SCORE_RTOL)


async def test_many_concurrent_aio_infers_all_succeed(mesh):
    async with triton_aio.InferenceServerClient(mesh.endpoints.gateway) as client:

        async def one(n: int) -> float:
            tensor = triton_aio.InferInput("features", [1, 5], "FP32")
            tensor.set_data_from_numpy(ROWS[n % 3 : n % 3 + 1])
            return (await client.infer("fraud", [tensor])).as_numpy("score")[0, 0]

        scores = await asyncio.gather(*(one(n) for n in range(48)))
    expected = score_directly(mesh.endpoints.triton_grpc, ROWS)
    np.testing.assert_allclose(scores, [expected[n % 3] for n in range(48)], rtol=SCORE_RTOL)
