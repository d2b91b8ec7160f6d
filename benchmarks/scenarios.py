"""The benchmark's scenarios: what is called, through which path, with which client.

Every scenario is an async context manager that opens one client and yields a `Send`: an awaitable taking the
request's sequence number and returning whether the answer came from the mesh's cache. Payloads are built before
the timed loop; only what must differ per request (the Predict `amount` of the cache-miss scenario) is made
inside it. Each scenario names the baseline its ratios are taken against, and the Triton model whose statistics
give its average batch size.
"""

from __future__ import annotations

import copy
import csv
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_http_aio
from tritonclient.grpc import InferInput, InferRequestedOutput

from benchmarks.load import Send
from meshserve.core.tls import ClientTls
from meshserve.feature.registry import load_registry
from meshserve.feature.v1 import feature_pb2
from meshserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc

__all__ = ["BENCH_MODELS", "SCENARIOS", "Scenario", "Targets", "bench_routes", "triton_counts"]

MODEL, VERSION, ROUTE = "fraud", "1", "fraud"
DENSE = "dense"  # the compute-bound benchmark model (benchmarks/model_repository)
BENCH_MODELS = Path(__file__).resolve().parent / "model_repository"
ROW_POOL = 256  # distinct single-row payloads cycled through by the ModelInfer scenarios
HIT_POOL = 64  # distinct Predict inputs reused by gateway-predict-hit (primed during its warm-up)


@dataclass(frozen=True)
class Targets:
    gateway: str
    triton: str
    envoy: str  # Envoy as a plain proxy in front of Triton
    gateway_tls: str = ""  # the gateway of a second mesh running with mTLS on every hop (`up --tls`)
    tls: ClientTls | None = None  # the CA and the `client` certificate for it
    gateway_many: str = (
        ""  # the gateway port of a third mesh, served by several processes (`up --gateways N`)
    )
    gateway_http: str = ""  # the gateway's REST port (the Open Inference Protocol over HTTP)
    triton_http: str = ""  # Triton's own REST port


async def triton_counts(client: triton_aio.InferenceServerClient, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) of every version of `model` from Triton's statistics: rows inferred,
    batches run (a split route reaches both versions)."""
    stats = await client.get_inference_statistics(model, client_timeout=10)
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


def dense_rows(count: int = ROW_POOL, width: int = 32) -> list[np.ndarray]:
    rng = np.random.default_rng(20261201)
    return [rng.standard_normal((1, width)).astype(np.float32) for _ in range(count)]


def _infer_payloads(rows: list[np.ndarray], name: str) -> list[list[InferInput]]:
    payloads = []
    for row in rows:
        tensor = InferInput(name, list(row.shape), "FP32")
        tensor.set_data_from_numpy(row)
        payloads.append([tensor])
    return payloads


def tls_options(tls: ClientTls | None) -> dict[str, object]:
    """tritonclient's own TLS options: the CA to verify with, and the client certificate for mTLS."""
    if tls is None:
        return {}
    return {"ssl": True, "root_certificates": str(tls.ca_file), "private_key": str(tls.key_file),
            "certificate_chain": str(tls.cert_file)}  # fmt: skip


@asynccontextmanager
async def open_infer(
    target: str, version: str, timeout_s: float, model: str = MODEL, tls: ClientTls | None = None
) -> AsyncIterator[Send]:
    """One tritonclient.grpc.aio client sending single-row ModelInfer for `model` (a route, at the gateway);
    over mTLS with `tls`."""
    dense = model == DENSE
    payloads = _infer_payloads(dense_rows() if dense else feature_rows(), "x" if dense else "features")
    outputs = [InferRequestedOutput("y" if dense else "score")]
    client = triton_aio.InferenceServerClient(target, **tls_options(tls))
    try:

        async def send(n: int) -> bool:
            await client.infer(model, payloads[n % len(payloads)], version, outputs, client_timeout=timeout_s)
            return False

        yield send
    finally:
        await client.close()


@asynccontextmanager
async def open_rest_infer(target: str, version: str, timeout_s: float) -> AsyncIterator[Send]:
    """One tritonclient.http.aio client (aiohttp, a pool of keep-alive connections) sending single-row infer
    requests for fraud over REST, tensors in binary both ways (tritonclient's default, and the cheap form)."""
    payloads = []
    for row in feature_rows():
        tensor = triton_http_aio.InferInput("features", list(row.shape), "FP32")
        tensor.set_data_from_numpy(row, binary_data=True)
        payloads.append([tensor])
    outputs = [triton_http.InferRequestedOutput("score", binary_data=True)]
    client = triton_http_aio.InferenceServerClient(target, conn_timeout=timeout_s)
    try:

        async def send(n: int) -> bool:
            await client.infer(MODEL, payloads[n % len(payloads)], version, outputs)
            return False

        yield send
    finally:
        await client.close()


SPREAD_CONNECTIONS = 8  # enough TCP connections that SO_REUSEPORT spreads them over every gateway process


@asynccontextmanager
async def open_infer_spread(
    target: str, timeout_s: float, connections: int = SPREAD_CONNECTIONS
) -> AsyncIterator[Send]:
    """As open_infer (route fraud), over `connections` clients each with its own TCP connection, requests
    dealt round robin: the kernel spreads connections, not requests, across processes sharing a port."""
    payloads = _infer_payloads(feature_rows(), "features")
    outputs = [InferRequestedOutput("score")]
    # a local subchannel pool: else grpc shares one connection among channels with the same target and args
    args = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 64 * 2**20)]
    clients = [triton_aio.InferenceServerClient(target, channel_args=args) for _ in range(connections)]
    try:

        async def send(n: int) -> bool:
            client = clients[n % connections]
            await client.infer(MODEL, payloads[n % len(payloads)], "", outputs, client_timeout=timeout_s)
            return False

        yield send
    finally:
        for client in clients:
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


def _miss_request_on(route: str) -> Callable[[int], gateway_pb2.PredictRequest]:
    def make(n: int) -> gateway_pb2.PredictRequest:
        request = _miss_request(n)
        request.route = route
        return request

    return make


# Copies of the sample route `fraud` with one thing turned off, so that a pair of scenarios differs in that alone
NOCACHE_ROUTE = "fraud-nocache"  # the cache off (the prediction log on, as on fraud)
NOLOG_ROUTE = "fraud-nolog"  # the prediction log off (the cache on, as on fraud)


def _turned_off(route: dict, block: str) -> dict:
    changed = copy.deepcopy(route)
    changed[block] = {**changed.get(block, {}), "enabled": False}
    return changed


DENSE_ROUTE_SPEC = {
    "cache": {"enabled": False},
    "timeout_ms": 5000,
    "variants": [{"name": "stable", "model": DENSE, "version": "1", "weight": 100}],
}


def bench_routes(routes: dict) -> dict:
    """The embedded routes file (`routes: {name: spec}`) plus the benchmark's own routes, as a new dict."""
    fraud = routes["routes"][ROUTE]
    own = {
        SPLIT_ROUTE: SPLIT_ROUTE_SPEC,
        NOCACHE_ROUTE: _turned_off(fraud, "cache"),
        NOLOG_ROUTE: _turned_off(fraud, "quality"),
        DENSE: DENSE_ROUTE_SPEC,
    }
    return {**routes, "routes": {**routes["routes"], **copy.deepcopy(own)}}


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    open: Callable[[Targets, float], AbstractAsyncContextManager[Send]]
    baseline: str = "direct"  # ratios are taken against this scenario at the same concurrency
    model: str = MODEL  # whose Triton statistics give the average batch
    tls: bool = False  # runs against the mesh with mTLS on every hop (its own processes, Triton and CPU)
    gateways: bool = (
        False  # runs against the mesh of `--gateways N` gateway processes (its own, measured alone)
    )


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            "direct",
            "tritonclient.grpc.aio -> Triton ModelInfer fraud v1 (the baseline)",
            lambda t, timeout_s: open_infer(t.triton, VERSION, timeout_s),
        ),
        Scenario(
            "envoy",
            "tritonclient.grpc.aio -> Envoy 1.40 (plain gRPC proxy, one worker) -> Triton: the peer",
            lambda t, timeout_s: open_infer(t.envoy, VERSION, timeout_s),
        ),
        Scenario(
            "gateway-infer",
            "tritonclient.grpc.aio -> gateway ModelInfer route fraud -> inference service -> Triton (prediction "
            "log on)",
            lambda t, timeout_s: open_infer(t.gateway, "", timeout_s),
        ),
        Scenario(
            "gateway-infer-nolog",
            f"as gateway-infer, on route {NOLOG_ROUTE}: fraud with the prediction log off (log on vs off)",
            lambda t, timeout_s: open_infer(t.gateway, "", timeout_s, NOLOG_ROUTE),
        ),
        Scenario(
            "gateway-infer-tls",
            "as gateway-infer, with mTLS on every hop (client, gateway, inference, Triton): its ratio is TLS on/off",
            lambda t, timeout_s: open_infer(t.gateway_tls, "", timeout_s, tls=t.tls),
            baseline="gateway-infer",
            tls=True,
        ),
        Scenario(
            "gateway-infer-spread",
            f"as gateway-infer, over {SPREAD_CONNECTIONS} connections to the one gateway process: the baseline of "
            "gateway-infer-gateways",
            lambda t, timeout_s: open_infer_spread(t.gateway, timeout_s),
            baseline="gateway-infer",
        ),
        Scenario(
            "gateway-infer-gateways",
            "as gateway-infer-spread, against N gateway processes on one port (`up --gateways N`, bench "
            "--gateways): its ratio is N gateways vs 1",
            lambda t, timeout_s: open_infer_spread(t.gateway_many, timeout_s),
            baseline="gateway-infer-spread",
            gateways=True,
        ),
        Scenario(
            "gateway-infer-split",
            f"as gateway-infer, on route {SPLIT_ROUTE}: fraud v1 90 % / v2 10 % (weighted random)",
            lambda t, timeout_s: open_infer(t.gateway, "", timeout_s, SPLIT_ROUTE),
        ),
        Scenario(
            "direct-rest",
            "tritonclient.http.aio -> Triton's own REST port, infer fraud v1, binary tensors: the REST baseline",
            lambda t, timeout_s: open_rest_infer(t.triton_http, VERSION, timeout_s),
            baseline="direct-rest",
        ),
        Scenario(
            "gateway-rest",
            "tritonclient.http.aio -> gateway REST infer route fraud -> inference service -> Triton (prediction "
            "log on; the gateway's HTTP parser: MESHSERVE_GATEWAY_HTTP_PARSER, httptools by default)",
            lambda t, timeout_s: open_rest_infer(t.gateway_http, "", timeout_s),
            baseline="direct-rest",
        ),
        Scenario(
            "gateway-predict",
            "Predict, a new amount every request: gateway -> cache miss -> feature -> inference -> Triton (prediction "
            "log on)",
            lambda t, timeout_s: open_predict(t.gateway, _miss_request, timeout_s),
        ),
        Scenario(
            "gateway-predict-nolog",
            f"as gateway-predict, on route {NOLOG_ROUTE}: fraud with the prediction log off (log on vs off)",
            lambda t, timeout_s: open_predict(t.gateway, _miss_request_on(NOLOG_ROUTE), timeout_s),
        ),
        Scenario(
            "gateway-predict-nocache",
            f"as gateway-predict, on route {NOCACHE_ROUTE} with the cache off (cache on vs off on all misses)",
            lambda t, timeout_s: open_predict(t.gateway, _miss_request_on(NOCACHE_ROUTE), timeout_s),
        ),
        Scenario(
            "gateway-predict-90hit",
            "Predict, 90 % from a primed pool (cache hits) and 10 % new inputs (misses)",
            lambda t, timeout_s: open_predict(t.gateway, _mixed_requests(0.9), timeout_s),
        ),
        Scenario(
            "gateway-predict-hit",
            f"Predict over {HIT_POOL} fixed inputs: answered from the cache after warm-up (not Triton)",
            lambda t, timeout_s: open_predict(t.gateway, _hit_requests(), timeout_s),
        ),
        Scenario(
            "dense-direct",
            "tritonclient.grpc.aio -> Triton, compute-bound model dense (~1 ms per batch): its baseline",
            lambda t, timeout_s: open_infer(t.triton, VERSION, timeout_s, DENSE),
            baseline="dense-direct",
            model=DENSE,
        ),
        Scenario(
            "dense-gateway",
            "tritonclient.grpc.aio -> gateway ModelInfer route dense -> inference service -> Triton",
            lambda t, timeout_s: open_infer(t.gateway, "", timeout_s, DENSE),
            baseline="dense-direct",
            model=DENSE,
        ),
    ]
}
