"""Quality read back through the monitor (log, label, join in the store, report) equals scikit-learn's on the same
joined rows, per variant, version and shadow; the judge's comparisons say breach for a clearly worse canary and
never for an equal one."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    brier_score_loss,
    f1_score,
    log_loss,
    mean_absolute_error,
    precision_score,
    recall_score,
    roc_auc_score,
    root_mean_squared_error,
)

from services.monitor.evaluation import Criterion
from services.monitor.handler import MonitorHandler
from services.monitor.records import IncomingLabel, Record, Task
from services.monitor.sqlite_store import SqliteStore

T0 = 1_750_000_000.0
TOL = 1e-9
RECEIVED = T0 + 5000.0  # when the labels are sent (the delay of a label without an event time)


class Clock:
    now = RECEIVED

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def open_store(tmp_path):
    path = str(tmp_path / "quality.db")
    return lambda: SqliteStore(path)


@pytest.fixture
async def handler(open_store):
    store = open_store()
    yield MonitorHandler(
        store, retention_s=1e9, max_records=10**7, label_grace_s=3600, max_records_per_request=10_000,
        clock=Clock(),
    )  # fmt: skip
    await store.close()


def binary_record(pid, variant, version, time, score, threshold, shadow=False) -> Record:
    return Record(
        pid, "fraud", variant, "fraud", version, "model", time, score, shadow, int(Task.BINARY), threshold
    )


async def test_binary_quality_equals_scikit_learn_on_the_joined_rows(handler):
    rng = np.random.default_rng(18)
    n = 2000
    truth = rng.random(n) < 0.3
    times = T0 + np.sort(rng.uniform(0, 3600, n))
    # stable answers every id; canary some; a shadow of v3 the same ids as stable. Scores rounded: ties happen.
    scores = {
        ("stable", "1", False): np.round(np.clip(0.3 * truth + rng.normal(0.35, 0.2, n), 0, 1), 2),
        ("canary", "2", False): np.round(rng.random(n), 3),
        ("stable-next", "3", True): np.clip(0.5 * truth + rng.normal(0.25, 0.25, n), 0, 1),
    }
    thresholds = {"stable": 0.3, "canary": 0.5, "stable-next": 0.5}
    canary_ids = rng.random(n) < 0.25
    records = []
    for (variant, version, shadow), s in scores.items():
        for i in range(n):
            if variant == "canary" and not canary_ids[i]:
                continue
            if variant == "stable" and canary_ids[i]:
                continue
            records.append(
                binary_record(f"id{i}", variant, version, times[i], s[i], thresholds[variant], shadow)
            )
    for start in range(0, len(records), 1000):
        await handler.log_predictions(records[start : start + 1000])
    labelled = rng.random(n) < 0.8
    delays = rng.exponential(600, n)
    stamped = rng.random(n) < 0.7  # the rest have no event time: their delay runs to when they were received
    labels = [
        IncomingLabel(f"id{i}", float(truth[i]), float(times[i] + delays[i]) if stamped[i] else 0.0)
        for i in rng.permutation(np.flatnonzero(labelled))  # out of order
    ]
    for start in range(0, len(labels), 1000):
        assert not (await handler.send_feedback(labels[start : start + 1000], correct=False)).refused

    quality = await handler.quality("fraud")
    assert [(v.variant, v.model_version, v.shadow) for v in quality.variants] == [
        ("canary", "2", False), ("stable", "1", False), ("stable-next", "3", True),
    ]  # fmt: skip
    label_time = np.where(stamped, times + delays, RECEIVED)
    for v in quality.variants:
        served = (
            canary_ids
            if v.variant == "canary"
            else ~canary_ids
            if v.variant == "stable"
            else np.ones(n, bool)
        )
        rows = served & labelled
        y, p = truth[rows].astype(float), scores[v.variant, v.model_version, v.shadow][rows]
        thr = thresholds[v.variant]
        q = v.binary
        assert v.task is Task.BINARY and v.regression is None
        assert (v.labels.predictions, v.labels.labelled) == (served.sum(), rows.sum())
        assert v.labels.coverage == pytest.approx(rows.sum() / served.sum(), abs=TOL)
        delay = label_time[rows] - times[rows]
        assert v.labels.delay_p50_s == pytest.approx(np.percentile(delay, 50), abs=1e-6)
        assert v.labels.delay_p90_s == pytest.approx(np.percentile(delay, 90), abs=1e-6)
        assert q.auc == pytest.approx(roc_auc_score(y, p), abs=TOL)
        assert q.log_loss == pytest.approx(log_loss(y, p), abs=TOL)
        assert q.brier == pytest.approx(brier_score_loss(y, p), abs=TOL)
        predicted = p >= thr
        assert q.threshold == thr
        assert q.precision == pytest.approx(precision_score(y, predicted, zero_division=0), abs=TOL)
        assert q.recall == pytest.approx(recall_score(y, predicted, zero_division=0), abs=TOL)
        assert q.f1 == pytest.approx(f1_score(y, predicted, zero_division=0), abs=TOL)
        assert q.predicted_positive_rate == pytest.approx(predicted.mean(), abs=TOL)
        assert q.actual_positive_rate == pytest.approx(y.mean(), abs=TOL)
        prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
        filled = [b for b in q.calibration.bins if b.count]
        assert [b.positive_fraction for b in filled] == pytest.approx(prob_true, abs=TOL)
        assert [b.mean_score for b in filled] == pytest.approx(prob_pred, abs=TOL)
        weights = np.array([b.count for b in filled]) / rows.sum()
        ece = float(np.sum(weights * np.abs(prob_true - prob_pred)))
        assert q.calibration.expected_calibration_error == pytest.approx(ece, abs=TOL)
        assert sum(b.count for b in q.calibration.bins) == rows.sum()

    # a window: only what was answered in the last 1800 s of the clock
    recent = await handler.quality("fraud", window_s=RECEIVED - (T0 + 1800))
    assert recent.variants[1].labels.predictions == int(((times >= T0 + 1800) & ~canary_ids).sum())


async def test_regression_quality_equals_scikit_learn(handler):
    rng = np.random.default_rng(7)
    n = 1500
    target = rng.normal(100, 20, n)
    predicted = target + rng.normal(0, 5, n)
    await handler.log_predictions(
        [Record(f"r{i}", "price", "stable", "price", "1", "model", T0 + i, float(predicted[i]), False,
                int(Task.REGRESSION), 0.0) for i in range(n)]
    )  # fmt: skip
    await handler.send_feedback(
        [IncomingLabel(f"r{i}", float(target[i]), T0 + i + 60) for i in range(n)], False
    )
    (v,) = (await handler.quality("price")).variants
    assert v.task is Task.REGRESSION and v.binary is None
    assert v.regression.mae == pytest.approx(mean_absolute_error(target, predicted), abs=TOL)
    assert v.regression.rmse == pytest.approx(root_mean_squared_error(target, predicted), abs=TOL)
    assert (v.labels.delay_p50_s, v.labels.delay_p90_s) == (pytest.approx(60.0), pytest.approx(60.0))


async def log_side(handler, variant, scores, truth, offset=0, shadow=False):
    records = [
        binary_record(f"c{offset + i}", variant, "1", T0 + i, float(s), 0.5, shadow)
        for i, s in enumerate(scores)
    ]
    for start in range(0, len(records), 1000):
        await handler.log_predictions(records[start : start + 1000])
    labels = [IncomingLabel(f"c{offset + i}", float(y), 0.0) for i, y in enumerate(truth)]
    for start in range(0, len(labels), 1000):
        await handler.send_feedback(labels[start : start + 1000], correct=False)


CRITERIA = [Criterion("auc", 0.01), Criterion("log_loss", 1.05)]


def informative(rng, truth):
    return np.clip(0.4 * truth + rng.normal(0.3, 0.15, truth.size), 0.001, 0.999)


async def test_a_clearly_worse_canary_breaches_both_criteria(handler):
    rng = np.random.default_rng(1)
    n = 2000
    truth_b, truth_c = rng.random(n) < 0.3, rng.random(n) < 0.3
    baseline, coin = informative(rng, truth_b), rng.uniform(0.001, 0.999, n)
    await log_side(handler, "stable", baseline, truth_b)
    await log_side(handler, "canary", coin, truth_c, offset=n)
    results = await handler.compare("fraud", "stable", "canary", T0, CRITERIA)
    by_metric = {criterion.metric: c for criterion, c in results}
    auc, loss = by_metric["auc"], by_metric["log_loss"]
    assert (auc.verdict, loss.verdict) == ("breach", "breach")
    assert auc.canary == pytest.approx(roc_auc_score(truth_c, coin), abs=TOL)
    assert auc.baseline == pytest.approx(roc_auc_score(truth_b, baseline), abs=TOL)
    assert loss.canary == pytest.approx(log_loss(truth_c, coin), abs=TOL)
    assert auc.upper < -0.01 and auc.statistic >= 20  # e-value past 1/alpha
    assert loss.lower > 1.05 and (auc.canary_samples, auc.baseline_samples) == (n, n)


async def test_an_equal_canary_is_not_called_worse(handler):
    rng = np.random.default_rng(2)
    n = 2000
    truth_b, truth_c = rng.random(n) < 0.3, rng.random(n) < 0.3
    await log_side(handler, "stable", informative(rng, truth_b), truth_b)
    await log_side(handler, "canary", informative(rng, truth_c), truth_c, offset=n)
    results = await handler.compare("fraud", "stable", "canary", T0, CRITERIA)
    assert all(c.verdict in ("pass", "undecided") for _, c in results)
    assert all(c.lower <= (0.0 if k.metric == "auc" else 1.0) <= c.upper for k, c in results)


async def test_a_paired_comparison_uses_only_the_ids_both_answered(handler):
    rng = np.random.default_rng(3)
    n = 1000
    truth = rng.random(n) < 0.3
    scores = informative(rng, truth)
    await log_side(handler, "stable", scores, truth)
    shadow = [
        binary_record(f"c{i}", "shadow", "2", T0 + i, float(scores[i]), 0.5, True) for i in range(0, n, 2)
    ]
    await handler.log_predictions(shadow)
    (result,) = await handler.compare("fraud", "stable", "shadow", T0, CRITERIA[:1], paired=True)
    _, auc = result
    assert (auc.canary_samples, auc.baseline_samples) == (n // 2, n // 2)
    assert auc.estimate == 0.0  # the same answers to the same requests
    (unpaired,) = await handler.compare("fraud", "stable", "shadow", T0, CRITERIA[:1])
    assert unpaired[1].baseline_samples == n


async def test_since_limits_a_comparison_to_the_steps_window(handler):
    rng = np.random.default_rng(4)
    truth = rng.random(400) < 0.3
    await log_side(handler, "stable", informative(rng, truth), truth)
    await log_side(handler, "canary", informative(rng, truth), truth, offset=400)
    (result,) = await handler.compare("fraud", "stable", "canary", T0 + 300, CRITERIA[:1])
    assert (result[1].canary_samples, result[1].baseline_samples) == (100, 100)
    assert result[1].verdict == "waiting"  # under min_labels (200) a side
