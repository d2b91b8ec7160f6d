"""Prometheus metrics every process exports: one registry per process, RPC counts, latency and in-flight calls
recorded by the server interceptor, plus whatever collectors the service adds. Served over HTTP on the
service's `metrics_port` when it is set."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServiceMetrics:
    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        prefix = f"meshserve_{service}"
        self.requests = Counter(
            f"{prefix}_rpc_requests", "RPCs handled, by method and status code", ["method", "code"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            f"{prefix}_rpc_latency_seconds", "RPC handling time", ["method"], buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.in_flight = Gauge(
            f"{prefix}_rpc_in_flight", "RPCs being handled", ["method"], registry=self.registry
        )
        self._server = None
        self.port: int | None = None

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def serve(self, host: str, port: int, certfile: Path | None = None, keyfile: Path | None = None) -> int:
        """Serve /metrics on `port`: over HTTPS with this certificate when given (read-only data, so scrapers
        need only the CA, not a client certificate)."""
        tls = {"certfile": str(certfile), "keyfile": str(keyfile)} if certfile and keyfile else {}
        self._server, _ = start_http_server(port, host, registry=self.registry, **tls)
        self.port = self._server.server_port
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
