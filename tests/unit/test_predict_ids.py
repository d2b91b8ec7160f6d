"""Predict's prediction ids before any work (a caller's own checked, naming the instance; repeats refused), and
Predict's answers as prediction log records (tier names, the default answer, features by registry names)."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.control.audit import AuditLog
from gateway.routing.dispatch import Tier
from gateway.routing.live import LiveRoutes
from gateway.routing.routes import load_routes
from gateway.serving.predict import Instance, PredictHandler, Prediction
from gateway.serving.prediction_records import AnswerSource
from meshserve.core.errors import InvalidArgument
from meshserve.core.prediction_ids import sampled
from meshserve.feature.registry import load_registry
from meshserve.monitor.v1 import monitor_pb2

REQUEST = {"amount": 90.0, "merchant_category": 4}


@pytest.fixture
def handler(tmp_path) -> PredictHandler:
    live = LiveRoutes(load_routes(), None, AuditLog(tmp_path / "audit.jsonl"))
    # nothing but the routes and the registry: a request refused here never reaches a dependency
    return PredictHandler(live, load_registry(), None, None, None, None, None, None,  # type: ignore[arg-type]
                          max_instances=10, feature_timeout_s=1.0)  # fmt: skip


@pytest.mark.parametrize(
    ("ids", "problem"),
    [
        (["ok", "x" * 129], "instance 1: prediction_id must be 1 to 128 printable ASCII characters; got 129"),
        (["caf\u00e9"], "instance 0: prediction_id must be 1 to 128 printable ASCII characters"),
        (["t-1", "", "t-1"], "instance 2: prediction_id 't-1' is instance 0's too; each prediction needs its own"),
    ],
)  # fmt: skip
async def test_a_callers_bad_id_is_invalid_argument_naming_the_instance_before_any_work(
    handler, ids, problem
):
    instances = [Instance(f"acct-{n}", REQUEST, i) for n, i in enumerate(ids)]
    with pytest.raises(InvalidArgument) as caught:
        await handler.predict("fraud", instances, 1.0)
    assert caught.value.message.startswith(problem)


def test_answers_become_records_under_their_ids_with_the_tier_that_gave_them(handler):
    route = load_routes().get("fraud")
    inputs = np.array([90.0, 4, 80.0, 2, 400], dtype=np.float32)
    ids = ["b:0", "b:1", "b:2", "b:3"]
    answers = [
        Prediction("a0", 0.25, False, "stable", "1", Tier.PRIMARY, (), ids[0], inputs),
        Prediction("a1", 0.5, True, "stable", "1", Tier.PRIMARY, (), ids[1]),
        Prediction("a2", 0.75, False, "stable", "1", Tier.FALLBACK, (), ids[2], inputs),
        Prediction("a3", 0.1, False, "", "", Tier.DEFAULT, (), ids[3]),
    ]
    everything = AnswerSource("fraud", route.quality.model_copy(update={"sample_features": 1.0}), 5.0)
    records = list(handler._records(everything, route, answers))
    assert [(r.prediction_id, r.variant, r.model, r.model_version, r.tier, r.score) for r in records] == [
        ("b:0", "stable", "fraud", "1", "model", 0.25), ("b:1", "stable", "fraud", "1", "cache", 0.5),
        ("b:2", "stable", "fraud", "1", "fallback", 0.75), ("b:3", "", "", "", "default", pytest.approx(0.1)),
    ]  # fmt: skip
    assert all(r.route == "fraud" and r.time == 5.0 and r.task == monitor_pb2.BINARY for r in records)
    vector = load_registry().models["fraud"].vector
    assert dict(records[0].features) == dict(zip(vector, inputs.astype(np.float64).tolist(), strict=True))
    assert not records[1].features and not records[3].features  # no model saw them now
    tenth = AnswerSource("fraud", route.quality, 5.0)  # the sample route keeps 10 %, by id
    kept = [bool(r.features) for r in handler._records(tenth, route, answers)]
    assert kept == [sampled(i, 0.1) and a.inputs is not None for i, a in zip(ids, answers, strict=True)]
