"""Prediction ids and the prediction log on a real gateway (in this process, in front of the session mesh's
services), writing to a stand-in monitor service on a free port (tests/integration/fake_monitor.py): every answer
has an id (the caller's own or one made), every answer on a route with a quality block is logged with the right
fields (shadows under the same ids, ModelInfer scores equal to the outputs returned), a monitor that is dead, hangs
or restarts never fails or slows an answer, and labels sent over gRPC and REST reach the monitor, for callers with
the role."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.error
import urllib.request
from collections import Counter

import grpc
import numpy as np
import pytest
import pytest_asyncio
from tritonclient.grpc import service_pb2, service_pb2_grpc

from meshserve.core.auth import ApiKeyStore
from meshserve.core.process import free_port
from meshserve.feature.registry import load_registry
from meshserve.feature.v1 import feature_pb2
from meshserve.feedback.v1 import feedback_pb2, feedback_pb2_grpc
from meshserve.gateway.v1 import gateway_pb2
from meshserve.monitor.v1 import monitor_pb2
from tests.helpers import feature_vector, score_directly, scrape
from tests.integration.fake_monitor import FakeMonitor, serving
from tests.integration.gateways import Gateway, in_process_gateway

ROUTES = """
routes:
  fraud:
    cache: {enabled: false}
    quality: {task: binary, output: score, index: 0, threshold: 0.4, sample_features: 1.0}
    shadows: [{variant: candidate, percent: 100}]
    variants:
      - {name: stable, model: fraud, version: "1", weight: 100}
      - {name: candidate, model: fraud, version: "2", weight: 0}
  cached:
    cache: {enabled: true, ttl_s: 30}
    quality: {}
    variants: [{name: stable, model: fraud, version: "1", weight: 100}]
  down:
    cache: {enabled: false}
    default: {score: 0.5}
    quality: {}
    variants: [{name: stable, model: fraud, version: "1", weight: 100}]
    faults: [{variant: stable, abort_percent: 100}]
  single:  # one answer, one record
    cache: {enabled: false}
    quality: {}
    variants: [{name: stable, model: fraud, version: "1", weight: 100}]
  unlogged:
    cache: {enabled: false}
    variants: [{name: stable, model: fraud, version: "1", weight: 100}]
"""
ID_HEADER = "x-meshserve-prediction-id"
NEW_ID = re.compile(r"[0-9a-f]{32}")
VECTOR = load_registry().models["fraud"].vector
ACCOUNTS = [("acct-00011", 90.0), ("acct-00012", 12.5), ("acct-00013", 4_800.0)]
ROWS = np.vstack([feature_vector(a, amount=x, merchant_category=4) for a, x in ACCOUNTS])


def instance(account: str, amount: float, prediction_id: str = "") -> gateway_pb2.Instance:
    return gateway_pb2.Instance(
        entity_key=account,
        prediction_id=prediction_id,
        features={
            "amount": feature_pb2.Value(double_value=amount),
            "merchant_category": feature_pb2.Value(int64_value=4),
        },
    )


def predict_request(route: str, *instances: gateway_pb2.Instance) -> gateway_pb2.PredictRequest:
    return gateway_pb2.PredictRequest(route=route, instances=list(instances))


def infer_request(rows: np.ndarray, route: str = "fraud") -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=route)
    request.inputs.add(name="features", datatype="FP32", shape=list(rows.shape))
    request.outputs.add(name="score")
    request.raw_input_contents.append(rows.astype(np.float32).tobytes())
    return request


def features_of(row: np.ndarray) -> dict[str, float]:
    return dict(zip(VECTOR, row.astype(np.float64).tolist(), strict=True))


class Logged:
    def __init__(self, gateway: Gateway, monitor: FakeMonitor, channel: grpc.aio.Channel) -> None:
        self.gateway = gateway
        self.monitor = monitor
        self.oip = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        self.feedback = feedback_pb2_grpc.FeedbackServiceStub(channel)
        self.rest = f"http://127.0.0.1:{gateway.service.http_port}"

    async def infer(self, rows: np.ndarray, prediction_id: str | None = None, route: str = "fraud"):
        """A ModelInfer: (its scores, the prediction id in its trailing metadata)."""
        metadata = ((ID_HEADER, prediction_id),) if prediction_id is not None else ()
        call = self.oip.ModelInfer(infer_request(rows, route), metadata=metadata, timeout=10)
        reply = await call
        trailing = dict(await call.trailing_metadata())
        return np.frombuffer(reply.raw_output_contents[0], np.float32), trailing[ID_HEADER]

    async def post(self, path: str, body: bytes, headers: dict[str, str]):
        """A raw REST POST: (status, headers, body), off the loop that serves it."""

        def send():
            request = urllib.request.Request(f"{self.rest}{path}", data=body, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=30) as reply:
                    return reply.status, dict(reply.headers), reply.read()
            except urllib.error.HTTPError as error:
                return error.code, dict(error.headers), error.read()

        return await asyncio.to_thread(send)


@pytest_asyncio.fixture(scope="module")
async def logged(mesh, tmp_path_factory):
    monitor = FakeMonitor()
    async with (
        serving(monitor) as port,
        in_process_gateway(
            mesh, tmp_path_factory.mktemp("logged"), ROUTES, monitor_url=f"127.0.0.1:{port}"
        ) as gw,
        grpc.aio.insecure_channel(f"127.0.0.1:{gw.service.port}") as channel,
    ):
        yield Logged(gw, monitor, channel)


# -- Predict -----------------------------------------------------------------------------------------------------
async def test_predict_answers_carry_the_callers_ids_and_made_ones_with_row_suffixes(logged):
    reply = await logged.gateway.predict_stub.Predict(
        predict_request(
            "fraud", instance(*ACCOUNTS[0], "txn-1"), instance(*ACCOUNTS[1]), instance(*ACCOUNTS[2])
        ),
        timeout=10,
    )
    first, *made = [p.prediction_id for p in reply.predictions]
    assert first == "txn-1"
    base = made[0].rsplit(":", 1)[0]
    assert NEW_ID.fullmatch(base) and made == [f"{base}:1", f"{base}:2"]
    single = await logged.gateway.predict_stub.Predict(
        predict_request("fraud", instance(*ACCOUNTS[0])), timeout=10
    )
    assert NEW_ID.fullmatch(single.predictions[0].prediction_id)  # one instance: no suffix
    again = await logged.gateway.predict_stub.Predict(
        predict_request("fraud", instance(*ACCOUNTS[0])), timeout=10
    )
    assert again.predictions[0].prediction_id != single.predictions[0].prediction_id


async def test_every_predict_answer_and_its_shadows_are_logged_under_the_same_id(logged, mesh):
    before = time.time()
    reply = await logged.gateway.predict_stub.Predict(
        predict_request("fraud", *(instance(a, x, f"order-{n}") for n, (a, x) in enumerate(ACCOUNTS))),
        timeout=10,
    )
    ids = [p.prediction_id for p in reply.predictions]
    monitor = logged.monitor
    await monitor.wait_for(
        lambda: set(ids) <= monitor.by_id().keys() and set(ids) <= monitor.by_id(True).keys()
    )
    shadow_scores = await asyncio.to_thread(score_directly, mesh.endpoints.triton_grpc, ROWS, "2")
    for n, answer in enumerate(reply.predictions):
        record = monitor.by_id()[answer.prediction_id]
        assert (record.route, record.variant, record.model, record.model_version, record.tier, record.shadow) == (
            "fraud", "stable", "fraud", "1", "model", False,
        )  # fmt: skip
        assert (record.task, record.threshold) == (monitor_pb2.BINARY, pytest.approx(0.4))
        assert record.score == answer.score  # the very score returned
        assert before <= record.time <= time.time()
        assert dict(record.features) == features_of(ROWS[n])  # sample_features 1.0: all of them
        shadow = monitor.by_id(shadow=True)[answer.prediction_id]
        assert (shadow.variant, shadow.model, shadow.model_version, shadow.tier) == (
            "candidate",
            "fraud",
            "2",
            "model",
        )
        assert shadow.score == pytest.approx(float(shadow_scores[n]), rel=1e-6)
        assert dict(shadow.features) == features_of(ROWS[n])


async def test_cache_and_default_answers_are_logged_with_their_tier_and_unlogged_routes_are_not(logged):
    stub, monitor = logged.gateway.predict_stub, logged.monitor
    account = ("acct-00021", 321.0)
    await stub.Predict(predict_request("cached", instance(*account, "c-1")), timeout=10)
    hit = (await stub.Predict(predict_request("cached", instance(*account, "c-2")), timeout=10)).predictions[
        0
    ]
    assert hit.from_cache
    quiet = (
        await stub.Predict(predict_request("unlogged", instance(*account, "u-1")), timeout=10)
    ).predictions[0]
    default = (
        await stub.Predict(predict_request("down", instance(*account, "d-1")), timeout=10)
    ).predictions[0]
    assert default.tier == gateway_pb2.DEFAULT and quiet.prediction_id == "u-1"
    await monitor.wait_for(lambda: {"c-1", "c-2", "d-1"} <= monitor.by_id().keys())
    records = monitor.by_id()
    assert (records["c-1"].tier, records["c-2"].tier) == ("model", "cache")
    assert records["c-2"].score == hit.score and not records["c-2"].features  # sample_features 0
    assert (records["d-1"].tier, records["d-1"].variant, records["d-1"].model, records["d-1"].score) == (
        "default", "", "", 0.5,
    )  # fmt: skip
    assert "u-1" not in records  # sent in order: had it been logged, it would be here before d-1


async def test_bad_predict_ids_are_invalid_argument_naming_the_instance_and_the_next_request_succeeds(logged):
    stub = logged.gateway.predict_stub
    for ids, problem in (
        (["x" * 129], "instance 0: prediction_id must be 1 to 128 printable ASCII characters; got 129"),
        (["same", "same"], "instance 1: prediction_id 'same' is instance 0's too"),
    ):
        instances = [instance(*ACCOUNTS[n], i) for n, i in enumerate(ids)]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Predict(predict_request("fraud", *instances), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details().startswith(problem)
        ok = await stub.Predict(predict_request("fraud", instance(*ACCOUNTS[0], "x" * 128)), timeout=10)
        assert ok.predictions[0].prediction_id == "x" * 128


# -- ModelInfer, REST, streams -------------------------------------------------------------------------------------
async def test_model_infer_returns_the_callers_base_or_a_new_one_and_logs_each_row_with_its_output(logged):
    scores, given = await logged.infer(ROWS, "batch-7")
    assert given == "batch-7"
    _, made = await logged.infer(ROWS[:2])
    assert NEW_ID.fullmatch(made)
    one, single = await logged.infer(ROWS[:1], "txn-single")
    monitor = logged.monitor
    wanted = {"batch-7:0", "batch-7:1", "batch-7:2", f"{made}:0", f"{made}:1", "txn-single"}
    await monitor.wait_for(lambda: wanted <= monitor.by_id().keys())
    records = monitor.by_id()
    assert [records[f"batch-7:{n}"].score for n in range(3)] == scores.astype(np.float64).tolist()
    assert records["txn-single"].score == float(one[0]) and single == "txn-single"
    for n in range(3):
        record = records[f"batch-7:{n}"]
        assert (record.route, record.variant, record.model, record.model_version, record.tier) == (
            "fraud", "stable", "fraud", "1", "model",
        )  # fmt: skip
        assert dict(record.features) == features_of(ROWS[n])  # the registry names the model's input
    assert not monitor.by_id(shadow=True).keys() & wanted  # shadows mirror Predict only


async def test_bad_model_infer_ids_are_invalid_argument_naming_the_header_and_the_next_request_succeeds(
    logged,
):
    for rows, given, problem in (
        (ROWS[:1], "y" * 129, f"header {ID_HEADER} must be 1 to 128 printable ASCII characters; got 129"),
        (ROWS, "z" * 127, f"header {ID_HEADER} is 127 characters: too long for 3 rows"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await logged.infer(rows, given)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details().startswith(problem)
        _, ok = await logged.infer(ROWS[:1], "y" * 128)
        assert ok == "y" * 128


async def test_rest_takes_the_id_header_and_answers_it(logged):
    body = json.dumps({"inputs": [{"name": "features", "shape": [2, 5], "datatype": "FP32",
                                   "data": ROWS[:2].tolist()}]}).encode()  # fmt: skip
    json_type = {"Content-Type": "application/json"}
    status, headers, reply = await logged.post(
        "/v2/models/fraud/infer", body, {**json_type, ID_HEADER: "rest-1"}
    )
    assert status == 200 and headers[ID_HEADER] == "rest-1"
    scores = json.loads(reply)["outputs"][0]["data"]
    status, headers, _ = await logged.post("/v2/models/fraud/infer", body, json_type)
    assert status == 200 and NEW_ID.fullmatch(headers[ID_HEADER])
    status, _, refused = await logged.post(
        "/v2/models/fraud/infer", body, {**json_type, ID_HEADER: "r" * 200}
    )
    assert status == 400 and json.loads(refused)["error"].startswith(f"header {ID_HEADER} must be 1 to 128")
    monitor = logged.monitor
    await monitor.wait_for(lambda: {"rest-1:0", "rest-1:1"} <= monitor.by_id().keys())
    assert [monitor.by_id()[f"rest-1:{n}"].score for n in range(2)] == scores


async def test_a_stream_names_each_requests_id_in_its_parameter_both_ways(logged):
    own = infer_request(ROWS[:1])
    own.parameters["prediction_id"].string_param = "stream-1"
    own.id = "a"
    made = infer_request(ROWS[1:])
    made.id = "b"
    replies = {}
    async for response in logged.oip.ModelStreamInfer(iter([own, made]), timeout=10):
        assert not response.error_message
        replies[response.infer_response.id] = response.infer_response
    assert replies["a"].parameters["prediction_id"].string_param == "stream-1"
    base = replies["b"].parameters["prediction_id"].string_param
    assert NEW_ID.fullmatch(base)
    monitor = logged.monitor
    await monitor.wait_for(lambda: {"stream-1", f"{base}:0", f"{base}:1"} <= monitor.by_id().keys())
    scores = np.frombuffer(replies["b"].raw_output_contents[0], np.float32)
    assert [monitor.by_id()[f"{base}:{n}"].score for n in range(2)] == scores.astype(np.float64).tolist()


async def test_records_go_in_batches_and_the_log_counts_what_it_logged(logged):
    monitor = logged.monitor
    instances = [instance(f"acct-{n:05d}", 10.0 + n, f"bulk-{n}") for n in range(1, 201)]
    await logged.gateway.predict_stub.Predict(predict_request("fraud", *instances), timeout=30)
    await monitor.wait_for(lambda: {f"bulk-{n}" for n in range(1, 201)} <= monitor.by_id().keys())
    assert max(monitor.batches) >= 200  # one Predict's answers leave together, not one call each
    writer = logged.gateway.service.prediction_log
    await writer.flush(10)
    assert writer.logged == len(monitor.records) and writer.dropped == writer.failed == 0
    metrics = scrape(f"http://127.0.0.1:{logged.gateway.service.metrics.port}/metrics")
    assert metrics['meshserve_gateway_prediction_log_records_total{outcome="logged"}'] >= len(monitor.records)
    assert metrics['meshserve_gateway_prediction_log_records_total{outcome="dropped"}'] == 0


# -- labels ------------------------------------------------------------------------------------------------------
async def test_labels_over_grpc_and_rest_reach_the_monitor_and_its_answer_comes_back(logged):
    monitor = logged.monitor
    request = feedback_pb2.SendFeedbackRequest(
        labels=[feedback_pb2.Label(prediction_id="order-0", value=1, event_time=1_733_600_000.0),
                feedback_pb2.Label(prediction_id="order-1", value=2)],
    )  # fmt: skip
    reply = await logged.feedback.SendFeedback(request, timeout=10)
    assert monitor.feedback[-1] == request
    assert reply.accepted == 1 and [(r.index, r.prediction_id) for r in reply.refused] == [(1, "order-1")]
    body = {"labels": [{"prediction_id": "order-2", "label": 0, "event_time": 1733600000.0}], "correct": True}
    status, _, answer = await logged.post("/v1/feedback", json.dumps(body).encode(),
                                          {"Content-Type": "application/json"})  # fmt: skip
    assert status == 200
    assert json.loads(answer) == {"accepted": 1, "duplicates": 0, "corrected": 0, "pending": 0, "refused": []}
    assert monitor.feedback[-1] == feedback_pb2.SendFeedbackRequest(
        labels=[feedback_pb2.Label(prediction_id="order-2", value=0, event_time=1733600000.0)], correct=True
    )
    too_many = feedback_pb2.SendFeedbackRequest(
        labels=[feedback_pb2.Label(prediction_id="p", value=1)] * 10_001
    )
    sent = len(monitor.feedback)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await logged.feedback.SendFeedback(too_many, timeout=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and len(monitor.feedback) == sent


# -- a monitor that is dead, hangs or restarts ---------------------------------------------------------------------
async def test_a_dead_monitor_never_fails_an_answer_and_what_it_cannot_hold_is_dropped_and_counted(
    mesh, tmp_path
):
    nobody = f"127.0.0.1:{free_port()}"
    async with in_process_gateway(mesh, tmp_path, ROUTES, monitor_url=nobody, prediction_log_queue=5) as gw:
        for n in range(20):
            answer = await gw.predict_stub.Predict(predict_request("single", instance(*ACCOUNTS[0], f"dead-{n}")),
                                                   timeout=10)  # fmt: skip
            assert answer.predictions[0].prediction_id == f"dead-{n}"
        writer = gw.service.prediction_log
        assert (writer.held, writer.dropped, writer.logged) == (5, 15, 0)  # memory bounded by the queue
        metrics = scrape(f"http://127.0.0.1:{gw.service.metrics.port}/metrics")
        assert metrics['meshserve_gateway_prediction_log_records_total{outcome="dropped"}'] == 15
        assert metrics["meshserve_gateway_prediction_log_held"] == 5
        with pytest.raises(grpc.aio.AioRpcError) as unavailable:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.service.port}") as channel:
                await feedback_pb2_grpc.FeedbackServiceStub(channel).SendFeedback(
                    feedback_pb2.SendFeedbackRequest(
                        labels=[feedback_pb2.Label(prediction_id="dead-0", value=1)]
                    ),
                    timeout=10,
                )
        assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_hanging_monitor_never_slows_an_answer(mesh, tmp_path):
    monitor = FakeMonitor()
    monitor.hang = True  # takes every batch and never answers
    async with (
        serving(monitor) as port,
        in_process_gateway(
            mesh, tmp_path, ROUTES, monitor_url=f"127.0.0.1:{port}", monitor_timeout_s=120
        ) as gw,
    ):
        await gw.predict_stub.Predict(predict_request("fraud", instance(*ACCOUNTS[1], "hung")), timeout=10)
        await monitor.wait_for(lambda: len(monitor.metadata) == 1)  # its batch is out, and hangs
        started = time.monotonic()
        for n in range(20):
            await gw.predict_stub.Predict(
                predict_request("fraud", instance(*ACCOUNTS[1], f"hung-{n}")), timeout=10
            )
        # an answer that waited for the log would wait for the monitor's 120 s deadline
        assert time.monotonic() - started < 60
        assert len(monitor.metadata) == 1  # one batch out, hanging; the rest wait behind it


async def test_records_held_while_the_monitor_restarts_reach_it_when_it_is_back(mesh, tmp_path):
    first = FakeMonitor()
    async with serving(first) as port:
        pass  # a port of our own, free again
    async with in_process_gateway(mesh, tmp_path, ROUTES, monitor_url=f"127.0.0.1:{port}") as gw:
        for n in range(3):  # the monitor is down: answered all the same, records held
            await gw.predict_stub.Predict(
                predict_request("fraud", instance(*ACCOUNTS[2], f"held-{n}")), timeout=10
            )
        back = FakeMonitor()
        async with serving(back, port):
            await back.wait_for(lambda: {f"held-{n}" for n in range(3)} <= back.by_id().keys(), timeout_s=30)
        assert gw.service.prediction_log.dropped == 0


async def test_without_a_monitor_feedback_is_unavailable_and_nothing_is_logged(mesh, tmp_path):
    async with (
        in_process_gateway(mesh, tmp_path, ROUTES, monitor_url="") as gw,
        grpc.aio.insecure_channel(f"127.0.0.1:{gw.service.port}") as channel,
    ):
        assert gw.service.prediction_log is None
        answer = await gw.predict_stub.Predict(predict_request("fraud", instance(*ACCOUNTS[0])), timeout=10)
        assert NEW_ID.fullmatch(answer.predictions[0].prediction_id)  # ids all the same
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await feedback_pb2_grpc.FeedbackServiceStub(channel).SendFeedback(
                feedback_pb2.SendFeedbackRequest(labels=[feedback_pb2.Label(prediction_id="a", value=1)]),
                timeout=10,
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert refused.value.details().startswith("no monitor service configured")


# -- who may send labels -------------------------------------------------------------------------------------------
async def test_where_authentication_is_required_labels_need_role_feedback_or_admin_and_are_audited_in_bulk(
    mesh, tmp_path
):
    store = ApiKeyStore(tmp_path / "keys.json")
    keys = {name: store.create(name, roles) for name, roles in
            (("labeler", ["feedback"]), ("ops", ["admin"]), ("svc", ["scorer"]))}  # fmt: skip
    monitor = FakeMonitor()
    labels = feedback_pb2.SendFeedbackRequest(labels=[feedback_pb2.Label(prediction_id="t-1", value=1)] * 3)
    async with (
        serving(monitor) as port,
        in_process_gateway(
            mesh,
            tmp_path / "gw",
            ROUTES,
            monitor_url=f"127.0.0.1:{port}",
            auth_required=True,
            auth_api_keys_file=store.path,
        ) as gw,  # fmt: skip
        grpc.aio.insecure_channel(f"127.0.0.1:{gw.service.port}") as channel,
    ):
        stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
        logged = Logged(gw, monitor, channel)

        def bearer(name: str) -> tuple[tuple[str, str], ...]:
            return (("authorization", f"Bearer {keys[name]}"),)

        for metadata, code in (
            ((), grpc.StatusCode.UNAUTHENTICATED),
            (bearer("svc"), grpc.StatusCode.PERMISSION_DENIED),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.SendFeedback(labels, metadata=metadata, timeout=10)
            assert refused.value.code() == code
        assert monitor.feedback == []
        for name in ("labeler", "ops"):
            assert (await stub.SendFeedback(labels, metadata=bearer(name), timeout=10)).accepted == 3
        body = json.dumps({"labels": [{"prediction_id": "t-2", "label": 0}]}).encode()
        for headers, status in (({}, 401), ({"authorization": f"Bearer {keys['svc']}"}, 403),
                                ({"authorization": f"Bearer {keys['labeler']}"}, 200)):  # fmt: skip
            assert (await logged.post("/v1/feedback", body, headers))[0] == status
        assert len(monitor.feedback) == 3
    audit = [json.loads(line) for line in (tmp_path / "gw" / "audit.jsonl").read_text().splitlines()]
    entries = [e for e in audit if e["action"] == "feedback"]
    # one entry per caller per minute (the test may straddle a minute: two at most), never one per label
    assert sorted({e["who"] for e in entries}) == ["labeler", "ops", "svc"] and len(entries) <= 6
    totals = {who: Counter() for who in ("labeler", "ops", "svc")}
    for entry in entries:
        totals[entry["who"]].update({k: v for k, v in entry["after"].items() if k != "since"})
    assert (totals["labeler"]["requests"], totals["labeler"]["labels"], totals["labeler"]["accepted"]) == (
        2,
        4,
        4,
    )
    assert totals["svc"]["denied"] == 2 and totals["ops"]["labels"] == 3
