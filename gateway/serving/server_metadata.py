"""What the gateway's ServerMetadata answers: the name and version of the Triton behind the mesh, as that Triton
reports them, and those of its extensions that work through the gateway. Clients written for Triton check the
name (Triton's own examples require "triton"), so the gateway answers as a transparent proxy would, and says
who it is beside the answer: `x-meshserve-server: meshserve/<version>` (trailing metadata on gRPC, a header on
REST). No gRPC here.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from tritonclient.grpc import service_pb2

from gateway.serving.clients import InferenceClient

__all__ = ["GATEWAY_EXTENSIONS", "SERVER_HEADER", "TritonMetadata", "as_served", "server_identity"]

log = logging.getLogger(__name__)
SERVER_HEADER = "x-meshserve-server"
# Triton's extensions that work through the gateway as against Triton: data plane features it checks and passes
# on, and control calls it passes through. Shared memory, system and CUDA, works where the caller shares Triton's
# host (and GPU), as it does against Triton itself. An extension a newer Triton adds is not claimed until the
# gateway has been checked with it.
GATEWAY_EXTENSIONS = frozenset({
    "classification", "sequence", "model_repository", "model_repository(unload_dependents)", "schedule_policy",
    "model_configuration", "system_shared_memory", "cuda_shared_memory", "binary_tensor_data", "parameters",
    "statistics", "trace", "logging",
})  # fmt: skip


def server_identity(version: str) -> str:
    return f"meshserve/{version}"


def as_served(triton: service_pb2.ServerMetadataResponse) -> service_pb2.ServerMetadataResponse:
    """Triton's answer as the gateway gives it: Triton's name and version; its extensions, in its order, less those
    the gateway does not serve."""
    return service_pb2.ServerMetadataResponse(
        name=triton.name,
        version=triton.version,
        extensions=[e for e in triton.extensions if e in GATEWAY_EXTENSIONS],
    )


class TritonMetadata:
    """Triton's ServerMetadata, asked once and kept. Once older than `max_age_s` it is still answered, and asked
    again in the background (a Triton restarted at another version shows within that); until first known, each
    caller waits for one shared call, and a failure is the caller's error."""

    def __init__(
        self,
        inference: InferenceClient,
        max_age_s: float = 300.0,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inference = inference
        self.max_age_s = max_age_s
        self.timeout_s = timeout_s
        self.clock = clock
        self.known: service_pb2.ServerMetadataResponse | None = None
        self._asked_at = -math.inf
        self._asking: asyncio.Future[service_pb2.ServerMetadataResponse] | None = None

    @property
    def asking(self) -> bool:
        """Whether Triton is being asked now."""
        return self._asking is not None

    async def get(self) -> service_pb2.ServerMetadataResponse:
        if self.known is None:
            return await asyncio.shield(self._ask())
        if self.clock() - self._asked_at >= self.max_age_s:
            self._ask()  # the answer below is at most one refresh old
        return self.known

    def _ask(self) -> asyncio.Future[service_pb2.ServerMetadataResponse]:
        if self._asking is None:
            self._asked_at = self.clock()  # a failing Triton is not asked again sooner either
            self._asking = asyncio.ensure_future(self._fetch())
            self._asking.add_done_callback(self._asked)
        return self._asking

    async def _fetch(self) -> service_pb2.ServerMetadataResponse:
        request = service_pb2.ServerMetadataRequest()
        reply = await self.inference.control("ServerMetadata", request, self.timeout_s)
        served = as_served(reply)
        if served != self.known:
            log.info(
                "Triton's server metadata", extra={"server": reply.name, "server_version": reply.version}
            )
        self.known = served
        return served

    def _asked(self, task: asyncio.Future[service_pb2.ServerMetadataResponse]) -> None:
        self._asking = None
        if (
            not task.cancelled() and (exc := task.exception()) is not None
        ):  # retrieved: every caller may be gone
            log.warning("Triton's server metadata could not be read", extra={"reason": str(exc)})
