"""Client channels to other meshserve processes: one per target, limits set on purpose.

No client interceptors: grpc.aio builds an intercepted call object per RPC, which costs as much as the call.
Clients pass `meshserve.core.context.outgoing_metadata()` (the request id) themselves.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshserve.core.errors import ErrorCode, MeshError
from meshserve.core.tls import ClientTls
from meshserve.core.tls import channel_options as tls_channel_options


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def open_channel(
    target: str,
    max_message_bytes: int = 2**31 - 1,
    tls: ClientTls | None = None,
    server_name: str | None = None,
    options: Sequence[tuple[str, object]] = (),
) -> grpc.aio.Channel:
    """A channel to `target`: plaintext, or with `tls` verified against its CA, the server's certificate naming
    `server_name` (`feature`, `cache`...) whatever address is dialled."""
    all_options = [*channel_options(max_message_bytes), *options]
    if tls is None:
        return grpc.aio.insecure_channel(target, options=all_options)
    return grpc.aio.secure_channel(
        target, tls.credentials(), options=[*all_options, *tls_channel_options(server_name)]
    )


async def wait_until_serving(channel: grpc.aio.Channel, service: str = "", timeout_s: float = 60.0) -> None:
    """Poll grpc.health.v1 until `service` is SERVING; raises TimeoutError after `timeout_s`."""
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    while True:
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        if time.monotonic() + delay > deadline:
            raise TimeoutError(f"{service or 'server'} not SERVING after {timeout_s:.0f}s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


_ADDRESS = re.compile(
    r"\b(?:ipv4|ipv6|unix|unix-abstract|dns):[^\s,;)]*"  # gRPC's own address notation
    r"|\[[0-9a-fA-F:.]+\](?::\d+)?"  # [::1]:50054
    r"|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"  # 127.0.0.1:50054
    r"|\blocalhost:\d+\b"
)


def scrub_addresses(text: str) -> str:
    """`text` without network addresses: a caller learns which hop failed, never where the mesh's processes
    listen."""
    return _ADDRESS.sub("<address>", text)


def error_from_rpc(exc: grpc.aio.AioRpcError, hop: str) -> MeshError:
    """Turn a downstream status into our domain error by its code (never by message text). The error's origin
    is `hop`; addresses in the details are removed."""
    code = _CODE_FOR.get(exc.code(), ErrorCode.UNAVAILABLE if exc.code() == grpc.StatusCode.UNKNOWN else None)
    details = scrub_addresses(exc.details() or exc.code().name)
    if code is None:
        return MeshError(f"{hop}: {details}", ErrorCode.INTERNAL, origin=hop)
    if code is ErrorCode.UNAVAILABLE and not details.startswith(hop):
        details = f"{hop} unavailable: {details}"
    return MeshError(details, code, origin=hop)


_CODE_FOR = {grpc.StatusCode[code.name]: code for code in ErrorCode if code is not ErrorCode.INTERNAL}


def passed_on(exc: grpc.aio.AioRpcError, hop: str) -> MeshError:
    """A downstream status to pass on as it is, for a call whose caller expects that server's own answer (Triton's
    control calls): its code and words, addresses removed, with nothing of ours added (except on an
    unreachable hop, which is ours to name)."""
    code = _CODE_FOR.get(exc.code(), ErrorCode.INTERNAL)
    if code is ErrorCode.UNAVAILABLE:
        return error_from_rpc(exc, hop)
    return MeshError(scrub_addresses(exc.details() or exc.code().name), code, origin=hop)
