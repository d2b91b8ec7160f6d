"""Traffic management against the real mesh: fallback tiers, default answers, deadlines, stickiness, overrides.

Failures are injected by the gateway's own fault injection (declared in tests/fixtures/routes.yaml), so the
canary really fails in the path the mesh serves, while Triton and every service stay real.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from meshserve.admin.v1 import admin_pb2, admin_pb2_grpc
from meshserve.feature.v1 import feature_pb2
from meshserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tests.helpers import feature_vector, score_directly


def row_request(route: str, row: np.ndarray) -> service_pb2.ModelInferRequest:
    """A one-row ModelInfer for `route`, tensor bytes raw as tritonclient sends them."""
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name="features", datatype="FP32", shape=list(row.shape)
    )
    return service_pb2.ModelInferRequest(
        model_name=route, inputs=[tensor], raw_input_contents=[row.tobytes()]
    )


def instance(account: str, amount: float = 120.0) -> gateway_pb2.Instance:
    return gateway_pb2.Instance(
        entity_key=account,
        features={
            "amount": feature_pb2.Value(double_value=amount),
            "merchant_category": feature_pb2.Value(int64_value=2),
        },
    )


@pytest.fixture
async def stub(mesh):
    async with grpc.aio.insecure_channel(mesh.endpoints.gateway) as channel:
        yield gateway_pb2_grpc.PredictionServiceStub(channel)


async def predict(stub, route: str, *instances, timeout: float = 10, metadata=()):
    request = gateway_pb2.PredictRequest(route=route, instances=instances)
    return await stub.Predict(request, timeout=timeout, metadata=metadata)


async def test_failing_canary_under_load_costs_callers_nothing_and_reports_the_fallback_tier(mesh, stub):
    accounts = [f"acct-{n:05d}" for n in range(200)]
    semaphore = asyncio.Semaphore(16)

    async def one(account):
        async with semaphore:
            return await predict(stub, "canary-down", instance(account))

    replies = await asyncio.gather(*(one(a) for a in accounts))  # any error would raise here
    tiers = {(p.variant, p.tier) for r in replies for p in r.predictions}
    assert tiers <= {("stable", gateway_pb2.PRIMARY), ("stable", gateway_pb2.FALLBACK)}
    assert ("stable", gateway_pb2.FALLBACK) in tiers  # the canary's half fell back
    expected = score_directly(
        mesh.endpoints.triton_grpc,
        np.vstack([feature_vector(a, amount=120.0, merchant_category=2) for a in accounts]),
    )
    np.testing.assert_allclose([r.predictions[0].score for r in replies], expected, atol=1e-6)


async def test_every_tier_down_answers_the_marked_default_quickly(stub):
    started = time.monotonic()
    replies = [await predict(stub, "all-down", instance(f"acct-{n:05d}")) for n in range(20)]
    assert time.monotonic() - started < 5
    for reply in replies:
        (p,) = reply.predictions
        assert (p.tier, p.score, p.variant, p.model_version) == (gateway_pb2.DEFAULT, 0.5, "", "")


async def test_every_tier_down_without_a_default_is_unavailable(stub):
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await predict(stub, "all-down-no-default", instance("acct-00001"))
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "every tier of route 'all-down-no-default' failed" in failure.value.details()


async def test_slow_canary_with_a_200ms_deadline_answers_from_the_fallback_in_time(stub):
    started = time.monotonic()
    try:
        reply = await predict(stub, "slow-canary", instance("acct-00007"), timeout=0.2)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    else:
        assert (reply.predictions[0].variant, reply.predictions[0].tier) == ("stable", gateway_pb2.FALLBACK)
    assert time.monotonic() - started < 0.2 + 0.1


async def test_sticky_split_keeps_each_entity_on_one_variant(stub):
    accounts = [f"acct-{n:05d}" for n in range(300)]
    first = await predict(stub, "sticky", *(instance(a) for a in accounts))
    again = await predict(stub, "sticky", *(instance(a, amount=999.0) for a in reversed(accounts)))
    by_entity = {p.entity_key: p.variant for p in first.predictions}
    assert {p.entity_key: p.variant for p in again.predictions} == by_entity
    versions = {p.variant: p.model_version for p in first.predictions}
    assert versions == {"stable": "1", "canary": "2"}
    share = sum(v == "canary" for v in by_entity.values()) / len(accounts)
    assert 0.15 < share < 0.35  # 25 % by weight, 300 entities


async def test_override_header_forces_the_canary(stub):
    reply = await predict(
        stub, "fraud", instance("acct-00003"), metadata=(("x-meshserve-variant", "canary"),)
    )
    assert (reply.predictions[0].variant, reply.predictions[0].model_version) == ("canary", "2")
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await predict(stub, "fraud", instance("acct-00003"), metadata=(("x-meshserve-variant", "blue"),))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_model_infer_falls_back_and_says_so_in_trailing_metadata(mesh):
    row = feature_vector("acct-00005", amount=60.0, merchant_category=1)
    request = row_request("canary-down", row)
    async with grpc.aio.insecure_channel(mesh.endpoints.gateway) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        seen = set()
        for _ in range(20):
            call = stub.ModelInfer(request, timeout=10)
            reply = await call
            trailing = dict(await call.trailing_metadata())
            seen.add((trailing["x-meshserve-variant"], trailing["x-meshserve-tier"]))
            assert reply.model_name == "canary-down" and reply.model_version == "1"
    assert seen <= {("stable", "primary"), ("stable", "fallback")} and ("stable", "fallback") in seen


@pytest.mark.parametrize("deadline_s", [0.5, 3.0])
async def test_caller_deadline_reaches_triton_as_a_per_request_timeout_within_the_budget(mesh, deadline_s):
    request = row_request("slow", np.ones((1, 5), np.float32))
    async with grpc.aio.insecure_channel(mesh.endpoints.gateway) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        if deadline_s < 1.0:  # the slow model sleeps 1 s: the budget runs out first
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await stub.ModelInfer(request, timeout=deadline_s)
            assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - started < deadline_s + 0.1
            return
        reply = await stub.ModelInfer(request, timeout=deadline_s)
    index = [o.name for o in reply.outputs].index("timeout_us")
    received_us = int(np.frombuffer(reply.raw_output_contents[index], np.int64)[0])
    assert 0 < received_us <= deadline_s * 1_000_000
    assert received_us > (deadline_s - 0.5) * 1_000_000  # the hops took little of the budget


async def test_blue_green_switch_under_load_fails_no_request(mesh):
    row = feature_vector("acct-00009", amount=410.0, merchant_category=5)
    request = row_request("bluegreen", row)
    served: list[list[str]] = [[] for _ in range(8)]  # versions each caller was answered by, in its order
    stop = asyncio.Event()
    async with (
        grpc.aio.insecure_channel(mesh.endpoints.gateway) as channel,
        grpc.aio.insecure_channel(mesh.endpoints.admin) as admin_channel,
    ):
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def load(mine: list[str]):
            while not stop.is_set():
                mine.append((await stub.ModelInfer(request, timeout=10)).model_version)  # a failure raises

        loaders = [asyncio.create_task(load(mine)) for mine in served]
        await asyncio.sleep(0.3)
        admin = admin_pb2_grpc.AdminServiceStub(admin_channel)
        token = (mesh.settings.run_dir / "admin-token").read_text().strip()  # `up` wrote it; the CLI sends it
        status = await admin.SwitchVersion(
            admin_pb2.SwitchVersionRequest(route="bluegreen", variant="live", version="2"), timeout=120,
            metadata=(("authorization", f"Bearer {token}"),),
        )  # fmt: skip
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*loaders)
    assert [(v.name, v.version) for v in status.variants] == [("live", "2")]
    for mine in served:  # every caller saw one switch, never back (callers' answers interleave in time)
        assert mine[0] == "1" and mine[-1] == "2"
        assert "1" not in mine[mine.index("2") :]
    client = triton_grpc.InferenceServerClient(mesh.endpoints.triton_grpc)
    assert client.is_model_ready("bluegreen", "2") and not client.is_model_ready("bluegreen", "1")


async def test_canary_unloaded_from_triton_under_load_costs_callers_nothing(mesh):
    row = feature_vector("acct-00012", amount=75.0, merchant_category=3)
    request = row_request("doomed-canary", row)
    seen: list[tuple[str, str]] = []
    canary_answered, enough = asyncio.Event(), asyncio.Event()
    target = [10**9]  # how many answers `enough` waits for; set once the canary is unloaded
    async with grpc.aio.insecure_channel(mesh.endpoints.gateway) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def load():
            while not enough.is_set():
                call = stub.ModelInfer(request, timeout=10)
                await call  # a failed request raises here, and the test fails at gather
                trailing = dict(await call.trailing_metadata())
                seen.append((trailing["x-meshserve-variant"], trailing["x-meshserve-tier"]))
                if seen[-1] == ("canary", "primary"):
                    canary_answered.set()
                if len(seen) >= target[0]:
                    enough.set()

        loaders = [asyncio.create_task(load()) for _ in range(8)]
        try:
            await asyncio.wait_for(canary_answered.wait(), 20)
            before = len(seen)
            client = triton_grpc.InferenceServerClient(mesh.endpoints.triton_grpc)
            await asyncio.to_thread(client.unload_model, "doomed")
            target[0] = len(seen) + 100
            await asyncio.wait_for(enough.wait(), 30)
        finally:
            enough.set()
            await asyncio.gather(*loaders)
    after = seen[before:]
    assert ("stable", "fallback") in after  # the canary's share was answered by stable
    assert ("canary", "primary") not in after[-50:]  # and the dead canary stopped answering
