"""Small helpers shared by integration and end-to-end tests."""

from __future__ import annotations

import asyncio
import csv
import os
import shutil
import urllib.request
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton_grpc

from meshserve.core.process import descendants
from meshserve.feature.registry import load_registry

__all__ = ["FIXTURES", "alive", "descendants", "feature_vector", "gateway_env", "score_directly", "scrape", "stored_features",
           "triton_counts"]  # fmt: skip
FIXTURES = Path(__file__).resolve().parent / "fixtures"

ACCOUNTS_CSV = Path(__file__).resolve().parent.parent / "meshserve" / "defaults" / "accounts.csv"


def stored_features(account_id: str) -> dict[str, float]:
    with ACCOUNTS_CSV.open() as f:
        for row in csv.DictReader(f):
            if row["account_id"] == account_id:
                return {k: float(v) for k, v in row.items() if k != "account_id"}
    raise KeyError(account_id)


def feature_vector(account_id: str, **request: float) -> np.ndarray:
    """The model input the mesh should build for this account and these request features."""
    values = {**stored_features(account_id), **request}
    return np.array([[values[name] for name in load_registry().models["fraud"].vector]], dtype=np.float32)


def score_directly(triton_url: str, matrix: np.ndarray, version: str = "1") -> np.ndarray:
    """Score on Triton itself, bypassing the mesh: the reference every mesh answer is compared with."""
    client = triton_grpc.InferenceServerClient(triton_url)
    scores = []
    for start in range(0, len(matrix), 64):  # the model's max_batch_size
        chunk = matrix[start : start + 64]
        tensor = triton_grpc.InferInput("features", list(chunk.shape), "FP32")
        tensor.set_data_from_numpy(chunk)
        scores.append(client.infer("fraud", [tensor], model_version=version).as_numpy("score")[:, 0])
    return np.concatenate(scores)


def triton_counts(triton_url: str, model: str, version: str) -> tuple[int, int]:
    """(inference_count, execution_count) from Triton's own statistics: rows inferred and batches run."""
    stats = triton_grpc.InferenceServerClient(triton_url).get_inference_statistics(model, version)
    (entry,) = stats.model_stats
    return entry.inference_count, entry.execution_count


def alive(pids: set[int]) -> set[int]:
    """The pids that still exist and are not zombies."""
    living = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            living.add(pid)
    return living


def scrape(url: str) -> dict[str, float]:
    """A Prometheus text exposition as {series: value}."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    return {
        series: float(value)
        for line in text.splitlines()
        if line and not line.startswith("#")
        for series, _, value in [line.rpartition(" ")]
    }


def gateway_env(mesh, port: int, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a gateway process of a test's own, in front of the session mesh's services, on the
    test routes."""
    return {
        **os.environ,
        "MESHSERVE_GATEWAY_PORT": str(port),
        "MESHSERVE_GATEWAY_FEATURE_URL": mesh.endpoints.feature,
        "MESHSERVE_GATEWAY_CACHE_URL": mesh.endpoints.cache,
        "MESHSERVE_GATEWAY_INFERENCE_URL": mesh.endpoints.inference,
        "MESHSERVE_GATEWAY_MONITOR_URL": mesh.endpoints.monitor,
        "MESHSERVE_GATEWAY_ROUTES_PATH": str(FIXTURES / "routes.yaml"),
        "MESHSERVE_GATEWAY_GRACE_S": "15",
        "MESHSERVE_GATEWAY_ADMIN_PORT": "0",
        "MESHSERVE_GATEWAY_HTTP_PORT": "0",
        "MESHSERVE_GATEWAY_AUDIT_LOG": str(tmp_path / "audit.jsonl"),
        **extra,
    }


@asynccontextmanager
async def running_redis(
    run_dir: Path, args: Sequence[str], url: str, client_options: dict | None = None
) -> AsyncIterator[str]:
    """Debian's redis-server (`.ci/run` installs it) with `args` (its port among them), until it answers PING at
    `url`; yields `url` and stops the server afterwards."""
    import redis.asyncio as aioredis

    from meshserve.core.process import ChildProcess

    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed: `apt-get install -y redis-server` (.ci/run does)"
    argv = [binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(run_dir), *args]
    server = ChildProcess("redis", argv, {}, run_dir / "redis.log")
    await server.start()
    client = aioredis.Redis.from_url(url, **(client_options or {}))
    try:
        for _ in range(200):  # until it answers PING (bounded)
            try:
                if await client.ping():
                    break
            except (ConnectionError, OSError, aioredis.ConnectionError):
                await asyncio.sleep(0.025)
        else:
            raise RuntimeError(f"redis-server never answered:\n{server.log_tail()}")
        yield url
    finally:
        await client.aclose()
        await server.stop(5)
