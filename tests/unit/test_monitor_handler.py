"""The monitor's handler on the SQLite store with an injected clock: idempotent records and labels, the grace
period for labels that come before their prediction, corrections, refusals, retention, and the reads (quality,
comparison, export)."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from meshserve.core.errors import InvalidArgument, ResourceExhausted
from services.monitor.evaluation import Criterion
from services.monitor.handler import EXPORT_ROWS_PER_CHUNK, MonitorHandler
from services.monitor.records import IncomingLabel, Record, StoredLabel, Task
from services.monitor.sqlite_store import SqliteStore

T0 = 1_750_000_000.0
GRACE_S = 600.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(pid: str, variant: str = "stable", score: float = 0.5, **fields) -> Record:
    base = dict(
        prediction_id=pid, route="fraud", variant=variant, model="fraud", model_version="1", tier="model",
        time=T0, score=score, shadow=False, task=int(Task.BINARY), threshold=0.5, features=None,
    )  # fmt: skip
    return Record(**(base | fields))


def label(pid: str, value: float = 1.0, event_time: float = 0.0) -> IncomingLabel:
    return IncomingLabel(pid, value, event_time)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def open_store(tmp_path):
    """Opens the test's store; again after a close, the same one (tests/integration runs these tests on Redis)."""
    path = str(tmp_path / "monitor.db")
    return lambda: SqliteStore(path)


@pytest.fixture
async def store(open_store):
    store = open_store()
    yield store
    await store.close()


def make_handler(store, clock, **overrides) -> MonitorHandler:
    settings = dict(
        retention_s=30 * 86400.0, max_records=1_000_000, label_grace_s=GRACE_S, max_records_per_request=10_000,
        min_labels=200, clock=clock, upkeep_interval_s=1.0,
    )  # fmt: skip
    return MonitorHandler(store, **(settings | overrides))


@pytest.fixture
def handler(store, clock) -> MonitorHandler:
    return make_handler(store, clock)


async def exported(handler: MonitorHandler, with_labels: bool = False, route: str = "fraud") -> list:
    return [row async for chunk in handler.export(route, 0.0, with_labels) for row in chunk.rows]


# -- the log ------------------------------------------------------------------------------------------------


async def test_a_repeated_record_keeps_the_first_and_is_counted(handler):
    first = await handler.log_predictions(
        [record("p1", score=0.2), record("p1", variant="shadow", shadow=True)]
    )
    again = await handler.log_predictions([record("p1", score=0.9), record("p2", score=0.4)])
    assert (first.stored, first.duplicates, again.stored, again.duplicates) == (2, 0, 1, 1)
    rows = {(r.prediction_id, r.variant): r.score for r in await exported(handler)}
    assert rows == {("p1", "stable"): 0.2, ("p1", "shadow"): 0.5, ("p2", "stable"): 0.4}
    assert handler.records == Counter(stored=3, duplicate=1)


async def test_a_record_without_a_time_is_stamped_when_received(handler, clock):
    await handler.log_predictions([record("p1", time=0.0)])
    (row,) = await exported(handler)
    assert row.time == clock.now


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prediction_id": ""}, "records[1]: prediction_id is empty"),
        ({"prediction_id": "x" * 129}, "records[1]: prediction_id is 129 characters long; at most 128"),
        (
            {"prediction_id": "caf\u00e9"},
            "records[1]: prediction_id 'caf\u00e9' is not printable ASCII",
        ),
        ({"route": ""}, "records[1]: route is empty"),
        ({"variant": ""}, "records[1]: variant is empty"),
        ({"tier": "model\x1fcache"}, "records[1]: tier holds control characters"),
        ({"task": 0}, "records[1]: task 0 is neither BINARY nor REGRESSION"),
        ({"score": math.nan}, "records[1]: score nan is not a finite number"),
        ({"score": 1.5}, "records[1]: score 1.5 is not a probability"),
        ({"time": -1.0}, "records[1]: time -1.0 is not a time"),
    ],
)
async def test_a_bad_record_refuses_its_batch_naming_the_field_and_index(handler, fields, message):
    with pytest.raises(InvalidArgument) as refused:
        await handler.log_predictions([record("ok"), record("p2", **fields)])
    assert message in refused.value.message
    assert await exported(handler) == []  # nothing of the batch was kept
    assert (await handler.log_predictions([record("ok")])).stored == 1  # a good batch still goes in


async def test_a_regression_score_may_be_any_finite_number(handler):
    result = await handler.log_predictions(
        [record("r1", route="price", score=1234.5, task=int(Task.REGRESSION))]
    )
    assert result.stored == 1


async def test_an_oversized_request_is_refused_before_any_work(store, clock):
    handler = make_handler(store, clock, max_records_per_request=3)
    with pytest.raises(ResourceExhausted, match="4 records in one request; the limit is 3"):
        await handler.log_predictions([record(f"p{i}") for i in range(4)])
    with pytest.raises(ResourceExhausted, match="4 labels in one request"):
        await handler.send_feedback([label(f"p{i}") for i in range(4)], correct=False)
    assert (await handler.log_predictions([record(f"p{i}") for i in range(3)])).stored == 3


# -- labels -------------------------------------------------------------------------------------------------


async def test_each_bad_label_is_refused_with_its_reason_and_the_rest_kept(handler):
    await handler.log_predictions(
        [record(f"p{i}") for i in range(6)] + [record("r1", route="price", task=int(Task.REGRESSION))]
    )
    batch = [
        label("p0", 1.0),
        label("p1", math.nan),
        label("p2", 2.0),
        label("p3", math.inf),
        label("", 1.0),
        label("p4", 0.0, event_time=-5.0),
        label("r1", 37.25),
        label("p5", 0.0),
    ]
    result = await handler.send_feedback(batch, correct=False)
    assert [(x.index, x.prediction_id, x.reason) for x in result.refused] == [
        (1, "p1", "label nan is not a finite number"),
        (2, "p2", "label 2 does not fit route fraud (binary: 0 or 1)"),
        (3, "p3", "label inf is not a finite number"),
        (4, "", "prediction_id is empty"),
        (5, "p4", "event_time -5.0 is not a time (Unix seconds, 0: when received)"),
    ]
    assert (result.accepted, result.duplicates, result.corrected, result.pending) == (3, 0, 0, 0)
    quality = await handler.quality("fraud")
    assert quality.feedback == {
        "accepted": 2, "duplicates": 0, "corrected": 0, "unknown": 0, "refused": 5, "pending": 0,
    }  # fmt: skip
    (stable,) = quality.variants
    assert (stable.labels.predictions, stable.labels.labelled) == (6, 2)


async def test_the_first_label_stands_unless_corrected(handler, clock):
    await handler.log_predictions(
        [record("p1", score=0.9), record("p1", variant="shadow", shadow=True, score=0.8)]
    )
    first = await handler.send_feedback([label("p1", 1.0), label("p1", 0.0)], correct=False)
    again = await handler.send_feedback([label("p1", 0.0)], correct=False)
    assert (first.accepted, first.duplicates, again.accepted, again.duplicates) == (1, 1, 0, 1)
    assert {r.variant: r.label for r in await exported(handler, with_labels=True)} == {
        "stable": 1.0,
        "shadow": 1.0,
    }
    clock.now += 10
    fixed = await handler.send_feedback([label("p1", 0.0)], correct=True)
    assert (fixed.accepted, fixed.corrected) == (0, 1)
    assert {r.variant: r.label for r in await exported(handler, with_labels=True)} == {
        "stable": 0.0,
        "shadow": 0.0,
    }
    feedback = (await handler.quality("fraud")).feedback
    assert (feedback["accepted"], feedback["duplicates"], feedback["corrected"]) == (1, 2, 1)
    assert handler.labels == Counter(accepted=1, duplicate=2, corrected=1)


async def test_a_correction_must_fit_the_route_too(handler):
    await handler.log_predictions([record("p1")])
    await handler.send_feedback([label("p1", 1.0)], correct=False)
    result = await handler.send_feedback([label("p1", 7.0)], correct=True)
    assert [x.reason for x in result.refused] == ["label 7 does not fit route fraud (binary: 0 or 1)"]
    assert [r.label for r in await exported(handler, with_labels=True)] == [1.0]


async def test_a_label_before_its_prediction_waits_and_joins_when_it_arrives(handler, clock):
    result = await handler.send_feedback([label("early", 1.0, event_time=T0 + 30)], correct=False)
    assert (result.accepted, result.pending) == (1, 1)
    assert (await handler.quality("fraud")).feedback["pending"] == 1
    clock.now += GRACE_S - 1  # still inside the grace period
    await handler.log_predictions([record("early", time=T0 + 10, score=0.7)])
    quality = await handler.quality("fraud")
    assert quality.feedback["pending"] == 0 and quality.feedback["accepted"] == 1
    (stable,) = quality.variants
    assert (stable.labels.labelled, stable.labels.delay_p50_s) == (1, 20.0)  # event time - prediction time


async def test_a_label_whose_prediction_never_comes_is_unknown_after_the_grace_period(handler, clock):
    await handler.send_feedback([label("lost", 1.0), label("late", 1.0)], correct=False)
    clock.now += GRACE_S + 1
    quality = await handler.quality("fraud")
    assert (quality.feedback["pending"], quality.feedback["unknown"]) == (0, 2)
    assert handler.labels["unknown"] == 2
    await handler.log_predictions([record("late")])  # too late: it stays unlabelled
    (stable,) = (await handler.quality("fraud")).variants
    assert (stable.labels.predictions, stable.labels.labelled) == (1, 0)


async def test_a_pending_label_that_does_not_fit_its_route_is_refused_when_the_record_comes(handler):
    result = await handler.send_feedback([label("p1", 3.5), label("r1", 3.5)], correct=False)
    assert (result.accepted, result.pending, result.refused) == (2, 2, [])  # no route yet to judge them by
    await handler.log_predictions([record("p1"), record("r1", route="price", task=int(Task.REGRESSION))])
    fraud, price = await handler.quality("fraud"), await handler.quality("price")
    assert (fraud.feedback["refused"], fraud.variants[0].labels.labelled) == (1, 0)
    assert (price.feedback["accepted"], price.variants[0].labels.labelled) == (1, 1)
    assert handler.labels["refused"] == 1


async def test_a_label_left_pending_beside_its_record_joins_at_expiry_rather_than_going_unknown(
    handler, store, clock
):
    """Two replicas on one Redis: one plans a label as pending while another stores its record. At the end of the
    grace period the label is joined (or refused if it does not fit), never counted unknown."""
    await store.add_records([record("p1"), record("p2")])  # stored without looking for labels...
    await store.put_labels(  # ...that were being planned as pending at that moment
        {"p1": StoredLabel(1.0, 0.0, clock.now, True), "p2": StoredLabel(2.0, 0.0, clock.now, True)}, {}
    )
    clock.now += GRACE_S + 1
    feedback = (await handler.quality("fraud")).feedback
    assert (feedback["unknown"], feedback["pending"], feedback["accepted"], feedback["refused"]) == (
        0,
        0,
        1,
        1,
    )
    assert [(r.prediction_id, r.label) for r in await exported(handler, with_labels=True)] == [("p1", 1.0)]


async def test_a_repeat_of_a_pending_label_is_a_duplicate_and_a_correction_replaces_it(handler):
    await handler.send_feedback([label("p1", 1.0)], correct=False)
    dup = await handler.send_feedback([label("p1", 1.0)], correct=False)
    fix = await handler.send_feedback([label("p1", 0.0)], correct=True)
    assert (dup.duplicates, fix.corrected, fix.pending) == (1, 1, 0)
    await handler.log_predictions([record("p1")])
    assert [r.label for r in await exported(handler, with_labels=True)] == [0.0]


async def test_an_id_shared_by_a_binary_and_a_regression_route_keeps_each_route_readable(handler):
    await handler.log_predictions([record("x", route="price", task=int(Task.REGRESSION), score=3.0)])
    await handler.send_feedback(
        [label("x", 3.5)], correct=False
    )  # judged by the id's first record: regression
    await handler.log_predictions(
        [record("x", variant="fraud-stable")]
    )  # a binary route's, under the same id
    (fraud,) = (await handler.quality("fraud")).variants
    assert (fraud.labels.predictions, fraud.binary.count) == (1, 0)  # 3.5 is no binary label: not counted
    (price,) = (await handler.quality("price")).variants
    assert price.regression.mae == 0.5


# -- retention ----------------------------------------------------------------------------------------------


async def test_records_past_retention_go_with_their_labels(store, clock):
    handler = make_handler(store, clock, retention_s=3600.0)
    await handler.log_predictions([record("old", time=T0 - 3000), record("new", time=T0 - 60)])
    await handler.send_feedback([label("old"), label("new")], correct=False)
    clock.now += 1000  # "old" is now past retention: the next call's upkeep drops it
    await handler.log_predictions([record("newer")])
    assert sorted(r.prediction_id for r in await exported(handler)) == ["new", "newer"]
    assert [r.prediction_id for r in await exported(handler, with_labels=True)] == ["new"]
    assert await store.labels_for(["old"]) == ({}, {})  # its label went too
    assert handler.records["dropped_retention"] == 1


async def test_beyond_max_records_the_oldest_go_first(store, clock):
    handler = make_handler(store, clock, max_records=100)
    for batch in range(3):
        await handler.log_predictions(
            [record(f"b{batch}-{i}", time=T0 + batch * 100 + i) for i in range(60)]
        )  # fmt: skip
        clock.now += 2
    await handler.send_feedback([label("b0-0"), label("b2-59")], correct=False)
    await handler.upkeep(force=True)
    kept = [r.prediction_id for r in await exported(handler)]
    assert kept == [f"b1-{i}" for i in range(20, 60)] + [f"b2-{i}" for i in range(60)]
    assert await store.record_count() == 100
    assert handler.records["dropped_retention"] == 80


async def test_a_shadow_keeps_the_label_while_its_id_still_holds_a_record(store, clock):
    handler = make_handler(store, clock, max_records=1)
    await handler.log_predictions([record("p1", time=T0 - 1), record("p1", variant="shadow", shadow=True)])
    await handler.send_feedback([label("p1", 1.0)], correct=False)
    await handler.upkeep(force=True)
    assert [(r.variant, r.label) for r in await exported(handler)] == [("shadow", 1.0)]


async def test_nothing_is_lost_when_the_store_is_reopened(open_store, clock):
    first = open_store()
    handler = make_handler(first, clock)
    await handler.log_predictions([record("p1"), record("p2")])
    await handler.send_feedback([label("p1", 1.0), label("p1", 1.0), label("early", 0.0)], correct=False)
    before = await handler.quality("fraud")
    await first.close()
    second = open_store()
    try:
        handler = make_handler(second, clock)
        after = await handler.quality("fraud")
        assert after.feedback == before.feedback == {
            "accepted": 1, "duplicates": 1, "corrected": 0, "unknown": 0, "refused": 0, "pending": 1,
        }  # fmt: skip
        assert [(v.labels.predictions, v.labels.labelled) for v in after.variants] == [(2, 1)]
        await handler.log_predictions([record("early")])  # the pending label survived too
        assert (await handler.quality("fraud")).variants[0].labels.labelled == 2
    finally:
        await second.close()


# -- export -------------------------------------------------------------------------------------------------


async def test_export_streams_chunks_with_feature_names_in_the_registry_order_on_the_first(store, clock):
    order = {"fraud": ["amount", "hour", "avg_amount_30d"]}
    handler = make_handler(store, clock, feature_order=lambda model: order.get(model, ()))
    total = EXPORT_ROWS_PER_CHUNK + 7
    records = [
        record(
            f"p{i}", time=T0 + i, features={"hour": 3.0, "amount": i, "extra": 1.0} if i % 10 == 0 else None
        )
        for i in range(total)
    ]
    for start in range(0, total, 1000):
        await handler.log_predictions(records[start : start + 1000])
    await handler.send_feedback([label("p3", 1.0), label("p10", 0.0)], correct=False)
    chunks = [chunk async for chunk in handler.export("fraud", 0.0, with_labels=False)]
    assert [len(c.rows) for c in chunks] == [EXPORT_ROWS_PER_CHUNK, 7]
    assert [c.feature_names for c in chunks] == [["amount", "hour", "extra"], []]
    rows = [r for c in chunks for r in c.rows]
    assert [r.prediction_id for r in rows] == [f"p{i}" for i in range(total)]
    assert rows[10].features == {"hour": 3.0, "amount": 10.0, "extra": 1.0} and rows[11].features == {}
    labelled = [(r.prediction_id, r.label) for r in await exported(handler, with_labels=True)]
    assert labelled == [("p3", 1.0), ("p10", 0.0)]
    since = [chunk async for chunk in handler.export("fraud", T0 + total - 3, with_labels=False)]
    assert [r.prediction_id for c in since for r in c.rows] == [f"p{i}" for i in range(total - 3, total)]


async def test_reads_name_a_missing_route(handler):
    with pytest.raises(InvalidArgument, match="route is empty"):
        await handler.quality("")
    with pytest.raises(InvalidArgument, match="route is empty"):
        [c async for c in handler.export("", 0.0, False)]
    assert (await handler.quality("nothing-logged")).variants == []


# -- the judge's comparison ---------------------------------------------------------------------------------


async def test_compare_refuses_an_unknown_metric_naming_it(handler):
    with pytest.raises(InvalidArgument, match="unknown metric 'accuracy'"):
        await handler.compare("fraud", "stable", "canary", T0, [Criterion("accuracy", 0.1)])
    with pytest.raises(InvalidArgument, match="alpha 2"):
        await handler.compare("fraud", "stable", "canary", T0, [Criterion("auc", 0.01)], alpha=2)
    with pytest.raises(InvalidArgument, match="log_loss limit 0"):
        await handler.compare("fraud", "stable", "canary", T0, [Criterion("log_loss", 0.0)])


async def test_compare_waits_without_labels(handler):
    await handler.log_predictions([record("p1"), record("p1", variant="canary")])
    (result,) = await handler.compare("fraud", "stable", "canary", 0.0, [Criterion("auc", 0.01)])
    criterion, comparison = result
    assert (criterion.metric, comparison.verdict, comparison.canary_samples) == ("auc", "waiting", 0)
