"""Missing or stale features are never used silently (route policy), and drift on real traffic is detected."""

from __future__ import annotations

import logging

import grpc
import numpy as np
import pytest

from meshserve.admin.v1 import admin_pb2
from meshserve.feature.registry import load_registry
from meshserve.gateway.v1 import gateway_pb2
from meshserve.samples.fraud import SEED, make_accounts, make_transactions
from tests.integration.gateways import in_process_gateway

ROUTES = """
routes:
  strict:
    cache: {enabled: false}
    features: {on_missing: reject, on_stale: reject}
    variants: [{name: stable, model: fraud, version: "1", weight: 100}]
  lenient:
    cache: {enabled: false}
    variants: [{name: stable, model: fraud, version: "1", weight: 100}]
  fall-back:
    cache: {enabled: false}
    features: {on_missing: fallback}
    default: {score: 0.25}
    variants: [{name: stable, model: fraud, version: "1", weight: 100}]
"""


@pytest.fixture
async def gateway(mesh, tmp_path):
    async with in_process_gateway(
        mesh, tmp_path, ROUTES, drift_window=300, drift_threshold=0.2, drift_check_s=3600
    ) as gw:
        yield gw


async def test_missing_features_follow_the_routes_policy(gateway):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await gateway.predict("strict", account="no-such-account")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "feature 'avg_amount_30d' of 'no-such-account' is NOT_FOUND" in refused.value.details()
    lenient = await gateway.predict("lenient", account="no-such-account")  # registry defaults
    assert lenient.tier == gateway_pb2.PRIMARY
    fallen = await gateway.predict("fall-back", account="no-such-account")
    assert (fallen.tier, fallen.score) == (gateway_pb2.DEFAULT, 0.25)
    present = await gateway.predict("strict", account="acct-00005")  # seeded: every feature present
    assert present.tier == gateway_pb2.PRIMARY


def traffic(seed: int, amount_factor: float, count: int) -> list[tuple[str, float, int]]:
    registry = load_registry()
    accounts = make_accounts(registry, np.random.default_rng(seed))
    txns = make_transactions(registry, accounts, np.random.default_rng(seed))
    vector = registry.models["fraud"].vector
    ids = [f"acct-{int(n):05d}" for n in txns.account[:count]]  # the feature store holds these accounts
    amounts = txns.features[:count, vector.index("amount")] * amount_factor
    categories = txns.features[:count, vector.index("merchant_category")].astype(int)
    return list(zip(ids, amounts.tolist(), categories.tolist(), strict=True))


async def test_drift_is_low_on_reference_like_traffic_and_names_a_shifted_feature(gateway, caplog):
    async def send(rows):
        for account, amount, category in rows:
            request = gateway_pb2.PredictRequest(
                route="lenient", instances=[gateway_pb2.Instance(entity_key=account)]
            )
            request.instances[0].features["amount"].double_value = min(amount, 999_999.0)
            request.instances[0].features["merchant_category"].int64_value = category
            await gateway.predict_stub.Predict(request, timeout=10)

    await send(traffic(SEED + 1, 1.0, 300))
    calm = await gateway.admin.GetDrift(admin_pb2.GetDriftRequest(), timeout=5)
    psi = {f.feature: f.psi for f in calm.features}
    assert psi["amount"] < 0.2 and psi["merchant_category"] < 0.2
    assert not any(f.drifting for f in calm.features)

    caplog.set_level(logging.WARNING, logger="meshserve.feature.drift")
    await send(traffic(SEED + 2, 6.0, 300))  # amounts six times larger than in training
    shifted = await gateway.admin.GetDrift(admin_pb2.GetDriftRequest(), timeout=5)
    psi = {f.feature: f.psi for f in shifted.features}
    assert psi["amount"] > 0.2 and psi["merchant_category"] < 0.2
    assert {f.feature for f in shifted.features if f.drifting} == {"amount"}
    warnings = [
        r for r in caplog.records if r.name == "meshserve.feature.drift" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1 and "amount" in warnings[0].getMessage()
