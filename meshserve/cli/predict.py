"""`meshserve predict`: one Predict from the shell."""

from __future__ import annotations

import grpc
from rich.console import Console
from rich.table import Table

from meshserve.endpoints_file import locate
from meshserve.feature.v1 import feature_pb2
from meshserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from meshserve.mesh import cli_channel

console = Console()


def parse_feature(text: str) -> tuple[str, feature_pb2.Value]:
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise ValueError(f"expected name=value, got {text!r}")
    try:
        return name, feature_pb2.Value(int64_value=int(raw))
    except ValueError:
        return name, feature_pb2.Value(double_value=float(raw))


async def run_predict(
    target: str | None,
    route: str,
    entity_key: str,
    features: list[str],
    timeout_s: float,
    tls: bool | None = None,
    api_key: str | None = None,
) -> int:
    try:
        parsed = dict(parse_feature(f) for f in features)
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        return 2
    request = gateway_pb2.PredictRequest(
        route=route, instances=[gateway_pb2.Instance(entity_key=entity_key, features=parsed)]
    )
    found = locate("gateway", target)  # the flag, MESHSERVE_TARGET_GATEWAY, the running mesh, the default
    tls = found.tls if tls is None else tls
    async with cli_channel(
        found.address, tls=tls
    ) as channel:  # TLS when the mesh runs with it (MESHSERVE_TLS)
        try:
            metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
            reply = await gateway_pb2_grpc.PredictionServiceStub(channel).Predict(
                request, timeout=timeout_s, metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            console.print(f"[red]{exc.code().name}[/]: {exc.details()}")
            return 1
    table = Table(
        title=f"route {reply.route}: variant {reply.variant}, {reply.model_name} v{reply.model_version}"
    )
    for column in ("entity", "score", "from cache"):
        table.add_column(column)
    for p in reply.predictions:
        table.add_row(p.entity_key, f"{p.score:.6f}", "yes" if p.from_cache else "no")
    console.print(table)
    return 0
