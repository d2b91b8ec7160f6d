"""The Triton client of the mesh.

Control calls (readiness, metadata, config) go through `tritonclient.grpc.aio`. Inference goes out on a channel
of our own, as the serialised ModelInferRequest it arrived as: building InferInput objects would decode and
re-encode every tensor. One channel multiplexes every in-flight call, so Triton's dynamic batcher sees them all
at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass

import grpc
from tritonclient.grpc import InferenceServerException, service_pb2
from tritonclient.grpc.aio import InferenceServerClient

from meshserve.core.channels import channel_options, error_from_rpc
from meshserve.core.context import outgoing_metadata
from meshserve.core.errors import ErrorCode, MeshError, NotFound

log = logging.getLogger(__name__)
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass(frozen=True, slots=True)
class ModelDescription:
    name: str
    version: str  # the resolved version ("" in a request means the highest available)
    ready: bool
    metadata: service_pb2.ModelMetadataResponse
    config: service_pb2.ModelConfigResponse


def _mesh_error(exc: InferenceServerException, what: str) -> MeshError:
    status = (exc.status() or "").rsplit(".", 1)[-1]  # tritonclient reports e.g. "StatusCode.NOT_FOUND"
    code = ErrorCode.__members__.get(status, ErrorCode.UNAVAILABLE)
    return MeshError(f"{what}: {exc.message()}", code)


class TritonBackend:
    def __init__(self, url: str, timeout_s: float, max_message_bytes: int) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.control = InferenceServerClient(url)
        self._channel = grpc.aio.insecure_channel(url, options=channel_options(max_message_bytes))
        # bytes in, bytes out: the hot path never parses what it forwards
        self._model_infer = self._channel.unary_unary(MODEL_INFER)

    async def wait_ready(self, models: list[str], timeout_s: float) -> None:
        """Wait (bounded) until Triton and each `name[:version]` in `models` are ready."""
        deadline = time.monotonic() + timeout_s
        pending = ["", *models]  # "" = the server itself
        while pending:
            target = pending[0]
            try:
                name, _, version = target.partition(":")
                ready = (
                    await self.control.is_model_ready(name, version, client_timeout=2.0)
                    if name
                    else await self.control.is_server_ready(client_timeout=2.0)
                )
            except InferenceServerException:
                ready = False
            if ready:
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Triton at {self.url}: {target or 'server'} not ready after {timeout_s:.0f}s"
                )
            await asyncio.sleep(0.1)
        log.info("triton ready", extra={"url": self.url, "models": models})

    async def describe(self, name: str, version: str = "") -> ModelDescription:
        try:
            metadata = await self.control.get_model_metadata(name, version, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise _mesh_error(exc, f"model {name!r}") from None
        resolved = version or max(metadata.versions, key=int, default="")
        if version and version not in metadata.versions:
            raise NotFound(f"model {name!r} has no version {version!r}; available: {list(metadata.versions)}")
        try:
            config = await self.control.get_model_config(name, resolved, client_timeout=self.timeout_s)
            ready = await self.control.is_model_ready(name, resolved, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise _mesh_error(exc, f"model {name!r} version {resolved}") from None
        return ModelDescription(name, resolved, ready, metadata, config)

    async def serve_versions(self, name: str, versions: list[str], timeout_s: float) -> list[str]:
        """Reload `name` with a version policy of exactly `versions` (explicit model control), then wait until each
        is ready. Triton keeps serving the versions that stay, and finishes in-flight work on those that go."""
        try:
            config = (await self.control.get_model_config(name, as_json=True, client_timeout=self.timeout_s))[
                "config"
            ]
            config["version_policy"] = {"specific": {"versions": [int(v) for v in versions]}}
            await self.control.load_model(name, config=json.dumps(config), client_timeout=timeout_s)
        except InferenceServerException as exc:
            raise _mesh_error(exc, f"serving versions {versions} of model {name!r}") from None
        except ValueError:
            raise MeshError(
                f"versions must be integers, got {versions}", ErrorCode.INVALID_ARGUMENT
            ) from None
        await self.wait_ready([f"{name}:{v}" for v in versions], timeout_s)
        return versions

    async def forward(self, request: bytes, timeout_s: float | None) -> bytes:
        """One serialised ModelInferRequest to Triton and its serialised answer, bounded by the caller's remaining
        time and our own ceiling. The caller sets Triton's per-request `timeout` parameter."""
        timeout = self.timeout_s if timeout_s is None else min(timeout_s, self.timeout_s)
        if timeout <= 0:
            raise MeshError("no time left for inference", ErrorCode.DEADLINE_EXCEEDED)
        try:
            return await self._model_infer(request, timeout=timeout, metadata=outgoing_metadata())
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, "triton") from None

    async def close(self) -> None:
        await self.control.close()
        await self._channel.close()


__all__ = ["ModelDescription", "TritonBackend"]
