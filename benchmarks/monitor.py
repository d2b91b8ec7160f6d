"""`python -m benchmarks.monitor [--records 100000] [--store sqlite|redis|both]`: the monitor service's cost
(`make bench` runs it after the mesh's benchmark, about 20 s).

Starts `python -m services.monitor` (on a fresh SQLite file, or on a redis-server of its own), logs `--records`
predictions over gRPC in batches of `--batch` (as a gateway's prediction log sends them; a tenth with features, a
fifth with a shadow's answer too), sends a label for 80 % of them in shuffled batches, then reads quality, a
comparison and the whole export. Reports wall time per phase and CPU time of the monitor process (and of Redis)
per logged prediction and per label, from /proc."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import typer

from benchmarks.cpu import cpu_seconds
from meshserve.core.channels import wait_until_serving
from meshserve.core.process import ChildProcess, free_ports
from meshserve.feedback.v1 import feedback_pb2
from meshserve.monitor.v1 import monitor_pb2, monitor_pb2_grpc

FEATURES = ["amount", "hour", "merchant_risk", "avg_amount_30d", "txn_count_24h", "account_age_days"]


def _records(n: int, now: float, rng: np.random.Generator) -> tuple[list, np.ndarray]:
    truth = rng.random(n) < 0.3
    scores = np.clip(0.35 * truth + rng.normal(0.3, 0.2, n), 0, 1)
    out = []
    for i in range(n):
        features = {name: float(rng.random()) for name in FEATURES} if i % 10 == 0 else {}
        base = dict(prediction_id=f"{i:032x}", route="fraud", model="fraud", tier="model", time=now - (n - i) * 0.01,
                    score=float(scores[i]), task=monitor_pb2.BINARY, threshold=0.5, features=features)  # fmt: skip
        out.append(monitor_pb2.PredictionRecord(variant="stable", model_version="1", **base))
        if i % 5 == 0:
            out.append(monitor_pb2.PredictionRecord(variant="shadow", model_version="2", shadow=True, **base))
    return out, truth


async def _measure(store: str, n: int, batch: int, work: Path) -> dict[str, float]:
    port, metrics_port, redis_port = free_ports(3)
    env = {**os.environ, "MESHSERVE_MONITOR_PORT": str(port), "MESHSERVE_MONITOR_METRICS_PORT": str(metrics_port),
           "MESHSERVE_MONITOR_SHUTDOWN_SETTLE_S": "0", "MESHSERVE_MONITOR_STORE_PATH": str(work / "monitor.db")}  # fmt: skip
    redis = None
    if store == "redis":
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        redis = ChildProcess(
            "redis",
            [binary, "--port", str(redis_port), "--save", "", "--appendonly", "no"],
            {},
            work / "redis.log",
        )
        await redis.start()
        env["MESHSERVE_MONITOR_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    monitor = ChildProcess("monitor", [sys.executable, "-m", "services.monitor"], env, work / "monitor.log")
    await monitor.start()
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
    )
    stub = monitor_pb2_grpc.MonitorServiceStub(channel)
    results: dict[str, float] = {}
    try:
        await wait_until_serving(channel, timeout_s=60)
        rng = np.random.default_rng(0)
        records, truth = _records(n, time.time(), rng)
        requests = [monitor_pb2.LogPredictionsRequest(records=records[s : s + batch]) for s in range(0, len(records), batch)]  # fmt: skip
        labelled = rng.permutation(np.flatnonzero(rng.random(n) < 0.8))
        labels = [feedback_pb2.Label(prediction_id=f"{i:032x}", value=float(truth[i])) for i in labelled]
        label_requests = [feedback_pb2.SendFeedbackRequest(labels=labels[s : s + batch]) for s in range(0, len(labels), batch)]  # fmt: skip

        pids = {"monitor": monitor.pid, "redis": redis.pid if redis else None}

        def cpu() -> dict[str, float]:
            return {name: cpu_seconds(pid) for name, pid in pids.items() if pid}

        async def phase(name: str, calls, per: int) -> None:
            before, started = cpu(), time.perf_counter()
            for call in calls:
                await call()
            wall = time.perf_counter() - started
            after = cpu()
            results[f"{name} wall s"] = wall
            for proc in after:
                results[f"{name} {proc} CPU µs each"] = (after[proc] - before[proc]) / per * 1e6

        await phase("log", [lambda r=r: stub.LogPredictions(r, timeout=60) for r in requests], len(records))
        await phase(
            "label", [lambda r=r: stub.SendFeedback(r, timeout=60) for r in label_requests], len(labels)
        )
        quality_request = monitor_pb2.GetQualityRequest(route="fraud")
        await phase("quality", [lambda: stub.GetQuality(quality_request, timeout=120)], 1)
        compare = monitor_pb2.CompareRequest(route="fraud", baseline="stable", canary="shadow", paired=True,
                                             criteria=[monitor_pb2.Criterion(metric="auc", limit=0.01),
                                                       monitor_pb2.Criterion(metric="log_loss", limit=1.05)])  # fmt: skip
        await phase("compare", [lambda: stub.Compare(compare, timeout=120)], 1)

        async def export() -> None:
            rows = 0
            async for chunk in stub.Export(monitor_pb2.ExportRequest(route="fraud"), timeout=300):
                rows += len(chunk.rows)
            assert rows == len(records), rows

        await phase("export", [export], 1)
        results["records"], results["labels"] = len(records), len(labels)
    finally:
        await channel.close()
        await monitor.stop(15)
        if redis is not None:
            await redis.stop(5)
    return results


def main(
    records: int = typer.Option(100_000, help="requests logged (a fifth also log a shadow's answer)"),
    batch: int = typer.Option(1000, help="records (and labels) per request"),
    store: str = typer.Option("both", help="sqlite, redis or both"),
) -> None:
    stores = ("sqlite", "redis") if store == "both" else (store,)
    if "redis" in stores and shutil.which("redis-server") is None:
        if store == "redis":
            raise typer.BadParameter("redis-server is not installed (`make system-deps` installs it)")
        # `make bench` runs this after the mesh's benchmark: what can be measured still is
        print("redis-server is not installed: the Redis store is skipped (`make system-deps` installs it)")
        stores = ("sqlite",)
    for name in stores:
        with tempfile.TemporaryDirectory() as work:
            results = asyncio.run(_measure(name, records, batch, Path(work)))
        print(f"\n{name}:")
        for key, value in results.items():
            print(f"  {key:32} {value:12.1f}")


if __name__ == "__main__":
    typer.run(main)
