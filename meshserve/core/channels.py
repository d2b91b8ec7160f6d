"""Client channels to other meshserve processes: one per target, limits set on purpose.

No client interceptors: grpc.aio builds an intercepted call object per RPC, which costs as much as the call.
Clients pass `meshserve.core.context.outgoing_metadata()` (the request id) themselves.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
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
    `server_name` (`feature`, `cache`...) whatever address is dialled.

    A target of several replicas (`dns:///name:port`, e.g. a headless Kubernetes Service, or a list
    `ipv4:10.0.0.1:50054,10.0.0.2:50054`, or `10.0.0.1:50054,10.0.0.2:50054`) spreads calls round robin over every
    address it resolves to; a plain `host:port` is dialled as before."""
    target, balanced = balanced_target(target)
    all_options = [*channel_options(max_message_bytes), *options]
    if balanced:
        all_options = with_round_robin(all_options)
    if tls is None:
        return grpc.aio.insecure_channel(target, options=all_options)
    return grpc.aio.secure_channel(
        target, tls.credentials(), options=[*all_options, *tls_channel_options(server_name)]
    )


def balanced_target(target: str) -> tuple[str, bool]:
    """`target` in gRPC's notation, and whether it names several replicas to balance over: a `dns:` name (whose
    every address counts), an `ipv4:`/`ipv6:` list, or a bare comma-separated list of IP literals."""
    if target.startswith("dns:"):
        return target, True
    if target.startswith(("ipv4:", "ipv6:")):
        return target, "," in target
    if "," in target:
        parts = [p.strip() for p in target.split(",")]
        if all(_is_ipv4_address(p) for p in parts):
            return "ipv4:" + ",".join(parts), True
        if all(_is_ipv6_address(p) for p in parts):
            return "ipv6:" + ",".join(parts), True
    return target, False


def _is_ipv4_address(part: str) -> bool:
    host, _, port = part.rpartition(":")
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv4Address) and port.isdigit()
    except ValueError:
        return False


def _is_ipv6_address(part: str) -> bool:
    host, _, port = part.rpartition(":")
    try:
        return (
            host.startswith("[")
            and host.endswith("]")
            and bool(ipaddress.IPv6Address(host[1:-1]))
            and port.isdigit()
        )
    except ValueError:
        return False


def with_round_robin(options: Sequence[tuple[str, object]]) -> list[tuple[str, object]]:
    """`options` with gRPC's round_robin load balancing in the channel's service config (one subchannel per
    resolved address, each call on the next ready one), keeping whatever else a caller's service config says
    (retries); a caller that chose its own balancing keeps it."""
    rest = [(k, v) for k, v in options if k not in ("grpc.service_config", "grpc.lb_policy_name")]
    given = dict(options)
    if "grpc.lb_policy_name" in given:
        return list(options)
    config = json.loads(str(given.get("grpc.service_config") or "{}"))
    if "loadBalancingConfig" in config or "loadBalancingPolicy" in config:
        return list(options)
    config["loadBalancingConfig"] = [{"round_robin": {}}]
    return [*rest, ("grpc.service_config", json.dumps(config))]


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
