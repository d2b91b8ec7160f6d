"""One lifecycle for every meshserve process: `await start() -> port`, `await wait()`, `await stop(grace)`.

A service registers its servicers, then becomes SERVING only once `until_ready()` (its dependencies) returns, and
afterwards follows them (`follow_dependencies()`). On SIGTERM or SIGINT it turns NOT_SERVING for every service
name, keeps serving for `shutdown_settle_s` so health checkers see it and move their traffic away, then
refuses new calls, lets every call it has received finish within the grace period, and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Iterable
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from meshserve.core import tls
from meshserve.core.interceptors import HandlerRegistry
from meshserve.core.metrics import ServiceMetrics
from meshserve.core.settings import ServiceSettings

log = logging.getLogger(__name__)
S = TypeVar("S", bound=ServiceSettings)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class GrpcService:
    """Base class: subclasses implement `register`, and optionally `until_ready`, `follow_dependencies` and
    `close`."""

    name: str = "service"

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.health = health.aio.HealthServicer()
        self.metrics = ServiceMetrics(self.name)
        self._server: grpc.aio.Server | None = None
        self._ready_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._failed = asyncio.Event()
        self.failure: BaseException | None = None
        self._services: list[str] = []
        self.port: int | None = None

    # -- for subclasses -------------------------------------------------------------------------------
    def register(self, server: HandlerRegistry) -> Iterable[str]:
        """Add servicers to `server` (generated `add_*_to_server` functions take it as they take a server; it
        wraps each handler once); return their full service names (for health and reflection)."""
        raise NotImplementedError

    async def until_ready(self) -> None:
        """Wait for this service's own dependencies; SERVING is reported only after it returns."""

    async def follow_dependencies(self) -> None:
        """Once SERVING: keep health in step with the dependencies (`set_serving`) until cancelled at stop. By
        default there is nothing to follow."""

    async def close(self) -> None:
        """Release clients and stores after the server has stopped."""

    def guard(self) -> tls.PeerGuard | None:
        """What every call passes before its handler (HandlerRegistry's guard): with tls_allowed_peers set, the
        caller's verified certificate must name one of them (PERMISSION_DENIED otherwise)."""
        if self.settings.tls_allowed_peers:
            return tls.peer_guard(self.settings.tls_allowed_peers, self.name)
        return None

    # -- lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> int:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.settings.max_message_bytes),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                # off by default: a second process on a taken port must fail, not silently share it
                ("grpc.so_reuseport", int(self.settings.reuse_port)),
            ],
        )
        handlers = HandlerRegistry(server, self.metrics, self.guard())
        self._services = list(self.register(handlers))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, handlers)
        # the asyncio servicer, named outright: given our registry, enable_server_reflection picks the sync one
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(
                [*self._services, health.SERVICE_NAME, reflection.SERVICE_NAME]
            ),
            handlers,
        )
        for service in ["", *self._services]:
            await self.health.set(service, NOT_SERVING)
        address = f"{self.settings.host}:{self.settings.port}"
        credentials = tls.server_credentials(self.settings)  # follows the certificate files on disk
        if credentials is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, credentials)
        if self.port == 0:
            raise OSError(f"{self.name}: cannot listen on {self.settings.host}:{self.settings.port}")
        await server.start()
        self._server = server
        if self.settings.metrics_port is not None:
            s = self.settings
            self.metrics.serve(s.metrics_host or s.host, s.metrics_port, s.tls_cert_file, s.tls_key_file)
        self._ready_task = asyncio.create_task(self._become_ready(), name=f"{self.name}-ready")
        log.info("listening", extra={"port": self.port, "address": self.settings.host})
        return self.port

    async def _become_ready(self) -> None:
        try:
            await asyncio.wait_for(self.until_ready(), self.settings.dependency_timeout_s)
        except Exception as exc:
            # Exit rather than linger unhealthy: a supervisor (compose, Kubernetes, `meshserve up`) restarts or
            # reports a process that exits, never one that merely stays NOT_SERVING.
            log.exception("dependencies never became ready; giving up")
            self.failure = exc
            self._failed.set()
            return
        await self.set_serving(True)
        log.info("serving")
        await self.follow_dependencies()

    async def set_serving(self, serving: bool) -> None:
        """SERVING or NOT_SERVING for the whole server and every service name; ignored once shutting down."""
        for service in ["", *self._services]:
            await self.health.set(service, SERVING if serving else NOT_SERVING)

    async def announce_shutdown(self) -> None:
        """NOT_SERVING for every service name, for good; the server still takes calls until `stop`."""
        if self._ready_task is not None:  # nothing may set SERVING again
            self._ready_task.cancel()
            await asyncio.gather(self._ready_task, return_exceptions=True)
        await self.health.enter_graceful_shutdown()

    async def wait(self) -> None:
        await self._stopped.wait()

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING first (if `announce_shutdown` has not said it yet), then refuse new calls and let those
        already received finish for up to `grace` seconds; calls still running after it are cancelled."""
        if self._server is None:
            return
        grace = self.settings.grace_s if grace is None else grace
        await self.announce_shutdown()
        log.info("draining", extra={"grace_s": grace})
        await self._server.stop(grace)
        self._server = None
        self.metrics.close()
        await self.close()
        self._stopped.set()
        log.info("stopped")


async def serve(make_service: Callable[[], GrpcService]) -> None:
    """Build the service inside the running loop (gRPC channels bind to it), serve until SIGTERM/SIGINT, then
    leave gracefully: NOT_SERVING, `shutdown_settle_s` still serving, then `stop()`. For `__main__` modules."""
    service = make_service()
    settle_s = service.settings.shutdown_settle_s
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    await service.start()
    signalled = asyncio.ensure_future(stop_requested.wait())
    failed = asyncio.ensure_future(service._failed.wait())
    await asyncio.wait({signalled, failed}, return_when=asyncio.FIRST_COMPLETED)
    if signalled.done():
        await service.announce_shutdown()
        log.info("not serving; settling before the drain", extra={"settle_s": settle_s})
        await asyncio.sleep(settle_s)
    await service.stop()
    if service.failure is not None:
        raise SystemExit(1)


def run(make_service: Callable[[], GrpcService]) -> None:
    """Blocking entry point, on uvloop."""
    import uvloop

    uvloop.run(serve(make_service))


def main(service_class: Callable[[S], GrpcService], settings_class: Callable[[], S]) -> None:
    """The whole `__main__` of a service: settings from the environment, JSON logs, serve until SIGTERM."""
    from meshserve.core.logs import configure_logging
    from meshserve.core.telemetry import configure_tracing, shutdown_tracing

    settings = settings_class()
    name = getattr(service_class, "name", "service")
    configure_logging(name, settings.log_level)
    configure_tracing(name)
    try:
        run(lambda: service_class(settings))
    finally:
        shutdown_tracing()
