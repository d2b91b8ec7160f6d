"""`meshserve feedback load`, `quality`, `predictions export` and `predict`'s prediction id, run as a user runs
them (the CLI's own entry, exit status, stdout and stderr) against small fake servers of the contracts
(meshserve.feedback.v1.FeedbackService on the "gateway", meshserve.monitor.v1.MonitorService) on free loopback
ports. What the fakes answer is the test's; the real services are tested on their own and end to end."""

from __future__ import annotations

import csv
import json
import threading
import time
from concurrent import futures

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from meshserve.cli import feedback as feedback_cli
from meshserve.cli.app import app
from meshserve.core.process import free_port
from meshserve.feedback.v1 import feedback_pb2, feedback_pb2_grpc
from meshserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from meshserve.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from tests.unit.test_quality_view import reply as quality_reply


class FakeFeedback(feedback_pb2_grpc.FeedbackServiceServicer):
    """First label per id stands; a repeat is a duplicate (or corrected, with `correct`); a label of 2 is refused
    as a binary route's monitor would; ids not in `logged` are pending. `fail` maps a call number (from 1) to the
    status that call fails with; `failures` how many times it does."""

    def __init__(self, logged: set[str]) -> None:
        self.logged, self.stored = logged, {}
        self.requests: list[feedback_pb2.SendFeedbackRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.fail: dict[int, grpc.StatusCode] = {}
        self.failures = 1_000
        self.lock = threading.Lock()

    def SendFeedback(self, request, context):
        with self.lock:
            self.requests.append(request)
            self.metadata.append(dict(context.invocation_metadata()))
            code = self.fail.get(len(self.requests))
            if code is not None and self.failures > 0:
                self.failures -= 1
                context.abort(code, f"fake refuses call {len(self.requests)}")
            reply = feedback_pb2.SendFeedbackResponse()
            for index, label in enumerate(request.labels):
                if label.value not in (0.0, 1.0):
                    reply.refused.add(index=index, prediction_id=label.prediction_id,
                                      reason=f"label {label.value:g} does not fit route fraud (binary: 0 or 1)")  # fmt: skip
                elif label.prediction_id in self.stored and not request.correct:
                    reply.duplicates += 1
                else:
                    if label.prediction_id in self.stored:
                        reply.corrected += 1
                    else:
                        reply.accepted += 1
                        reply.pending += label.prediction_id not in self.logged
                    self.stored[label.prediction_id] = label.value
            return reply


class FakeMonitor(monitor_pb2_grpc.MonitorServiceServicer):
    def __init__(self) -> None:
        self.quality_requests: list[monitor_pb2.GetQualityRequest] = []
        self.export_requests: list[monitor_pb2.ExportRequest] = []
        self.chunks: list[monitor_pb2.ExportChunk] = []

    def GetQuality(self, request, context):
        self.quality_requests.append(request)
        if request.route != "fraud":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no route {request.route!r} is logged")
        return quality_reply()

    def Export(self, request, context):
        self.export_requests.append(request)
        yield from self.chunks


class FakePredictions(gateway_pb2_grpc.PredictionServiceServicer):
    def Predict(self, request, context):
        return gateway_pb2.PredictResponse(
            route=request.route, variant="stable", model_name="fraud", model_version="1",
            predictions=[gateway_pb2.Prediction(entity_key=i.entity_key, score=0.25, variant="stable",
                                                model_version="1", prediction_id=i.prediction_id or "a" * 32)
                         for i in request.instances],
        )  # fmt: skip


@pytest.fixture
def serve():
    """serve(add, servicer) -> its address: a gRPC server on a free loopback port, stopped after the test."""
    servers = []

    def start(add, servicer) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        add(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(None)


@pytest.fixture(autouse=True)
def _no_mesh_around(monkeypatch, tmp_path):
    """No running mesh, no address or TLS from the environment: each command is given its --target."""
    import os

    for name in list(os.environ):
        if name.startswith("MESHSERVE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MESHSERVE_RUN_DIR", str(tmp_path / "no-run"))
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(feedback_cli, "BACKOFF_S", 0.0)


def meshserve(*args: str):
    return CliRunner().invoke(app, list(args))


def write_labels(path, rows: list[list[object]], header=("prediction_id", "label")) -> None:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


# -- feedback load ------------------------------------------------------------------------------------------
def test_a_file_goes_in_batches_of_1000_in_order_and_every_refusal_is_named_by_its_line(serve, tmp_path):
    fake = FakeFeedback(logged={f"p{i}" for i in range(2000)})
    gateway = serve(feedback_pb2_grpc.add_FeedbackServiceServicer_to_server, fake)
    rows: list[list[object]] = [[f"p{i}", i % 2] for i in range(2400)]  # p2000.. are not logged yet: pending
    rows[5] = ["", 1]  # line 7: no id
    rows[1500] = ["p1500", "yes"]  # line 1502: not a number
    rows[2100] = ["p2100", 2]  # line 2102: the monitor refuses it
    rows.append(["p3", 1])  # line 2402: a repeat of line 5's id
    path = tmp_path / "labels.csv"
    write_labels(path, rows)

    result = meshserve("feedback", "load", str(path), "--target", gateway, "--api-key", "k-1")
    assert result.exit_code == 0, result.output
    refused_file = tmp_path / "labels.csv.refused.csv"
    assert result.stdout == (
        "labels.csv: 2397 accepted (399 of them pending their prediction), 1 duplicates, 0 corrected, 3 refused "
        f"(lines and reasons in {refused_file})\n"
    )
    assert [len(r.labels) for r in fake.requests] == [1000, 1000, 399]  # the malformed rows were never sent
    sent = [label.prediction_id for r in fake.requests for label in r.labels]
    assert sent[:6] == ["p0", "p1", "p2", "p3", "p4", "p6"] and sent[-1] == "p3"  # file order
    assert all(not r.correct for r in fake.requests)
    assert {m.get("authorization") for m in fake.metadata} == {"Bearer k-1"}
    with refused_file.open(newline="") as f:
        assert list(csv.reader(f)) == [
            ["line", "prediction_id", "reason"],
            ["7", "", "missing prediction_id"],
            ["1502", "p1500", "label 'yes' is not a number"],
            ["2102", "p2100", "label 2 does not fit route fraud (binary: 0 or 1)"],
        ]


def test_correct_replaces_labels_and_a_clean_load_leaves_no_refused_file(serve, tmp_path):
    fake = FakeFeedback(logged={"a", "b"})
    gateway = serve(feedback_pb2_grpc.add_FeedbackServiceServicer_to_server, fake)
    path = tmp_path / "labels.csv"
    (tmp_path / "labels.csv.refused.csv").write_text(
        "line,prediction_id,reason\n2,,old\n"
    )  # an earlier load's
    write_labels(path, [["a", 1], ["b", 0]])
    assert meshserve("feedback", "load", str(path), "--target", gateway).exit_code == 0
    write_labels(path, [["a", 0], ["b", 0]])
    result = meshserve("feedback", "load", str(path), "--target", gateway, "--correct")
    assert result.exit_code == 0, result.output
    assert (
        result.stdout
        == "labels.csv: 0 accepted (0 of them pending their prediction), 0 duplicates, 2 corrected, 0 refused\n"
    )
    assert [r.correct for r in fake.requests] == [False, True] and fake.stored == {"a": 0.0, "b": 0.0}
    assert not (tmp_path / "labels.csv.refused.csv").exists()


def test_a_parquet_file_loads_the_same_way(serve, tmp_path):
    fake = FakeFeedback(logged={"1001"})
    gateway = serve(feedback_pb2_grpc.add_FeedbackServiceServicer_to_server, fake)
    path = tmp_path / "labels.parquet"
    stamp = 1_796_126_400.0
    pq.write_table(
        pa.table({"prediction_id": [1001, 1002], "label": [True, False], "event_time": [stamp, None]}), path
    )
    result = meshserve("feedback", "load", str(path), "--target", gateway)
    assert result.exit_code == 0, result.output
    assert "2 accepted (1 of them pending their prediction)" in result.stdout
    (request,) = fake.requests
    assert [(label.prediction_id, label.value, label.event_time) for label in request.labels] == [
        ("1001", 1.0, stamp),
        ("1002", 0.0, 0.0),
    ]


@pytest.mark.parametrize(
    ("content", "line"),
    [("id,value\na,1\n", "has no columns 'prediction_id' and 'label'; its columns are: id, value"),
     ("prediction_id,score\na,1\n", "has no column 'label'; its columns are: prediction_id, score")],
)  # fmt: skip
def test_a_file_without_the_columns_exits_2_naming_its_columns_and_sends_nothing(
    serve, tmp_path, content, line
):
    fake = FakeFeedback(logged=set())
    gateway = serve(feedback_pb2_grpc.add_FeedbackServiceServicer_to_server, fake)
    path = tmp_path / "labels.csv"
    path.write_text(content)
    result = meshserve("feedback", "load", str(path), "--target", gateway)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith(f"meshserve feedback load: {path} {line}")
    assert fake.requests == []


def test_a_file_that_cannot_be_read_exits_2(tmp_path):
    path = tmp_path / "labels.parquet"
    path.write_text("not parquet at all")
    result = meshserve("feedback", "load", str(path), "--target", f"127.0.0.1:{free_port()}")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"meshserve feedback load: cannot read {path} as Parquet: ")
    assert meshserve("feedback", "load", str(tmp_path / "nope.csv")).exit_code == 2  # no such file


def test_a_failed_call_exits_1_saying_what_was_stored(serve, tmp_path):
    fake = FakeFeedback(logged=set())
    fake.fail = {2: grpc.StatusCode.PERMISSION_DENIED}
    gateway = serve(feedback_pb2_grpc.add_FeedbackServiceServicer_to_server, fake)
    path = tmp_path / "labels.csv"
    write_labels(path, [[f"p{i}", 1] for i in range(1500)] + [["p1", 7]])
    result = meshserve("feedback", "load", str(path), "--target", gateway)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == (  # under the progress bar as it stood
        "meshserve feedback load: PERMISSION_DENIED: fake refuses call 2; the 1000 label(s) before line 1002 were "
        "sent and stay stored; rerunning the load is safe (labels already stored count as duplicates)"
    )
    assert len(fake.requests) == 2  # not retried: the caller may not


def test_a_retryable_failure_is_retried_and_the_load_goes_on(serve, tmp_path):
    fake = FakeFeedback(logged={"a"})
    fake.fail, fake.failures = {1: grpc.StatusCode.UNAVAILABLE}, 1
    gateway = serve(feedback_pb2_grpc.add_FeedbackServiceServicer_to_server, fake)
    path = tmp_path / "labels.csv"
    write_labels(path, [["a", 1]])
    result = meshserve("feedback", "load", str(path), "--target", gateway)
    assert result.exit_code == 0, result.output
    assert "1 accepted (0 of them pending" in result.stdout and len(fake.requests) == 2


def test_the_gateway_without_a_monitor_is_a_failed_call_saying_so(serve, tmp_path):
    class NoMonitor(feedback_pb2_grpc.FeedbackServiceServicer):
        def SendFeedback(self, request, context):
            context.abort(grpc.StatusCode.UNAVAILABLE, "no monitor service configured")

    gateway = serve(feedback_pb2_grpc.add_FeedbackServiceServicer_to_server, NoMonitor())
    path = tmp_path / "labels.csv"
    write_labels(path, [["a", 1]])
    result = meshserve("feedback", "load", str(path), "--target", gateway)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        "meshserve feedback load: UNAVAILABLE: no monitor service configured; no label was stored"
    )


def test_nothing_listening_is_one_line_before_any_progress(tmp_path):
    path = tmp_path / "labels.csv"
    write_labels(path, [["a", 1]])
    address = f"127.0.0.1:{free_port()}"
    result = meshserve("feedback", "load", str(path), "--target", address)
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"meshserve feedback load: no mesh at {address} (from --target): is `meshserve up` running? "
        "(`meshserve status`)"
    )


# -- quality ------------------------------------------------------------------------------------------------
def test_quality_asks_the_monitor_for_the_window_and_prints_the_table_or_json(serve):
    fake = FakeMonitor()
    monitor = serve(monitor_pb2_grpc.add_MonitorServiceServicer_to_server, fake)
    result = meshserve("quality", "fraud", "--window", "30m", "--target", monitor)
    assert result.exit_code == 0, result.output
    assert fake.quality_requests[-1] == monitor_pb2.GetQualityRequest(route="fraud", window_s=1800.0)
    lines = result.stdout.splitlines()
    assert lines[0].strip() == "route fraud, last 30m" and all(len(line) <= 80 for line in lines)
    assert any(line.startswith("│ AUC ") and "0.9132" in line and "0.8811" in line for line in lines)

    result = meshserve("quality", "fraud", "--target", monitor, "-o", "json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["window_s"] == 3600.0 and fake.quality_requests[-1].window_s == 3600.0  # the default: 1h
    assert [v["variant"] for v in answer["variants"]] == ["stable", "canary", "challenger", "new"]
    assert answer["variants"][0]["binary"]["auc"] == pytest.approx(0.9132)


def test_quality_of_an_unknown_route_or_with_a_bad_window_exits_2(serve):
    monitor = serve(monitor_pb2_grpc.add_MonitorServiceServicer_to_server, FakeMonitor())
    result = meshserve("quality", "nosuch", "--target", monitor)
    assert result.exit_code == 2
    assert result.stderr.strip() == "meshserve quality: NOT_FOUND: no route 'nosuch' is logged"
    result = meshserve("quality", "fraud", "--window", "soon", "--target", monitor)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "meshserve quality: --window: expected a duration such as 90s, 30m, 1h or 2d, not 'soon'"
    )


def test_quality_finds_the_monitor_through_its_variable():
    address = f"127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["quality", "fraud"], env={"MESHSERVE_TARGET_MONITOR": address})
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"meshserve quality: no mesh at {address} (from MESHSERVE_TARGET_MONITOR): is `meshserve up` running? "
        "(`meshserve status`)"
    )


# -- predictions export -------------------------------------------------------------------------------------
def test_export_streams_the_log_into_parquet(serve, tmp_path, monkeypatch):
    fake = FakeMonitor()
    fake.chunks = [
        monitor_pb2.ExportChunk(
            feature_names=["amount"],
            rows=[
                monitor_pb2.ExportRow(
                    prediction_id="p1",
                    variant="stable",
                    model_version="1",
                    time=1.5,
                    score=0.9,
                    label=1.0,
                    features={"amount": 250.0},
                )
            ],  # fmt: skip
        ),
        monitor_pb2.ExportChunk(rows=[monitor_pb2.ExportRow(prediction_id="p2", variant="canary", time=2.0)]),
    ]
    monitor = serve(monitor_pb2_grpc.add_MonitorServiceServicer_to_server, fake)
    monkeypatch.chdir(tmp_path)
    before = time.time()
    result = meshserve(
        "predictions", "export", "--route", "fraud", "--since", "2h", "--with-labels", "--target", monitor
    )
    assert result.exit_code == 0, result.output
    (request,) = fake.export_requests
    assert request.route == "fraud" and request.with_labels is True
    assert before - 7200 - 1 <= request.since <= time.time() - 7200 + 1
    out = tmp_path / "fraud.predictions.parquet"  # the default name
    assert result.stdout.startswith(
        "wrote 2 predictions of route fraud (1 labelled, 1 with features), since 20"
    )
    assert result.stdout.rstrip().endswith(f"to {out.name}")
    table = pq.read_table(out)
    assert table.column("prediction_id").to_pylist() == ["p1", "p2"]
    assert table.column("amount").to_pylist() == [250.0, None] and table.column("label").to_pylist() == [
        1.0,
        None,
    ]

    mine = tmp_path / "mine.parquet"
    result = meshserve("predictions", "export", "--route", "fraud", "-o", str(mine), "--since",
                       "2026-12-01T00:00:00Z", "--target", monitor)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert mine.exists() and fake.export_requests[-1].since == 1_796_083_200.0


@pytest.mark.parametrize(
    ("args", "line"),
    [(["-o", "out.csv"], "--out: the export is Parquet; name a .parquet file, not 'out.csv'"),
     (["--since", "last week"], "--since: expected a duration such as 2h (that long ago) or an ISO 8601 time")],
)  # fmt: skip
def test_export_refuses_what_it_cannot_do_before_dialling(args, line):
    result = meshserve(
        "predictions", "export", "--route", "fraud", *args, "--target", f"127.0.0.1:{free_port()}"
    )
    assert result.exit_code == 2
    assert result.stderr.startswith(f"meshserve predictions export: {line}")


def test_a_failed_export_leaves_no_file(serve, tmp_path):
    class Broken(FakeMonitor):
        def Export(self, request, context):
            yield monitor_pb2.ExportChunk(rows=[monitor_pb2.ExportRow(prediction_id="p1")])
            context.abort(grpc.StatusCode.INTERNAL, "store unreadable")

    monitor = serve(monitor_pb2_grpc.add_MonitorServiceServicer_to_server, Broken())
    out = tmp_path / "x.parquet"
    result = meshserve("predictions", "export", "--route", "fraud", "-o", str(out), "--target", monitor)
    assert result.exit_code == 1
    assert result.stderr.strip() == "meshserve predictions export: INTERNAL: store unreadable"
    assert list(tmp_path.iterdir()) == []


# -- predict ------------------------------------------------------------------------------------------------
def test_predict_shows_the_prediction_id_labels_name(serve):
    gateway = serve(gateway_pb2_grpc.add_PredictionServiceServicer_to_server, FakePredictions())
    result = meshserve("predict", "fraud", "acct-00042", "amount=250", "--target", gateway, "-o", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["predictions"][0]["prediction_id"] == "a" * 32
    result = meshserve("predict", "fraud", "acct-00042", "amount=250", "--target", gateway)
    assert result.exit_code == 0, result.output
    assert f"prediction id: {'a' * 32}" in result.stdout.splitlines()
