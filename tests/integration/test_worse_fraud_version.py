"""The test-only `fraud` version 3 (trained on shuffled labels, tests/fixtures/shuffled_fraud.py) served by a real
Triton from tests/fixtures/fraud_v3_repository beside versions 1 and 2: it answers Predict like them, without
errors, with scores of its own; a real rollout judged on quality rolls it back as a canary naming AUC, while its
error-rate and p99 criteria alone found nothing wrong (labels for every answer sent through the gateway's feedback
API to the mesh's monitor)."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest

from meshserve.admin.v1 import admin_pb2
from meshserve.feature.registry import load_registry
from meshserve.feature.v1 import feature_pb2
from meshserve.feedback.v1 import feedback_pb2, feedback_pb2_grpc
from meshserve.gateway.v1 import gateway_pb2
from meshserve.launcher.mesh import LocalMesh, MeshSettings
from meshserve.samples.fraud import SEED, make_accounts, make_transactions
from tests.helpers import FIXTURES
from tests.integration.gateways import in_process_gateway

ROUTES = """
routes:
  fraud:
    cache: {enabled: false}
    variants:
      - {name: stable, model: fraud, version: "2", weight: 100}
      - {name: canary, model: fraud, version: "3", weight: 0}
  worse:
    cache: {enabled: false}
    variants:
      - {name: canary, model: fraud, version: "3", weight: 100}
"""


@pytest.fixture(scope="module")
async def worse_mesh(tmp_path_factory):
    mesh = LocalMesh(
        MeshSettings(
            gateway_port=0, admin_port=0, gateway_http_port=0, run_dir=tmp_path_factory.mktemp("worse"),
            model_repositories=[FIXTURES / "fraud_v3_repository"], grace_s=5.0,
        )
    )  # fmt: skip
    await mesh.start()
    try:
        yield mesh
    finally:
        await mesh.stop()


async def test_version_3_answers_beside_versions_1_and_2_without_errors(worse_mesh, tmp_path):
    async with in_process_gateway(worse_mesh, tmp_path, ROUTES) as gateway:
        amounts = [15.0, 90.0, 480.0, 2400.0]
        worse = [await gateway.predict("worse", account="acct-00042", amount=a) for a in amounts]
        stable = [await gateway.predict("fraud", account="acct-00042", amount=a) for a in amounts]
        assert {(p.variant, p.model_version) for p in worse} == {("canary", "3")}
        assert {(p.variant, p.model_version) for p in stable} == {("stable", "2")}
        assert all(0.0 <= p.score <= 1.0 for p in worse)
        assert [p.score for p in worse] != [p.score for p in stable]  # a model of its own
        assert (await gateway.status("worse")).variants[0].errors == 0


ROLLOUT_ROUTES = """
routes:
  fraud:
    cache: {enabled: false}
    variants:
      - {name: stable, model: fraud, version: "2", weight: 100}
      - {name: canary, model: fraud, version: "3", weight: 0}
    quality: {enabled: true, task: binary, threshold: 0.5}
    rollout:
      canary: canary
      steps: [50, 100]
      interval_s: 1
      min_requests: 20
      max_error_rate_increase: 0.02
      max_p99_ratio: 5.0
      quality: {min_labels: 200, max_wait_s: 120, max_auc_decrease: 0.01}
"""


async def test_a_canary_that_is_fast_and_wrong_is_rolled_back_on_auc(worse_mesh, tmp_path):
    registry = load_registry()
    accounts = make_accounts(registry, np.random.default_rng(SEED))
    txns = make_transactions(registry, accounts, np.random.default_rng(SEED + 3))
    vector = registry.models["fraud"].vector
    amount, category = vector.index("amount"), vector.index("merchant_category")

    async with in_process_gateway(worse_mesh, tmp_path, ROLLOUT_ROUTES) as gateway:
        gateway.service.rollouts.compare_every_s = 0.5  # look often: the test's traffic is quick
        await gateway.admin.SetRollout(
            admin_pb2.SetRolloutRequest(route="fraud", action=admin_pb2.SetRolloutRequest.START), timeout=5
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.service.port}") as channel:
            labels_stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
            deadline, n, status = time.monotonic() + 120, 0, None
            while time.monotonic() < deadline:
                rows = range(n, n + 100)
                n += 100
                request = gateway_pb2.PredictRequest(
                    route="fraud",
                    instances=[
                        gateway_pb2.Instance(
                            entity_key=accounts.ids[txns.account[i % len(txns.label)]],
                            prediction_id=f"t-{i}",
                            features={
                                "amount": feature_pb2.Value(
                                    double_value=float(txns.features[i % len(txns.label), amount])
                                ),
                                "merchant_category": feature_pb2.Value(
                                    int64_value=int(txns.features[i % len(txns.label), category])
                                ),
                            },
                        )  # fmt: skip
                        for i in rows
                    ],
                )
                reply = await gateway.predict_stub.Predict(request, timeout=10)
                labels = [
                    feedback_pb2.Label(
                        prediction_id=p.prediction_id, value=float(txns.label[i % len(txns.label)])
                    )
                    for i, p in zip(rows, reply.predictions, strict=True)
                ]
                await labels_stub.SendFeedback(feedback_pb2.SendFeedbackRequest(labels=labels), timeout=10)
                status = await gateway.status("fraud")
                if status.rollout.state != "running":
                    break
                await asyncio.sleep(0.05)

    assert status is not None and status.rollout.state == "rolled_back", status
    assert "AUC" in status.rollout.last_reason, status.rollout.last_reason
    judged = status.rollout.last_judgement
    assert judged.verdict == "breach"
    by_metric = {c.metric: c for c in judged.comparisons}
    error_rate = by_metric["error rate"]
    assert error_rate.verdict != "breach" and judged.canary.errors == 0  # errors alone: nothing wrong
    assert judged.canary.p99_seconds <= judged.max_p99_ratio * judged.baseline.p99_seconds  # nor latency
    auc = by_metric["AUC"]
    assert auc.verdict == "breach" and auc.canary < auc.baseline - 0.01
    assert {v.name: v.weight for v in status.variants} == {"stable": 100, "canary": 0}
