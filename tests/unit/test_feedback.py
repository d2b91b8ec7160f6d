"""Feedback on the gateway, without a network: who may send labels, the size limit before any work, no monitor
configured, the bulk audit (one entry per caller per minute, on an injected clock), and the REST form."""

from __future__ import annotations

import json

import pytest

from gateway.api.feedback_codec import feedback_request
from gateway.control.audit import AuditLog, FeedbackAudit
from gateway.serving.feedback import FeedbackHandler
from meshserve.core.auth import ANONYMOUS, ApiKeyStore, AuthConfig, Authenticator, Principal
from meshserve.core.context import set_principal
from meshserve.core.errors import (
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from meshserve.feedback.v1 import feedback_pb2
from tests.unit.test_http_routes import FakeApi, call, rest_for

LABELER = Principal("labeler", frozenset({"feedback"}), "api-key")
OPS = Principal("ops", frozenset({"admin"}), "jwt")
SCORER = Principal("svc", frozenset({"scorer"}), "api-key")


class Clock:
    def __init__(self, now: float = 1_733_600_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeMonitor:
    def __init__(self, fail: BaseException | None = None) -> None:
        self.requests: list[feedback_pb2.SendFeedbackRequest] = []
        self.fail = fail

    async def send_feedback(self, request, timeout_s=None):
        self.requests.append(request)
        if self.fail is not None:
            raise self.fail
        refused = [feedback_pb2.Refused(index=n, prediction_id=label.prediction_id, reason="label 2 does not fit")
                   for n, label in enumerate(request.labels) if label.value == 2]  # fmt: skip
        return feedback_pb2.SendFeedbackResponse(
            accepted=len(request.labels) - len(refused), pending=1, refused=refused
        )


def labels(*values: float, correct: bool = False) -> feedback_pb2.SendFeedbackRequest:
    return feedback_pb2.SendFeedbackRequest(
        labels=[feedback_pb2.Label(prediction_id=f"txn-{n}", value=v) for n, v in enumerate(values)],
        correct=correct,
    )


@pytest.fixture
def audit_log(tmp_path) -> AuditLog:
    return AuditLog(tmp_path / "audit.jsonl")


def handler_for(audit_log, monitor=None, required=True, clock=None, max_labels=10_000) -> FeedbackHandler:
    audit = FeedbackAudit(audit_log, clock or Clock())
    return FeedbackHandler(monitor, audit, auth_required=required, max_labels=max_labels)


@pytest.mark.parametrize("principal", [LABELER, OPS])
async def test_role_feedback_or_admin_may_send_labels_and_they_are_passed_on(audit_log, principal):
    monitor = FakeMonitor()
    handler = handler_for(audit_log, monitor)
    set_principal(principal)
    reply = await handler.send(labels(1, 0, 2))
    assert monitor.requests == [labels(1, 0, 2)]
    assert (reply.accepted, reply.pending, [r.prediction_id for r in reply.refused]) == (2, 1, ["txn-2"])


async def test_where_authentication_is_on_other_callers_are_refused_before_any_work(audit_log):
    monitor = FakeMonitor()
    handler = handler_for(audit_log, monitor)
    set_principal(SCORER)
    with pytest.raises(PermissionDenied, match="principal 'svc' lacks role 'feedback' \\(or 'admin'\\)"):
        await handler.send(labels(1))
    set_principal(ANONYMOUS)
    with pytest.raises(Unauthenticated, match="needs a credential with role 'feedback'"):
        await handler.send(labels(1))
    assert monitor.requests == []


async def test_an_open_gateway_takes_anonymous_labels_but_still_checks_a_presented_credential(audit_log):
    monitor = FakeMonitor()
    handler = handler_for(audit_log, monitor, required=False)
    set_principal(ANONYMOUS)
    await handler.send(labels(1))
    set_principal(SCORER)
    with pytest.raises(PermissionDenied):
        await handler.send(labels(1))
    assert len(monitor.requests) == 1


async def test_a_batch_over_the_limit_is_resource_exhausted_before_any_work(audit_log):
    monitor = FakeMonitor()
    handler = handler_for(audit_log, monitor, max_labels=3)
    set_principal(LABELER)
    with pytest.raises(ResourceExhausted, match="^4 labels in one request; the limit is 3"):
        await handler.send(labels(1, 0, 1, 0))
    assert monitor.requests == []
    await handler.send(labels(1, 0, 1))  # a valid request still succeeds
    assert len(monitor.requests) == 1


async def test_without_a_monitor_feedback_is_unavailable_and_says_why(audit_log):
    set_principal(LABELER)
    with pytest.raises(Unavailable, match="^no monitor service configured"):
        await handler_for(audit_log, None).send(labels(1))


def entries(audit_log: AuditLog) -> list[dict]:
    return (
        [json.loads(line) for line in audit_log.path.read_text().splitlines()]
        if audit_log.path.exists()
        else []
    )


async def test_labels_are_audited_in_bulk_one_entry_per_caller_per_minute(audit_log):
    clock = Clock(1_733_600_000.0)  # 19:33:20 UTC
    monitor = FakeMonitor()
    handler = handler_for(audit_log, monitor, clock=clock)
    for principal in (LABELER, LABELER, OPS, LABELER):
        set_principal(principal)
        await handler.send(labels(1, 0, 2))
    set_principal(SCORER)
    with pytest.raises(PermissionDenied):
        await handler.send(labels(1))
    assert entries(audit_log) == []  # the minute is not over: nothing per label, nothing per request
    clock.now += 60
    assert len(handler.audit.flush()) == 3
    written = entries(audit_log)
    assert [(e["who"], e["action"], e["method"]) for e in written] == [
        ("labeler", "feedback", "SendFeedback"), ("ops", "feedback", "SendFeedback"),
        ("svc", "feedback", "SendFeedback"),
    ]  # fmt: skip
    counts = {e["who"]: e["after"] for e in written}
    assert counts["labeler"] == {"since": "2024-12-07T19:33:00Z", "requests": 3, "labels": 9, "accepted": 6,
                                 "duplicates": 0, "corrected": 0, "pending": 3, "refused": 3, "failed": 0,
                                 "denied": 0}  # fmt: skip
    assert counts["svc"]["denied"] == 1 and counts["svc"]["labels"] == 0
    assert written[0]["reason"] == "9 labels in 3 requests"
    assert handler.audit.flush() == []  # written once


async def test_labels_the_monitor_did_not_take_are_audited_as_failed(audit_log):
    clock = Clock()
    handler = handler_for(audit_log, FakeMonitor(Unavailable("monitor service unavailable")), clock=clock)
    set_principal(LABELER)
    with pytest.raises(Unavailable):
        await handler.send(labels(1, 0))
    await handler.audit.close()  # closing writes what was counted so far
    (entry,) = entries(audit_log)
    assert (entry["after"]["labels"], entry["after"]["failed"], entry["after"]["accepted"]) == (2, 2, 0)


def test_the_rest_body_becomes_the_grpc_request():
    body = {"labels": [{"prediction_id": "txn-1", "label": 1, "event_time": 1733600000.0},
                       {"prediction_id": "txn-2", "value": 0.0}], "correct": True}  # fmt: skip
    assert feedback_request(body) == feedback_pb2.SendFeedbackRequest(
        labels=[feedback_pb2.Label(prediction_id="txn-1", value=1.0, event_time=1733600000.0),
                feedback_pb2.Label(prediction_id="txn-2", value=0.0)],
        correct=True,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({}, "labels must be a JSON array"),
        ({"labels": [1]}, "labels[0] must be a JSON object"),
        ({"labels": [{"label": 1}]}, "labels[0].prediction_id must be a string"),
        ({"labels": [{"prediction_id": "a"}]}, "labels[0] needs its label"),
        ({"labels": [{"prediction_id": "a", "label": "1"}]}, "labels[0].label must be a finite number"),
        ({"labels": [{"prediction_id": "a", "label": True}]}, "labels[0].label must be a finite number"),
        ({"labels": [{"prediction_id": "a", "label": 1, "event_time": "now"}]}, "labels[0].event_time must be"),
        ({"labels": [{"prediction_id": "a", "label": 1, "when": 3}]}, "labels[0]: unknown field 'when'"),
        ({"labels": [], "correct": "yes"}, "correct must be true or false"),
        ({"labels": [], "fix": True}, "unknown field 'fix'"),
    ],
)  # fmt: skip
def test_a_rest_body_that_is_not_a_feedback_request_is_refused_naming_the_field(body, problem):
    with pytest.raises(InvalidArgument, match=problem.replace("[", r"\[").replace("]", r"\]")):
        feedback_request(body)


async def test_rest_feedback_needs_its_role_and_answers_the_monitors_counts(audit_log, tmp_path):
    store = ApiKeyStore(tmp_path / "keys.json")
    keys = {"labeler": store.create("labeler", ["feedback"]), "svc": store.create("svc", ["scorer"])}
    monitor = FakeMonitor()
    rest = rest_for(FakeApi())
    rest.authenticator = Authenticator(AuthConfig(required=True, api_keys_file=store.path))
    rest.feedback = handler_for(audit_log, monitor, max_labels=3)
    body = json.dumps(
        {"labels": [{"prediction_id": "txn-1", "label": 1}, {"prediction_id": "txn-2", "label": 2}]}
    )

    def bearer(name: str) -> dict[str, str]:
        return {"authorization": f"Bearer {keys[name]}", "content-type": "application/json"}

    assert (await call(rest, "POST", "/v1/feedback", body.encode())).status == 401
    assert (await call(rest, "POST", "/v1/feedback", body.encode(), bearer("svc"))).status == 403
    too_many = json.dumps({"labels": [{"prediction_id": f"p{n}", "label": 1} for n in range(4)]}).encode()
    refused = await call(rest, "POST", "/v1/feedback", too_many, bearer("labeler"))
    assert refused.status == 429 and "4 labels in one request" in refused.json()["error"]
    bad = await call(rest, "POST", "/v1/feedback", b'{"labels": [{"label": 1}]}', bearer("labeler"))
    assert bad.status == 400 and bad.json() == {"error": "labels[0].prediction_id must be a string"}
    assert monitor.requests == []
    reply = await call(rest, "POST", "/v1/feedback", body.encode(), bearer("labeler"))
    assert reply.status == 200
    assert reply.json() == {"accepted": 1, "duplicates": 0, "corrected": 0, "pending": 1,
                            "refused": [{"index": 1, "prediction_id": "txn-2", "reason": "label 2 does not fit"}]}  # fmt: skip


async def test_rest_feedback_without_a_monitor_is_503():
    rest = rest_for(FakeApi())
    reply = await call(rest, "POST", "/v1/feedback", b'{"labels": []}')
    assert reply.status == 503 and reply.json()["error"].startswith("no monitor service configured")
