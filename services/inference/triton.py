"""The Triton client of the mesh.

Control calls (readiness, metadata, config) go through `tritonclient.grpc.aio`. Inference goes out on a channel
of our own, as the serialised ModelInferRequest it arrived as: building InferInput objects would decode and
re-encode every tensor. One channel multiplexes every in-flight call, so Triton's dynamic batcher sees them all
at once. Both channels retry a lost connection at least every `reconnect_max_s`, so a restarted Triton (several
seconds of model loading) is back in use within that of being ready, instead of gRPC's default backoff of up to
two minutes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from tritonclient.grpc import InferenceServerException, service_pb2
from tritonclient.grpc.aio import InferenceServerClient

from meshserve.core.channels import channel_options, error_from_rpc, passed_on
from meshserve.core.context import outgoing_metadata
from meshserve.core.errors import ErrorCode, MeshError, NotFound
from meshserve.core.tls import ClientTls
from meshserve.core.tls import channel_options as tls_channel_options
from meshserve.inference import triton_control

log = logging.getLogger(__name__)
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass(frozen=True, slots=True)
class ModelDescription:
    name: str
    version: str  # the resolved version ("" in a request means the highest available)
    ready: bool
    metadata: service_pb2.ModelMetadataResponse
    config: service_pb2.ModelConfigResponse


class TritonCallError(MeshError):
    """A call to one Triton that failed, with the gRPC status it ended with: whether another replica may take
    the request is decided by that status (services.inference.retry), not by our mapping of it."""

    def __init__(self, error: MeshError, status: str) -> None:
        super().__init__(error.message, error.code, origin=error.origin, metadata=error.metadata)
        self.status = status


def _mesh_error(exc: InferenceServerException, what: str) -> MeshError:
    status = (exc.status() or "").rsplit(".", 1)[-1]  # tritonclient reports e.g. "StatusCode.NOT_FOUND"
    code = ErrorCode.__members__.get(status, ErrorCode.UNAVAILABLE)
    return MeshError(f"{what}: {exc.message()}", code)


def _reconnect_options(reconnect_max_s: float) -> list[tuple[str, int]]:
    max_ms = max(1, int(reconnect_max_s * 1000))
    return [
        ("grpc.initial_reconnect_backoff_ms", min(250, max_ms)),
        ("grpc.max_reconnect_backoff_ms", max_ms),
    ]


class TritonBackend:
    def __init__(
        self,
        url: str,
        timeout_s: float,
        max_message_bytes: int,
        reconnect_max_s: float = 1.0,
        max_call_s: float = 300.0,
        tls: ClientTls | None = None,
        tls_name: str = "triton",
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s  # metadata, config, readiness
        self.max_call_s = max_call_s  # the longest an inference or a forwarded control call may take
        options = [*channel_options(max_message_bytes), *_reconnect_options(reconnect_max_s)]
        if tls is None:
            self.control = InferenceServerClient(url, channel_args=options)
            self._channel = grpc.aio.insecure_channel(url, options=options)
        else:  # Triton's certificate must name `tls_name`; ours is presented for its mutual TLS
            options += tls_channel_options(tls_name)
            self.control = InferenceServerClient(url, creds=tls.credentials(), channel_args=options)
            self._channel = grpc.aio.secure_channel(url, tls.credentials(), options=options)
        # bytes in, bytes out: the hot path never parses what it forwards
        self._model_infer = self._channel.unary_unary(MODEL_INFER)
        self._control_calls = {
            m: self._channel.unary_unary(triton_control.path(m)) for m in triton_control.FORWARDED
        }
        self._stream_infer = self._channel.stream_stream(triton_control.path("ModelStreamInfer"))

    async def is_ready(self, target: str = "", timeout_s: float = 2.0) -> bool:
        """Whether Triton ("") or the model `name[:version]` is ready; False when Triton does not answer."""
        name, _, version = target.partition(":")
        try:
            if name:
                return await self.control.is_model_ready(name, version, client_timeout=timeout_s)
            return await self.control.is_server_ready(client_timeout=timeout_s)
        except InferenceServerException:
            return False

    async def all_ready(self, models: list[str], timeout_s: float) -> bool:
        """Triton and each of `models` ready: one cheap call each, stopping at the first that is not."""
        for target in ["", *models]:
            if not await self.is_ready(target, timeout_s):
                return False
        return True

    async def wait_ready(self, models: list[str], timeout_s: float) -> None:
        """Wait (bounded) until Triton and each `name[:version]` in `models` are ready."""
        deadline = time.monotonic() + timeout_s
        pending = ["", *models]  # "" = the server itself
        while pending:
            target = pending[0]
            if await self.is_ready(target):
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
        # load_model returns once Triton has tried every version; one its repository lacks never shows up in the
        # index, so say so now rather than wait for it until the deadline
        try:
            index = await self.control.get_model_repository_index(client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise _mesh_error(exc, f"model {name!r}") from None
        present = {m.version for m in index.models if m.name == name}
        if missing := [v for v in versions if v not in present]:
            raise NotFound(f"model {name!r} has no version {', '.join(missing)} in Triton's model repository")
        await self.wait_ready([f"{name}:{v}" for v in versions], timeout_s)
        return versions

    async def forward(self, request: bytes, timeout_s: float | None) -> bytes:
        """One serialised ModelInferRequest to Triton and its serialised answer, bounded by the caller's remaining
        time and our own ceiling. The caller sets Triton's per-request `timeout` parameter."""
        timeout = self.max_call_s if timeout_s is None else min(timeout_s, self.max_call_s)
        if timeout <= 0:
            raise MeshError("no time left for inference", ErrorCode.DEADLINE_EXCEEDED)
        try:
            return await self._model_infer(request, timeout=timeout, metadata=outgoing_metadata())
        except grpc.aio.AioRpcError as exc:
            raise TritonCallError(error_from_rpc(exc, "triton"), exc.code().name) from None

    async def forward_control(self, method: str, request: bytes, timeout_s: float | None) -> bytes:
        """One of Triton's control calls (`triton_control.FORWARDED`), as bytes both ways; Triton's status and
        message come back as they are (addresses removed)."""
        timeout = self.max_call_s if timeout_s is None else min(timeout_s, self.max_call_s)
        if timeout <= 0:
            raise MeshError(f"no time left for {method}", ErrorCode.DEADLINE_EXCEEDED)
        try:
            return await self._control_calls[method](request, timeout=timeout, metadata=outgoing_metadata())
        except grpc.aio.AioRpcError as exc:
            raise passed_on(exc, "triton") from None

    async def forward_stream(
        self, requests: AsyncIterator[bytes], timeout_s: float | None
    ) -> AsyncIterator[bytes]:
        """Triton's ModelStreamInfer, relayed as bytes both ways: every response Triton sends, in its order, until
        Triton ends the stream (after the caller's last request has had all of its responses). Closing this
        iterator cancels the call, and with it whatever Triton still runs for it."""
        call = self._stream_infer(requests, timeout=timeout_s, metadata=outgoing_metadata())
        try:
            async for reply in call:
                yield reply
        except grpc.aio.AioRpcError as exc:
            raise passed_on(exc, "triton") from None
        finally:
            call.cancel()

    async def close(self) -> None:
        await self.control.close()
        await self._channel.close()


__all__ = ["ModelDescription", "TritonBackend", "TritonCallError"]
