"""The monitor as it runs: `python -m services.monitor` on free ports, on its SQLite file or a real Redis, called
over gRPC. Predictions logged (some twice), labels sent in shuffled order through both services (some repeated,
some for ids never logged, some before their prediction, some that do not fit), quality equal to scikit-learn's,
export, the Prometheus view, bad requests, and nothing lost across a restart."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from contextlib import asynccontextmanager

import grpc
import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from meshserve.core.channels import wait_until_serving
from meshserve.core.process import ChildProcess, free_ports
from meshserve.feedback.v1 import feedback_pb2, feedback_pb2_grpc
from meshserve.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from tests.helpers import scrape

N = 3000  # requests: stable answers the first 2400 ids, canary the rest; a shadow answers the first 1000 too
GRACE_S = 1.0


class Monitor:
    def __init__(self, process: ChildProcess, port: int, metrics_port: int) -> None:
        self.process = process
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.monitor = monitor_pb2_grpc.MonitorServiceStub(self.channel)
        self.feedback = feedback_pb2_grpc.FeedbackServiceStub(self.channel)

    async def start(self) -> None:
        await (self.process.restart() if self.process.starts else self.process.start())
        try:
            await wait_until_serving(self.channel, "meshserve.feedback.v1.FeedbackService", timeout_s=60)
        except TimeoutError:
            pytest.fail(f"monitor never served:\n{self.process.log_tail(40)}")

    async def stop(self) -> None:
        assert await self.process.stop(15) == 0, self.process.log_tail(40)  # a clean exit on SIGTERM

    async def quality(self, route: str = "fraud") -> monitor_pb2.GetQualityResponse:
        return await self.monitor.GetQuality(monitor_pb2.GetQualityRequest(route=route), timeout=30)

    async def export(self, with_labels: bool) -> list[monitor_pb2.ExportChunk]:
        request = monitor_pb2.ExportRequest(route="fraud", with_labels=with_labels)
        return [chunk async for chunk in self.monitor.Export(request, timeout=30)]


@asynccontextmanager
async def running_monitor(tmp_path, **env: str):
    port, metrics_port = free_ports(2)
    environment = {
        **os.environ,
        "MESHSERVE_MONITOR_PORT": str(port),
        "MESHSERVE_MONITOR_METRICS_PORT": str(metrics_port),
        "MESHSERVE_MONITOR_LABEL_GRACE_S": str(GRACE_S),
        "MESHSERVE_MONITOR_UPKEEP_INTERVAL_S": "0.2",
        "MESHSERVE_MONITOR_SHUTDOWN_SETTLE_S": "0",
        **env,
    }
    process = ChildProcess(
        "monitor", [sys.executable, "-m", "services.monitor"], environment, tmp_path / "monitor.log"
    )
    monitor = Monitor(process, port, metrics_port)
    try:
        await monitor.start()
        yield monitor
    finally:
        await process.stop(5)
        await monitor.channel.close()


@pytest.fixture(params=["sqlite", "redis"])
def store_env(request, tmp_path, redis_url) -> dict[str, str]:
    if request.param == "sqlite":
        return {"MESHSERVE_MONITOR_STORE_PATH": str(tmp_path / "monitor.db")}
    return {
        "MESHSERVE_MONITOR_REDIS_URL": redis_url,
        "MESHSERVE_MONITOR_REDIS_PREFIX": f"test:{time.monotonic_ns()}:",
    }


def pb_record(
    i: int, variant: str, score: float, at: float, shadow: bool = False
) -> monitor_pb2.PredictionRecord:
    features = {"amount": float(i), "hour": float(i % 24)} if i % 10 == 0 else {}
    return monitor_pb2.PredictionRecord(
        prediction_id=f"req-{i}", route="fraud", variant=variant, model="fraud",
        model_version={"stable": "1", "canary": "2", "shadow": "3"}[variant], tier="model", time=at, score=score,
        shadow=shadow, task=monitor_pb2.BINARY, threshold=0.5, features=features,
    )  # fmt: skip


async def wait_for(condition, what: str, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while not (result := await condition()):
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.1)
    return result


async def test_log_label_read_export_and_restart(tmp_path, store_env):
    rng = np.random.default_rng(18)
    truth = rng.random(N) < 0.3
    now = time.time()
    at = now - rng.uniform(60, 1800, N)  # inside the Prometheus window (an hour)
    scores = {
        "stable": np.clip(0.35 * truth + rng.normal(0.3, 0.2, N), 0, 1),
        "canary": np.clip(rng.random(N), 0, 1),
        "shadow": np.clip(0.45 * truth + rng.normal(0.25, 0.2, N), 0, 1),
    }
    records = [pb_record(i, "stable" if i < 2400 else "canary", scores["stable" if i < 2400 else "canary"][i], at[i])
               for i in range(N)]  # fmt: skip
    records += [pb_record(i, "shadow", scores["shadow"][i], at[i], shadow=True) for i in range(1000)]
    early = list(range(2900, N))  # their labels come before their predictions

    async with running_monitor(tmp_path, **store_env) as m:
        # labels ahead of their predictions wait for them
        ahead = await m.feedback.SendFeedback(
            feedback_pb2.SendFeedbackRequest(
                labels=[feedback_pb2.Label(prediction_id=f"req-{i}", value=float(truth[i])) for i in early]
            ),
            timeout=10,
        )
        assert (ahead.accepted, ahead.pending) == (len(early), len(early))
        stored = duplicates = 0
        for start in range(0, len(records), 1000):
            reply = await m.monitor.LogPredictions(
                monitor_pb2.LogPredictionsRequest(records=records[start : start + 1000]), timeout=10
            )
            stored, duplicates = stored + reply.stored, duplicates + reply.duplicates
        again = await m.monitor.LogPredictions(
            monitor_pb2.LogPredictionsRequest(records=records[:500]), timeout=10
        )
        assert (stored, duplicates, again.stored, again.duplicates) == (len(records), 0, 0, 500)

        # shuffled labels for 80 % of the rest, 200 sent twice, 30 for ids never logged, 5 that do not fit
        labelled = np.flatnonzero(rng.random(N) < 0.8)
        labelled = labelled[~np.isin(labelled, early)]
        labels = [feedback_pb2.Label(prediction_id=f"req-{i}", value=float(truth[i]), event_time=at[i] + 30)
                  for i in labelled]  # fmt: skip
        labels += [labels[int(k)] for k in rng.choice(len(labels), 200, replace=False)]
        labels += [feedback_pb2.Label(prediction_id=f"nobody-{k}", value=1.0) for k in range(30)]
        misfits = [
            int(k) for k in rng.choice(np.setdiff1d(np.arange(N), np.r_[labelled, early]), 5, replace=False)
        ]
        labels += [feedback_pb2.Label(prediction_id=f"req-{i}", value=2.0) for i in misfits]
        order = rng.permutation(len(labels))
        totals = dict.fromkeys(("accepted", "duplicates", "pending"), 0)
        refused = []
        for n, start in enumerate(range(0, len(order), 500)):
            request = feedback_pb2.SendFeedbackRequest(
                labels=[labels[int(k)] for k in order[start : start + 500]]
            )
            send = m.feedback.SendFeedback if n % 2 else m.monitor.SendFeedback  # the same through both
            reply = await send(request, timeout=10)
            for name in totals:
                totals[name] += getattr(reply, name)
            refused += [(r.prediction_id, r.reason) for r in reply.refused]
        assert totals == {"accepted": len(labelled) + 30, "duplicates": 200, "pending": 30}
        assert sorted(refused) == sorted(
            (f"req-{i}", "label 2 does not fit route fraud (binary: 0 or 1)") for i in misfits
        )

        async def unknown_counted():
            q = await m.quality()
            return q if q.feedback.unknown == 30 else None

        quality = await wait_for(unknown_counted, "the 30 labels for ids never logged counted unknown")
        assert (quality.feedback.accepted, quality.feedback.duplicates, quality.feedback.pending) == (
            len(labelled) + len(early), 200, 0)  # fmt: skip
        assert quality.feedback.refused == 5
        has_label = np.zeros(N, bool)
        has_label[labelled] = has_label[early] = True
        served = {
            "stable": np.arange(N) < 2400,
            "canary": np.arange(N) >= 2400,
            "shadow": np.arange(N) < 1000,
        }
        assert [(v.variant, v.model_version, v.shadow) for v in quality.variants] == [
            ("canary", "2", False), ("shadow", "3", True), ("stable", "1", False)]  # fmt: skip
        for v in quality.variants:
            rows = served[v.variant] & has_label
            y, p = truth[rows], scores[v.variant][rows]
            assert (v.predictions, v.labelled) == (served[v.variant].sum(), rows.sum())
            assert v.binary.auc == pytest.approx(roc_auc_score(y, p), abs=1e-9)
            assert v.binary.log_loss == pytest.approx(log_loss(y, p), abs=1e-9)

        chunks = await m.export(with_labels=True)
        exported = {(r.prediction_id, r.variant): r.label for c in chunks for r in c.rows}
        expected = {
            (f"req-{i}", variant): float(truth[i])
            for variant, s in served.items()
            for i in np.flatnonzero(s & has_label)
        }
        assert exported == expected
        everything = await m.export(with_labels=False)
        assert sum(len(c.rows) for c in everything) == len(records)
        assert list(everything[0].feature_names) == ["amount", "hour"]  # the sample registry's vector order

        comparison = await m.monitor.Compare(
            monitor_pb2.CompareRequest(route="fraud", baseline="stable", canary="shadow", paired=True,
                                       criteria=[monitor_pb2.Criterion(metric="auc", limit=0.01)]),
            timeout=10,
        )  # fmt: skip
        (auc,) = comparison.comparisons
        both = int(has_label[:1000].sum())  # the shadow's ids, labelled: the same rows on each side
        assert (auc.metric, auc.baseline_labels, auc.canary_labels) == ("auc", both, both)
        assert auc.verdict in ("pass", "undecided") and auc.estimate > 0  # the shadow scores better

        metrics = scrape(m.metrics_url)
        stable = next(v for v in quality.variants if v.variant == "stable")
        key = 'route="fraud",variant="stable",version="1"'
        assert metrics[f"meshserve_quality_auc{{{key}}}"] == pytest.approx(stable.binary.auc, abs=1e-12)
        assert metrics[f"meshserve_quality_predictions{{{key}}}"] == 2400
        assert metrics['meshserve_monitor_labels_total{outcome="unknown"}'] == 30
        assert metrics['meshserve_monitor_records_total{outcome="duplicate"}'] == 500

        # nothing lost across a restart
        await m.stop()
        await m.start()
        assert await m.quality() == quality
        assert [c.rows for c in await m.export(with_labels=True)] == [c.rows for c in chunks]


async def test_bad_requests_are_refused_and_the_next_good_one_served(tmp_path):
    async with running_monitor(
        tmp_path,
        MESHSERVE_MONITOR_STORE_PATH=str(tmp_path / "monitor.db"),
        MESHSERVE_MONITOR_MAX_RECORDS_PER_REQUEST="10",
    ) as m:
        good = pb_record(1, "stable", 0.5, time.time())
        bad = pb_record(2, "stable", 0.5, time.time())
        bad.variant = ""
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await m.monitor.LogPredictions(monitor_pb2.LogPredictionsRequest(records=[good, bad]), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == "records[1]: variant is empty"
        with pytest.raises(grpc.aio.AioRpcError) as too_many:
            await m.monitor.LogPredictions(monitor_pb2.LogPredictionsRequest(records=[good] * 11), timeout=10)
        assert too_many.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await m.monitor.Compare(
                monitor_pb2.CompareRequest(route="fraud", baseline="stable", canary="canary",
                                           criteria=[monitor_pb2.Criterion(metric="accuracy", limit=0.1)]),
                timeout=10,
            )  # fmt: skip
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown metric 'accuracy'" in unknown.value.details()
        reply = await m.monitor.LogPredictions(monitor_pb2.LogPredictionsRequest(records=[good]), timeout=10)
        assert reply.stored == 1
        (variant,) = (await m.quality()).variants
        assert variant.predictions == 1
