"""Request merging on the real mesh: concurrent ModelInfer calls that Triton could batch share one request, each
caller gets exactly its own answer, and calls that must stay apart do. Triton's own statistics count what it saw.

The `echo` test model (tests/fixtures/model_repository/echo) answers, per row, the rows of the Triton request the
row came in and that request's `tag` parameter: what the gateway merged is visible to the caller.
"""

from __future__ import annotations

import asyncio
import os
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.grpc import InferResult, service_pb2, service_pb2_grpc

from meshserve.feature.v1 import feature_pb2
from meshserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tests.helpers import feature_vector, score_directly, scrape

InputTensor = service_pb2.ModelInferRequest.InferInputTensor


def echo_request(
    numbers: np.ndarray, words: list[bytes], *, typed: bool = False, id: str = "", tag: str | None = None,
    version: str = "",
) -> service_pb2.ModelInferRequest:  # fmt: skip
    """INPUT0 (INT32 [n, w]) and INPUT1 (BYTES [n, 1]), as raw bytes or typed contents."""
    request = service_pb2.ModelInferRequest(model_name="echo", model_version=version, id=id)
    first = request.inputs.add(name="INPUT0", datatype="INT32", shape=list(numbers.shape))
    second = request.inputs.add(name="INPUT1", datatype="BYTES", shape=[len(words), 1])
    if typed:
        first.contents.int_contents.extend(numbers.ravel().tolist())
        second.contents.bytes_contents.extend(words)
    else:
        request.raw_input_contents.append(numbers.tobytes())
        request.raw_input_contents.append(b"".join(len(w).to_bytes(4, "little") + w for w in words))
    if tag is not None:
        request.parameters["tag"].string_param = tag
    return request


def output(reply: service_pb2.ModelInferResponse, name: str) -> np.ndarray:
    return InferResult(reply).as_numpy(name)


def triton_counts(triton_url: str, model: str, version: str) -> tuple[int, int]:
    """(requests Triton answered, rows it inferred) for one model version, from its own statistics."""
    stats = triton_grpc.InferenceServerClient(triton_url).get_inference_statistics(model, version)
    (entry,) = stats.model_stats
    return entry.inference_stats.success.count, entry.inference_count


def directly(triton_url: str, request: service_pb2.ModelInferRequest, version: str):
    """The same request sent to Triton on its own, outside the mesh: the unmerged answer."""
    alone = service_pb2.ModelInferRequest()
    alone.CopyFrom(request)
    alone.model_version = version
    with grpc.insecure_channel(triton_url) as channel:
        return service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(alone, timeout=30)


def coalesced(mesh, target: str) -> tuple[float, float]:
    """(calls the gateway sent to `target`, callers' requests they carried), from its Prometheus metrics."""
    series = scrape(mesh.endpoints.gateway_metrics)
    return tuple(series.get(f'meshserve_gateway_coalesced_{kind}_total{{target="{target}"}}', 0.0)
                 for kind in ("calls", "members"))  # fmt: skip


@pytest.fixture
async def infer(mesh):
    async with grpc.aio.insecure_channel(mesh.endpoints.gateway) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer


async def test_concurrent_requests_are_merged_and_each_caller_gets_exactly_its_own_answer(mesh, infer):
    rng = np.random.default_rng(20261201)
    requests = []
    for k in range(24):
        rows = 1 + k % 3
        numbers = rng.integers(-1000, 1000, (rows, 4)).astype(np.int32)
        words = [f"caller {k} row {j} {'x' * int(rng.integers(0, 9))}".encode() for j in range(rows)]
        requests.append(echo_request(numbers, words, typed=k % 2 == 1, id=f"caller-{k}"))
    alone = [directly(mesh.endpoints.triton_grpc, r, "2") for r in requests]
    before = triton_counts(mesh.endpoints.triton_grpc, "echo", "2")
    merged_before = coalesced(mesh, "model:echo/2")
    replies = await asyncio.gather(*(infer(r, timeout=30) for r in requests))
    answered, rows = np.subtract(triton_counts(mesh.endpoints.triton_grpc, "echo", "2"), before)
    calls, members = np.subtract(coalesced(mesh, "model:echo/2"), merged_before)

    for request, reply, reference in zip(requests, replies, alone, strict=True):
        assert reply.id == request.id and reply.model_name == "echo" and reply.model_version == "2"
        for name in ("OUTPUT0", "OUTPUT1"):
            mine, theirs = output(reply, name), output(reference, name)
            assert mine.shape == theirs.shape and mine.dtype == theirs.dtype
            np.testing.assert_array_equal(mine, theirs)
    own_rows = [r.inputs[0].shape[0] for r in requests]
    seen_rows = [int(output(reply, "ROWS")[0, 0]) for reply in replies]
    assert max(seen_rows) > max(own_rows)  # some callers' rows travelled in one request
    assert rows == sum(own_rows) and answered < len(requests)  # Triton saw every row, in fewer requests
    assert members == len(requests) and calls == answered  # and the gateway's metrics say how it merged them


@pytest.mark.parametrize("apart", ["parameters", "shapes"])
async def test_requests_that_differ_in_parameters_or_shape_are_never_merged(mesh, infer, apart):
    def request(k: int, same: bool) -> service_pb2.ModelInferRequest:
        width = 3 if same or apart == "parameters" else 1 + k
        tag = "same" if same or apart == "shapes" else f"tag-{k}"
        return echo_request(np.full((1, width), k, np.int32), [b"w"], id=str(k), tag=tag)

    for same, check in ((True, "merged"), (False, "apart")):
        requests = [request(k, same) for k in range(16)]
        before = triton_counts(mesh.endpoints.triton_grpc, "echo", "2")
        replies = await asyncio.gather(*(infer(r, timeout=30) for r in requests))
        answered, rows = np.subtract(triton_counts(mesh.endpoints.triton_grpc, "echo", "2"), before)
        assert rows == 16
        for k, reply in enumerate(replies):
            width = requests[k].inputs[0].shape[1]
            np.testing.assert_array_equal(output(reply, "OUTPUT0"), np.full((1, width), 2 * k + 2, np.int32))
            assert output(reply, "TAG")[0, 0].decode() == requests[k].parameters["tag"].string_param
        if check == "merged":
            assert answered < 16  # the control: the same calls with nothing apart do share requests
        else:
            assert answered == 16 and all(int(output(r, "ROWS")[0, 0]) == 1 for r in replies)


async def test_versions_are_never_merged_with_each_other(mesh, infer):
    requests = [echo_request(np.full((1, 2), k, np.int32), [b"v"], version=str(1 + k % 2)) for k in range(16)]
    before = {v: triton_counts(mesh.endpoints.triton_grpc, "echo", v) for v in ("1", "2")}
    replies = await asyncio.gather(*(infer(r, timeout=30) for r in requests))
    for v in ("1", "2"):
        _, rows = np.subtract(triton_counts(mesh.endpoints.triton_grpc, "echo", v), before[v])
        assert rows == 8  # each version saw exactly its own callers' rows
    for k, reply in enumerate(replies):
        version = 1 + k % 2
        assert reply.model_version == str(version)
        np.testing.assert_array_equal(output(reply, "OUTPUT0"), np.full((1, 2), 2 * k + version, np.int32))


async def test_fraud_rows_merged_from_many_callers_score_as_on_triton_directly(mesh, infer):
    rows = np.vstack([feature_vector(f"acct-{n:05d}", amount=10.0 + 37 * n, merchant_category=n % 10)
                      for n in range(1, 33)])  # fmt: skip
    expected = score_directly(mesh.endpoints.triton_grpc, rows)

    def request(n: int) -> service_pb2.ModelInferRequest:
        row = rows[n : n + 1]
        tensor = InputTensor(name="features", datatype="FP32", shape=list(row.shape))
        if n % 2:
            tensor.contents.fp32_contents.extend(row.ravel().tolist())
            return service_pb2.ModelInferRequest(model_name="fraud", inputs=[tensor])
        return service_pb2.ModelInferRequest(
            model_name="fraud", inputs=[tensor], raw_input_contents=[row.tobytes()]
        )

    replies = await asyncio.gather(*(infer(request(n), timeout=30) for n in range(len(rows))))
    scores = np.array([output(reply, "score")[0, 0] for reply in replies])
    # ONNX Runtime's float results can differ in the last bit with a row's place in a batch (Triton's own
    # batching does the same), so float outputs agree to rounding; echo's integer and BYTES outputs are exact
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


async def test_concurrent_predicts_share_cache_feature_and_inference_calls(mesh):
    def calls(service: str, method: str) -> float:
        series = scrape(mesh.endpoints.service_metrics[service])
        return sum(v for k, v in series.items() if "rpc_requests_total" in k and f'/{method}"' in k)

    instances = [
        gateway_pb2.Instance(
            entity_key=f"acct-{n:05d}",
            features={
                "amount": feature_pb2.Value(double_value=900_000.0 + n * 1.5 + time.time() % 1000),
                "merchant_category": feature_pb2.Value(int64_value=n % 10),
            },
        )  # fmt: skip
        for n in range(1, 33)
    ]
    before = {m: calls(s, m) for s, m in (("cache", "Get"), ("feature", "GetOnlineFeatures"))}
    requests_before, _ = triton_counts(mesh.endpoints.triton_grpc, "fraud", "1")
    async with grpc.aio.insecure_channel(mesh.endpoints.gateway) as channel:
        predict = gateway_pb2_grpc.PredictionServiceStub(channel).Predict
        replies = await asyncio.gather(
            *(
                predict(gateway_pb2.PredictRequest(route="fraud", instances=[i]), timeout=30)
                for i in instances
            )
        )
    requests_after, _ = triton_counts(mesh.endpoints.triton_grpc, "fraud", "1")
    for method, count in before.items():
        service = "cache" if method == "Get" else "feature"
        assert calls(service, method) - count < len(instances), f"{method} calls were not shared"
    assert requests_after - requests_before < len(instances)
    rows = np.vstack([
        feature_vector(i.entity_key, amount=i.features["amount"].double_value,
                       merchant_category=i.features["merchant_category"].int64_value)
        for i in instances
    ])  # fmt: skip
    scores = [reply.predictions[0].score for reply in replies]
    np.testing.assert_allclose(scores, score_directly(mesh.endpoints.triton_grpc, rows), rtol=1e-6)
    assert not any(reply.predictions[0].from_cache for reply in replies)


def _slow_request() -> service_pb2.ModelInferRequest:
    row = np.ones((1, 5), np.float32)
    tensor = InputTensor(name="features", datatype="FP32", shape=list(row.shape))
    return service_pb2.ModelInferRequest(
        model_name="slow", inputs=[tensor], raw_input_contents=[row.tobytes()]
    )


async def test_a_caller_out_of_time_or_gone_leaves_the_merged_call_to_the_others(mesh, marker_dir, infer):
    markers = len(os.listdir(marker_dir))
    patient = [asyncio.ensure_future(infer(_slow_request(), timeout=20)) for _ in range(3)]
    leaving = asyncio.ensure_future(infer(_slow_request(), timeout=20))
    hurried = asyncio.ensure_future(infer(_slow_request(), timeout=0.4))
    started = time.monotonic()
    deadline = started + 15
    while len(os.listdir(marker_dir)) < markers + 1:  # work has reached the (slow) model
        assert time.monotonic() < deadline, "no request reached the slow model"
        await asyncio.sleep(0.02)
    leaving.cancel()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await hurried
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.0  # it left when its time ran out, not when the model finished
    for reply in await asyncio.gather(*patient):
        np.testing.assert_array_equal(output(reply, "score"), [[0.5]])
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_one_callers_bad_input_never_fails_the_callers_merged_with_it(mesh, infer):
    good = [echo_request(np.full((1, 3), k, np.int32), [f"ok {k}".encode()], id=str(k)) for k in range(12)]
    bad = echo_request(np.full((1, 3), 99, np.int32), [b"broken"], id="bad")
    bad.raw_input_contents[1] = b"\x40\x00\x00\x00short"  # claims 64 bytes, holds 5
    results = await asyncio.gather(*(infer(r, timeout=30) for r in [*good[:6], bad, *good[6:]]),
                                   return_exceptions=True)  # fmt: skip
    failed = results.pop(6)
    assert isinstance(failed, grpc.aio.AioRpcError) and failed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "INPUT1" in failed.details()
    for k, reply in enumerate(results):
        assert reply.id == str(k)
        np.testing.assert_array_equal(output(reply, "OUTPUT0"), np.full((1, 3), 2 * k + 2, np.int32))
