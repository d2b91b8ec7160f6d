"""The REST form of the Open Inference Protocol on its own port: uvicorn serving `OpenInferenceRest` inside the
gateway's own event loop. The gateway owns signals and logging configuration; uvicorn touches neither.

Same lifecycle as every meshserve server: `await start()` binds (port 0: any free one) and returns the port,
`await stop(grace)` refuses new connections and lets requests already received finish within `grace`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Literal

import uvicorn

from gateway.api.http_api import OpenInferenceRest
from gateway.api.http_tracing import HttpTracing
from gateway.serving.inference_api import InferenceApi
from meshserve.core.metrics import ServiceMetrics
from meshserve.core.telemetry import tracing_configured
from meshserve.core.tls import TlsSettings, requires_client_certificate, server_ssl_context

__all__ = ["HttpFrontend"]

log = logging.getLogger(__name__)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn as a task in someone else's loop: it installs no signal handlers (the gateway's SIGTERM handling
    drains every server in order) and says when it is listening."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.listening.set()


def _listening_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A TCP socket listening on (host, port). Its protocol is IPPROTO_TCP, not 0, so asyncio sets TCP_NODELAY on
    every connection it accepts: without it a reply written as headers, then body, waits for the client's
    delayed ACK (40 ms). With `reuse_port` several processes bind the same port (SO_REUSEPORT) and the kernel
    spreads new connections across them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


class HttpFrontend:
    """Triton's REST API for `api` on its own port (the gRPC server's neighbour in the gateway process)."""

    def __init__(
        self,
        api: InferenceApi,
        is_ready: Callable[[], bool],
        host: str = "127.0.0.1",
        port: int = 0,
        max_body_bytes: int = 4 * 1024 * 1024,
        *,
        answers: Counter[tuple[str, str]] | None = None,
        metrics: ServiceMetrics | None = None,
        keep_alive_s: int = 75,
        grace_s: float = 10.0,
        tls: TlsSettings | None = None,
        reuse_port: bool = False,
        traced: bool | None = None,
        http_parser: Literal["httptools", "h11"] = "httptools",
    ) -> None:
        self.rest = OpenInferenceRest(api, is_ready, max_body_bytes, answers, metrics)
        self.host = host
        self.requested_port = port
        self.keep_alive_s = keep_alive_s  # longer than the idle timeout of the balancers usually in front
        self.grace_s = grace_s
        self.reuse_port = reuse_port  # share the port with the mesh's other gateway processes
        # httptools parses HTTP/1.1 in C (llhttp): less CPU per request than h11, uvicorn's pure-Python parser
        self.http_parser = http_parser
        # a span per request, joining the caller's trace; None: whether this process configured tracing
        self.traced = tracing_configured() if traced is None else traced
        # HTTPS once there is a certificate
        self.tls = tls if tls is not None and tls.tls_cert_file is not None else None
        self.port: int | None = None
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Listen, and return the port (the one the OS chose when asked for 0)."""
        sock = _listening_socket(self.host, self.requested_port, self.reuse_port)
        app = self.rest.app()
        config = uvicorn.Config(
            HttpTracing(app) if self.traced else app,
            log_config=None,  # the gateway configured logging; uvicorn's own loggers propagate to it
            access_log=False,  # ours is meshserve.access, at DEBUG, as for gRPC
            lifespan="off",
            ws="none",
            http=self.http_parser,
            proxy_headers=False,
            server_header=False,
            timeout_keep_alive=self.keep_alive_s,
            **self._ssl_options(),
        )
        if self.tls is not None:  # uvicorn's context, replaced by one that follows the files on disk
            config.load()
            config.ssl = server_ssl_context(self.tls)
        server = _EmbeddedServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="http-frontend")
        listening = asyncio.create_task(server.listening.wait())
        await asyncio.wait((task, listening), return_when=asyncio.FIRST_COMPLETED)
        if not listening.done():  # uvicorn ended before it listened: say why
            listening.cancel()
            sock.close()
            task.result()
            raise OSError(f"the HTTP frontend stopped before listening on {self.host}:{self.requested_port}")
        self._server, self._task = server, task
        self.port = sock.getsockname()[1]
        log.info("listening", extra={"port": self.port, "address": self.host, "protocol": "http"})
        return self.port

    def _ssl_options(self) -> dict[str, object]:
        if self.tls is None:
            return {}
        return {
            "ssl_certfile": self.tls.tls_cert_file,
            "ssl_keyfile": self.tls.tls_key_file,
            "ssl_ca_certs": self.tls.tls_ca_file,
            "ssl_cert_reqs": ssl.CERT_REQUIRED if requires_client_certificate(self.tls) else ssl.CERT_NONE,
        }

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new connections, close idle ones, and let requests already received finish for up to `grace`
        seconds; the rest are cancelled."""
        if self._server is None or self._task is None:
            return
        grace = self.grace_s if grace is None else grace
        self._server.config.timeout_graceful_shutdown = grace  # type: ignore[assignment]  # read at shutdown
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace + 5)
        except TimeoutError:
            log.warning("the HTTP frontend did not stop in time; cancelled")
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._server = self._task = None
        log.info("stopped", extra={"protocol": "http"})
