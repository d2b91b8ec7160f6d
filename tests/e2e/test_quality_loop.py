"""The quality loop end to end on real processes: 100,000 predictions through the gateway (Predict and ModelInfer),
labels sent in shuffled order up to a simulated day late through gRPC, REST and `meshserve feedback load`, some
twice, some for ids nobody logged: the monitor's per-variant AUC, log loss, Brier, precision and recall equal
scikit-learn's on the same rows, the duplicate and unknown counts are exact, and a restart of the monitor loses
nothing."""

from __future__ import annotations

import asyncio
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss, precision_score, recall_score, roc_auc_score
from tritonclient.grpc import service_pb2, service_pb2_grpc

from meshserve.feature.registry import load_registry
from meshserve.feature.v1 import feature_pb2
from meshserve.feedback.v1 import feedback_pb2, feedback_pb2_grpc
from meshserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from meshserve.launcher.mesh import REPO_ROOT, LocalMesh, MeshSettings
from meshserve.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from meshserve.samples.fraud import SEED, make_accounts, make_transactions

PREDICT_ROWS = 60_000  # 60 Predicts of 1,000 instances
INFER_ROWS = 40_000  # 625 ModelInfers of 64 rows (the model's max_batch_size)
DUPLICATES = 3_000  # labels sent a second time, a third through each path
UNKNOWN = 700  # labels for ids nobody logged
GRACE_S = 2.0  # how long the monitor waits for the prediction of a label it cannot join yet
DAY_S = 86_400.0

ROUTES = """
routes:
  fraud:
    cache: {enabled: false}
    variants:
      - {name: stable, model: fraud, version: "1", weight: 50}
      - {name: canary, model: fraud, version: "2", weight: 50}
    quality: {enabled: true, task: binary, output: score, index: 0, threshold: 0.5}
"""


@pytest.fixture(scope="module")
async def loop_mesh(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("quality-loop")
    routes = run_dir / "routes.yaml"
    routes.write_text(ROUTES)
    mesh = LocalMesh(
        MeshSettings(
            gateway_port=0, admin_port=0, gateway_http_port=0, run_dir=run_dir, routes_path=routes,
            model_repositories=[REPO_ROOT / "model_repository"], grace_s=5.0,
            extra_env={"MESHSERVE_MONITOR_LABEL_GRACE_S": str(GRACE_S), "MESHSERVE_MONITOR_UPKEEP_INTERVAL_S": "0.5"},
        )
    )  # fmt: skip
    await mesh.start()
    try:
        yield mesh
    finally:
        await mesh.stop()


def transactions(n: int):
    """n fresh transactions of the sample's accounts (those the feature store is seeded with), with the truth."""
    registry = load_registry()
    accounts = make_accounts(registry, np.random.default_rng(SEED))
    rng = np.random.default_rng(SEED + 18)
    parts = [make_transactions(registry, accounts, rng) for _ in range(math.ceil(n / 20_000))]
    account = np.concatenate([p.account for p in parts])[:n]
    features = np.concatenate([p.features for p in parts])[:n]
    label = np.concatenate([p.label for p in parts])[:n]
    vector = registry.models["fraud"].vector
    return [accounts.ids[a] for a in account], features, label, vector


async def predict_all(target: str, ids, accounts, features, vector) -> dict[str, tuple[str, float, float]]:
    """Predict in 1,000-instance requests with the caller's own ids: id -> (variant, score, answered at)."""
    amount, category = vector.index("amount"), vector.index("merchant_category")
    answers: dict[str, tuple[str, float, float]] = {}
    async with grpc.aio.insecure_channel(target) as channel:
        stub = gateway_pb2_grpc.PredictionServiceStub(channel)

        async def one(start: int) -> None:
            instances = [
                gateway_pb2.Instance(
                    entity_key=accounts[i],
                    prediction_id=ids[i],
                    features={
                        "amount": feature_pb2.Value(double_value=float(features[i, amount])),
                        "merchant_category": feature_pb2.Value(int64_value=int(features[i, category])),
                    },
                )  # fmt: skip
                for i in range(start, start + 1000)
            ]
            reply = await stub.Predict(
                gateway_pb2.PredictRequest(route="fraud", instances=instances), timeout=60
            )
            now = time.time()
            for instance, p in zip(instances, reply.predictions, strict=True):
                assert p.prediction_id == instance.prediction_id and p.tier == gateway_pb2.PRIMARY
                answers[p.prediction_id] = (p.variant, p.score, now)

        for batch in range(0, len(ids), 4000):  # four requests in flight
            await asyncio.gather(*(one(s) for s in range(batch, min(batch + 4000, len(ids)), 1000)))
    return answers


async def infer_all(target: str, features: np.ndarray) -> dict[str, tuple[str, float, float]]:
    """ModelInfer in 64-row requests, each with its own base id: row j is `<base>:<j>`."""
    answers: dict[str, tuple[str, float, float]] = {}
    async with grpc.aio.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def one(k: int) -> None:
            rows = features[k * 64 : (k + 1) * 64]
            request = service_pb2.ModelInferRequest(model_name="fraud")
            request.inputs.add(name="features", datatype="FP32", shape=list(rows.shape))
            request.raw_input_contents.append(rows.tobytes())
            call = stub.ModelInfer(
                request, metadata=(("x-meshserve-prediction-id", f"infer-{k}"),), timeout=60
            )
            reply = await call
            trailing = dict(await call.trailing_metadata())
            assert trailing["x-meshserve-prediction-id"] == f"infer-{k}"
            scores = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32)
            now = time.time()
            for j, score in enumerate(scores):
                answers[f"infer-{k}:{j}"] = (trailing["x-meshserve-variant"], float(score), now)

        count = len(features) // 64
        for start in range(0, count, 16):  # sixteen requests in flight
            await asyncio.gather(*(one(k) for k in range(start, min(start + 16, count))))
    return answers


async def quality(target: str) -> monitor_pb2.GetQualityResponse:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = monitor_pb2_grpc.MonitorServiceStub(channel)
        return await stub.GetQuality(monitor_pb2.GetQualityRequest(route="fraud"), timeout=60)


async def until(target: str, done, what: str, timeout_s: float = 120) -> monitor_pb2.GetQualityResponse:
    deadline = time.monotonic() + timeout_s
    while True:
        reply = await quality(target)
        if done(reply):
            return reply
        assert time.monotonic() < deadline, f"{what}: {reply}"
        await asyncio.sleep(0.5)


def send_rest(url: str, labels: list[dict]) -> dict:
    body = json.dumps({"labels": labels, "correct": False}).encode()
    request = urllib.request.Request(url, body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.loads(reply.read())


async def test_the_loop_from_predictions_to_quality_equal_to_scikit_learn(loop_mesh, tmp_path):
    ep = loop_mesh.endpoints
    accounts, features, truth, vector = transactions(PREDICT_ROWS + INFER_ROWS)
    ids = [f"txn-{i}" for i in range(PREDICT_ROWS)]
    answers = await predict_all(ep.gateway, ids, accounts[:PREDICT_ROWS], features[:PREDICT_ROWS], vector)
    answers |= await infer_all(ep.gateway, features[PREDICT_ROWS:])
    label_of = dict(zip(ids, truth[:PREDICT_ROWS].tolist(), strict=True))
    label_of |= {f"infer-{i // 64}:{i % 64}": int(truth[PREDICT_ROWS + i]) for i in range(INFER_ROWS)}
    assert len(answers) == len(label_of) == PREDICT_ROWS + INFER_ROWS
    assert {variant for variant, _, _ in answers.values()} == {"stable", "canary"}

    # every answer is in the log (written behind the replies, in batches) before any label is sent
    await until(ep.monitor, lambda r: sum(v.predictions for v in r.variants) == len(answers), "all logged")

    # labels in shuffled order, each up to a (simulated) day after its prediction, through three doors
    rng = np.random.default_rng(7)
    order = rng.permutation(list(answers))
    late = {i: answers[i][2] + float(rng.uniform(0, DAY_S)) for i in order}
    thirds = np.array_split(order, 3)
    again = [list(rng.choice(part, DUPLICATES // 3, replace=False)) for part in thirds]
    ghosts = [f"ghost-{i}" for i in range(UNKNOWN)]

    async with grpc.aio.insecure_channel(ep.gateway) as channel:
        stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
        grpc_ids = [*thirds[0], *again[0], *ghosts]
        for start in range(0, len(grpc_ids), 1000):
            labels = [
                feedback_pb2.Label(
                    prediction_id=i, value=label_of.get(i, 1), event_time=late.get(i, time.time())
                )
                for i in grpc_ids[start : start + 1000]
            ]
            reply = await stub.SendFeedback(feedback_pb2.SendFeedbackRequest(labels=labels), timeout=60)
            assert not reply.refused, reply.refused[:3]
        misfits = [feedback_pb2.Label(prediction_id=ids[0], value=2.0), feedback_pb2.Label(prediction_id=ids[1],
                   value=float("nan"))]  # fmt: skip
        reply = await stub.SendFeedback(feedback_pb2.SendFeedbackRequest(labels=misfits), timeout=60)
        assert [r.index for r in reply.refused] == [0, 1] and reply.accepted == 0

    rest = f"http://{ep.gateway_http}/v1/feedback"
    rest_ids = [*thirds[1], *again[1]]
    for start in range(0, len(rest_ids), 1000):
        labels = [
            {"prediction_id": i, "label": label_of[i], "event_time": late[i]}
            for i in rest_ids[start : start + 1000]
        ]
        reply = await asyncio.to_thread(send_rest, rest, labels)
        assert not reply.get("refused"), reply

    labels_file = tmp_path / "labels.csv"
    with labels_file.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["prediction_id", "label", "event_time"])
        writer.writerows([i, label_of[i], repr(late[i])] for i in [*thirds[2], *again[2]])
    loaded = await asyncio.to_thread(
        subprocess.run,
        [Path(sys.executable).with_name("meshserve"), "feedback", "load", str(labels_file), "--target", ep.gateway],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "120"},
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    assert not Path(f"{labels_file}.refused.csv").exists()

    total = len(answers)
    done = await until(
        ep.monitor,
        lambda r: sum(v.labelled for v in r.variants) == total and r.feedback.unknown == UNKNOWN,
        "every label joined and the ghosts counted unknown once their grace period is over",
    )
    assert done.feedback.accepted == total
    assert done.feedback.duplicates == DUPLICATES
    assert done.feedback.refused == 2

    for variant in ("stable", "canary"):
        (shown,) = [v for v in done.variants if v.variant == variant]
        rows = [i for i, (v, _, _) in answers.items() if v == variant]
        scores = np.array([answers[i][1] for i in rows], dtype=np.float64)
        labels = np.array([label_of[i] for i in rows])
        assert shown.predictions == shown.labelled == len(rows) and shown.label_coverage == 1.0
        b = shown.binary
        assert b.auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
        assert b.log_loss == pytest.approx(log_loss(labels, scores, labels=[0, 1]), abs=1e-9)
        assert b.brier == pytest.approx(brier_score_loss(labels, scores), abs=1e-9)
        predicted = (scores >= 0.5).astype(int)
        assert b.precision == pytest.approx(precision_score(labels, predicted, zero_division=0), abs=1e-9)
        assert b.recall == pytest.approx(recall_score(labels, predicted, zero_division=0), abs=1e-9)
        assert 0 <= shown.label_delay_p50_s <= shown.label_delay_p90_s <= DAY_S

    # a restart of the monitor loses nothing: the same numbers from the same store afterwards
    monitor = loop_mesh.children["monitor"]
    before_pid = monitor.pid
    os.kill(before_pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while True:
        try:
            after = await quality(ep.monitor)
            if monitor.pid != before_pid:
                break
        except grpc.aio.AioRpcError:
            pass
        assert time.monotonic() < deadline, "the monitor did not come back"
        await asyncio.sleep(0.5)
    assert [(v.variant, v.predictions, v.labelled, v.binary.auc) for v in after.variants] == [
        (v.variant, v.predictions, v.labelled, v.binary.auc) for v in done.variants
    ]
    assert (after.feedback.accepted, after.feedback.duplicates) == (total, DUPLICATES)
