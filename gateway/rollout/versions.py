"""Which model versions the routes serve, and whether Triton serves them: checked before a reload or a version
switch changes anything, so a variant is never pointed at a version that is not there, nor a version unloaded
from under a variant. No gRPC here."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from gateway.routing.routes import Route, RouteTable
from gateway.serving.clients import InferenceClient
from meshserve.core.errors import ErrorCode, FailedPrecondition, MeshError

CHECK_TIMEOUT_S = 2.0  # a check answers well within an admin call's deadline, or fails saying why


def versions_in_use(routes: Mapping[str, Route], model: str, latest: str) -> set[str]:
    """Every version of `model` some variant of some route serves; an unpinned variant ("" = Triton's highest)
    serves `latest`. Pure."""
    return {v.version or latest for route in routes.values() for v in route.variants if v.model == model}


def _where(route: str, variant: str, model: str, version: str) -> str:
    return f"route {route!r} variant {variant!r}: model {model!r} version {version or '(latest)'}"


async def check_version(
    inference: InferenceClient,
    route: str,
    variant: str,
    model: str,
    version: str,
    timeout_s: float = CHECK_TIMEOUT_S,
) -> str:
    """The version Triton serves for the variant (resolved if unpinned), or FailedPrecondition naming the route,
    variant, model and version. A failure to ask (the inference service down) keeps its own code."""
    where = _where(route, variant, model, version)
    try:
        reply = await inference.describe(model, version, timeout_s)
    except MeshError as exc:
        if exc.code is ErrorCode.NOT_FOUND:
            raise FailedPrecondition(f"{where} is not served by Triton ({exc.message})") from None
        raise MeshError(f"{where}: cannot check it with Triton: {exc.message}", exc.code) from None
    if not reply.ready:
        raise FailedPrecondition(f"{where} is loaded in Triton but not ready")
    return reply.resolved_version


async def check_table(
    inference: InferenceClient, table: RouteTable, timeout_s: float = CHECK_TIMEOUT_S
) -> None:
    """Every variant of every route names a version Triton serves now; else the first that does not, by route
    and variant name. One DescribeModel per distinct (model, version), all at once."""
    variants = sorted(
        (name, v.name, v.model, v.version) for name, r in table.routes.items() for v in r.variants
    )
    first: dict[tuple[str, str], tuple[str, str]] = {}
    for route, variant, model, version in variants:
        first.setdefault((model, version), (route, variant))
    checks = [
        check_version(inference, route, variant, model, version, timeout_s)
        for (model, version), (route, variant) in first.items()
    ]
    for outcome in await asyncio.gather(*checks, return_exceptions=True):
        if isinstance(outcome, BaseException):  # the first in route and variant order
            raise outcome
