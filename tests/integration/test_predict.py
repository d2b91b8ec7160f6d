"""Predict end to end: gateway -> cache -> feature -> inference -> Triton, checked against Triton directly."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from meshserve.feature.v1 import feature_pb2
from meshserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tests.helpers import feature_vector, score_directly, triton_counts


def instance(account: str, amount: float, category: int = 3) -> gateway_pb2.Instance:
    return gateway_pb2.Instance(
        entity_key=account,
        features={
            "amount": feature_pb2.Value(double_value=amount),
            "merchant_category": feature_pb2.Value(int64_value=category),
        },
    )


@pytest.fixture
async def predict(mesh):
    async with grpc.aio.insecure_channel(mesh.endpoints.gateway) as channel:
        stub = gateway_pb2_grpc.PredictionServiceStub(channel)

        async def call(route: str, *instances: gateway_pb2.Instance) -> gateway_pb2.PredictResponse:
            return await stub.Predict(
                gateway_pb2.PredictRequest(route=route, instances=instances), timeout=10
            )

        yield call


async def test_predict_scores_stored_and_request_features_like_triton_directly(mesh, predict):
    reply = await predict("fraud", instance("acct-00010", 812.5, 6))
    assert (reply.route, reply.variant, reply.model_name, reply.model_version) == (
        "fraud",
        "stable",
        "fraud",
        "1",
    )
    (prediction,) = reply.predictions
    expected = score_directly(
        mesh.endpoints.triton_grpc, feature_vector("acct-00010", amount=812.5, merchant_category=6)
    )
    assert prediction.entity_key == "acct-00010"
    assert prediction.score == pytest.approx(float(expected[0]), abs=1e-6)
    assert not prediction.from_cache


async def test_repeated_predict_is_answered_from_cache_and_a_new_input_is_not(predict):
    first = await predict("fraud", instance("acct-00020", 77.0))
    assert not first.predictions[0].from_cache
    # the gateway writes the cache after answering, so the entry lands a moment later
    for _ in range(100):
        again = await predict("fraud", instance("acct-00020", 77.0))
        if again.predictions[0].from_cache:
            break
    assert again.predictions[0].from_cache
    other = await predict("fraud", instance("acct-00020", 78.0))
    assert again.predictions[0].score == first.predictions[0].score
    assert not other.predictions[0].from_cache


async def test_route_with_cache_off_never_answers_from_cache(predict):
    for _ in range(2):
        reply = await predict("fraud-v2", instance("acct-00021", 77.0))
        assert reply.model_version == "2" and not reply.predictions[0].from_cache


async def test_large_predict_is_split_into_model_sized_batches_and_keeps_order(mesh, predict):
    accounts = [f"acct-{n:05d}" for n in range(100, 250)]  # 150 instances > max_batch_size 64
    reply = await predict("fraud-v2", *(instance(a, 100.0 + n) for n, a in enumerate(accounts)))
    assert [p.entity_key for p in reply.predictions] == accounts
    matrix = np.vstack(
        [feature_vector(a, amount=100.0 + n, merchant_category=3) for n, a in enumerate(accounts)]
    )
    expected = score_directly(mesh.endpoints.triton_grpc, matrix, "2")
    np.testing.assert_allclose([p.score for p in reply.predictions], expected, atol=1e-6)


STORED = ["avg_amount_30d", "txn_count_24h", "account_age_days"]  # the fraud model's stored features


async def test_unknown_entity_is_scored_with_registry_defaults_and_the_answer_says_so(mesh, predict):
    reply = await predict("fraud-v2", instance("acct-unknown", 50.0, 2), instance("acct-00012", 50.0, 2))
    unknown, known = reply.predictions
    defaults = np.array([[50.0, 2, 50.0, 0, 0]], dtype=np.float32)  # avg_amount_30d default 50, others 0
    assert unknown.score == pytest.approx(
        float(score_directly(mesh.endpoints.triton_grpc, defaults, "2")[0]), abs=1e-6
    )
    assert list(unknown.defaulted_features) == STORED
    assert list(known.defaulted_features) == []  # every stored feature present


async def test_a_cached_answer_from_defaults_still_says_so(predict):
    first = await predict("fraud", instance("acct-unknown-cached", 61.0, 4), instance("acct-00013", 61.0, 4))
    assert [list(p.defaulted_features) for p in first.predictions] == [STORED, []]
    for _ in range(100):  # the gateway writes the cache after answering
        again = await predict(
            "fraud", instance("acct-unknown-cached", 61.0, 4), instance("acct-00013", 61.0, 4)
        )
        if all(p.from_cache for p in again.predictions):
            break
        await asyncio.sleep(0.02)
    assert all(p.from_cache for p in again.predictions)
    assert [list(p.defaulted_features) for p in again.predictions] == [STORED, []]
    assert [p.score for p in again.predictions] == [p.score for p in first.predictions]


async def test_64_concurrent_predicts_reach_triton_as_real_batches(mesh, predict):
    before = triton_counts(mesh.endpoints.triton_grpc, "fraud", "1")
    # distinct amounts: every Predict misses the cache and reaches Triton
    replies = await asyncio.gather(
        *(predict("fraud", instance(f"acct-{n:05d}", 1000.0 + n)) for n in range(64))
    )
    after = triton_counts(mesh.endpoints.triton_grpc, "fraud", "1")
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert all(not r.predictions[0].from_cache for r in replies)
    assert inferences == 64
    assert executions < inferences, f"{executions} executions for {inferences} rows: no batching"


async def test_request_id_travels_through_every_hop(mesh):
    request_id = "req-trace-7f3a9c"
    async with grpc.aio.insecure_channel(mesh.endpoints.gateway) as channel:
        request = gateway_pb2.PredictRequest(route="fraud-v2", instances=[instance("acct-00030", 55.0)])
        await gateway_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, metadata=(("x-request-id", request_id),), timeout=10
        )
    for process in ("gateway", "feature", "inference"):
        log = mesh.children[process].log_path.read_text()
        assert f'"request_id": "{request_id}"' in log, f"{process} never saw the request id"
