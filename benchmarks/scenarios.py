"""Closed-loop load generators: N coroutines, each sending its next request as soon as the last one answers.

Every scenario is an async context manager that opens one client and yields a `Send`: an awaitable taking the
request's sequence number and returning whether the answer came from the mesh's cache. Payloads are built
before the timed loop; only what must differ per request (the Predict `amount` of the cache-miss scenario)
is made inside it.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput

from meshserve.feature.v1 import feature_pb2
from meshserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from meshserve.mesh import Endpoints
from meshserve.registry import load_registry

__all__ = ["SCENARIOS", "LoadResult", "Scenario", "closed_loop", "triton_counts"]

MODEL, VERSION, ROUTE = "fraud", "1", "fraud"
ROW_POOL = 256  # distinct single-row payloads cycled through by the ModelInfer scenarios
HIT_POOL = 64  # distinct Predict inputs reused by gateway-predict-hit (primed during its warm-up)

Send = Callable[[int], Awaitable[bool]]


@dataclass
class LoadResult:
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    cache_hits: int = 0
    elapsed_s: float = 0.0
    first_error: str | None = None


async def closed_loop(send: Send, concurrency: int, duration_s: float, sequence: Iterator[int]) -> LoadResult:
    """Run `concurrency` workers back to back for `duration_s`; in-flight requests finish (and count)."""
    result = LoadResult()
    start = time.perf_counter()
    deadline = start + duration_s

    async def worker() -> None:
        while time.perf_counter() < deadline:
            n = next(sequence)
            sent = time.perf_counter()
            try:
                hit = await send(n)
            except Exception as exc:  # counted and reported, never fatal to the run
                result.errors += 1
                result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"[:300]
                continue
            result.latencies_s.append(time.perf_counter() - sent)
            result.cache_hits += hit

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - start
    return result


async def triton_counts(client: triton_aio.InferenceServerClient) -> tuple[int, int]:
    """(inference_count, execution_count) of every fraud version from Triton's statistics: rows inferred,
    batches run (a split route reaches both versions)."""
    stats = await client.get_inference_statistics(MODEL, client_timeout=10)
    return sum(e.inference_count for e in stats.model_stats), sum(
        e.execution_count for e in stats.model_stats
    )


def _accounts() -> list[dict[str, str]]:
    with resources.files("meshserve.defaults").joinpath("accounts.csv").open() as f:
        return list(csv.DictReader(f))


def _request_features(n: int) -> tuple[float, int]:
    return 10.0 + 7.5 * n, n % 10  # amount, merchant_category


def feature_rows(count: int = ROW_POOL) -> list[np.ndarray]:
    """`count` realistic [1, 5] FP32 rows: stored features of real accounts plus request features."""
    vector = load_registry().models[MODEL].vector
    rows = []
    for n, account in enumerate(itertools.islice(itertools.cycle(_accounts()), count)):
        amount, category = _request_features(n)
        values = {**account, "amount": amount, "merchant_category": category}
        rows.append(np.array([[float(values[name]) for name in vector]], dtype=np.float32))
    return rows


def _infer_payloads(rows: list[np.ndarray]) -> list[list[InferInput]]:
    payloads = []
    for row in rows:
        tensor = InferInput("features", list(row.shape), "FP32")
        tensor.set_data_from_numpy(row)
        payloads.append([tensor])
    return payloads


@asynccontextmanager
async def open_infer(target: str, version: str, timeout_s: float, model: str = MODEL) -> AsyncIterator[Send]:
    """One tritonclient.grpc.aio client sending single-row ModelInfer for `model` (a route, at the gateway)."""
    payloads = _infer_payloads(feature_rows())
    outputs = [InferRequestedOutput("score")]
    client = triton_aio.InferenceServerClient(target)
    try:

        async def send(n: int) -> bool:
            await client.infer(model, payloads[n % len(payloads)], version, outputs, client_timeout=timeout_s)
            return False

        yield send
    finally:
        await client.close()


def _instance(account: str, amount: float, category: int) -> gateway_pb2.Instance:
    return gateway_pb2.Instance(
        entity_key=account,
        features={
            "amount": feature_pb2.Value(double_value=amount),
            "merchant_category": feature_pb2.Value(int64_value=category),
        },
    )


@asynccontextmanager
async def open_predict(
    target: str, make_request: Callable[[int], gateway_pb2.PredictRequest], timeout_s: float
) -> AsyncIterator[Send]:
    """One channel to the gateway sending one-instance Predicts; reports whether the answer was cached."""
    async with grpc.aio.insecure_channel(target) as channel:
        predict = gateway_pb2_grpc.PredictionServiceStub(channel).Predict

        async def send(n: int) -> bool:
            reply = await predict(make_request(n), timeout=timeout_s)
            return reply.predictions[0].from_cache

        yield send


def _miss_request(n: int) -> gateway_pb2.PredictRequest:
    # `n` is unique for the whole run, so every amount is new and the cache never has the answer
    account = f"acct-{n % 1000:05d}"
    return gateway_pb2.PredictRequest(route=ROUTE, instances=[_instance(account, 1.0 + n / 100, n % 10)])


_hit_pools = itertools.count()


def _hit_requests() -> Callable[[int], gateway_pb2.PredictRequest]:
    """A fresh pool of HIT_POOL inputs per run: primed by its own warm-up, so no entry can expire (route TTL
    30 s) in the measured window unless warm-up + duration exceed the TTL."""
    base = 500_000.0 + 1_000.0 * next(_hit_pools)
    pool = [
        gateway_pb2.PredictRequest(route=ROUTE, instances=[_instance(f"acct-{n:05d}", base + n, n % 10)])
        for n in range(HIT_POOL)
    ]
    return lambda n: pool[n % HIT_POOL]


SPLIT_ROUTE = "fraud-split"
SPLIT_ROUTE_SPEC = {
    "variants": [
        {"name": "stable", "model": MODEL, "version": "1", "weight": 90},
        {"name": "canary", "model": MODEL, "version": "2", "weight": 10},
    ]
}


def _mixed_requests(hit_share: float) -> Callable[[int], gateway_pb2.PredictRequest]:
    """`hit_share` of requests from a small primed pool (cache hits), the rest new inputs (misses)."""
    hits = _hit_requests()
    every = round(1 / (1 - hit_share))  # e.g. 0.9 -> every 10th request is a miss
    return lambda n: _miss_request(n) if n % every == 0 else hits(n)


def _uncached_miss_request(n: int) -> gateway_pb2.PredictRequest:
    request = _miss_request(n)
    request.route = NOCACHE_ROUTE
    return request


NOCACHE_ROUTE = "fraud-nocache"
NOCACHE_ROUTE_SPEC = {
    "cache": {"enabled": False},
    "variants": [{"name": "stable", "model": MODEL, "version": "1", "weight": 100}],
}


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    open: Callable[[Endpoints, float], AbstractAsyncContextManager[Send]]


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            "direct",
            "tritonclient.grpc.aio -> Triton ModelInfer fraud v1 (the baseline)",
            lambda ep, timeout_s: open_infer(ep.triton_grpc, VERSION, timeout_s),
        ),
        Scenario(
            "gateway-infer",
            "tritonclient.grpc.aio -> gateway ModelInfer route fraud -> inference service -> Triton",
            lambda ep, timeout_s: open_infer(ep.gateway, "", timeout_s),
        ),
        Scenario(
            "gateway-infer-split",
            f"as gateway-infer, on route {SPLIT_ROUTE}: fraud v1 90 % / v2 10 % (weighted random)",
            lambda ep, timeout_s: open_infer(ep.gateway, "", timeout_s, SPLIT_ROUTE),
        ),
        Scenario(
            "gateway-predict",
            "Predict, a new amount every request: gateway -> cache miss -> feature -> inference -> Triton",
            lambda ep, timeout_s: open_predict(ep.gateway, _miss_request, timeout_s),
        ),
        Scenario(
            "gateway-predict-nocache",
            f"as gateway-predict, on route {NOCACHE_ROUTE} with the cache off (cache on vs off on all misses)",
            lambda ep, timeout_s: open_predict(ep.gateway, _uncached_miss_request, timeout_s),
        ),
        Scenario(
            "gateway-predict-90hit",
            "Predict, 90 % from a primed pool (cache hits) and 10 % new inputs (misses)",
            lambda ep, timeout_s: open_predict(ep.gateway, _mixed_requests(0.9), timeout_s),
        ),
        Scenario(
            "gateway-predict-hit",
            f"Predict over {HIT_POOL} fixed inputs: answered from the cache after warm-up (not Triton)",
            lambda ep, timeout_s: open_predict(ep.gateway, _hit_requests(), timeout_s),
        ),
    ]
}
