"""Which model versions the routes serve, and whether Triton serves them: checked before a reload or a version
switch changes anything, so a variant is never pointed at a version that is not there, nor a version unloaded
from under a variant. No gRPC here."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from tritonclient.grpc import service_pb2

from gateway.routing.routes import Route, RouteTable
from gateway.serving.clients import InferenceClient
from meshserve.core.errors import ErrorCode, FailedPrecondition, MeshError

CHECK_TIMEOUT_S = 2.0  # a check answers well within an admin call's deadline, or fails saying why
READY = "READY"


class VersionNotServed(FailedPrecondition):
    """A variant names a version Triton does not serve, as Triton itself said (so not a failure to ask it).
    `served`: the versions of the model Triton serves now (None: not known); `state`: what Triton says of this
    version, in words."""

    def __init__(
        self, route: str, variant: str, model: str, version: str, served: list[str] | None, state: str
    ) -> None:
        self.route, self.variant, self.model, self.version = route, variant, model, version
        self.served, self.state = served or [], state
        if served is None:  # not known: Triton's index could not be read
            said = state
        else:
            said = f"{state}; it serves version {', '.join(served)}" if served else f"{state}; it serves none"
        super().__init__(f"{_where(route, variant, model, version)} is not served by Triton ({said})")


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
    """The version Triton serves for the variant (resolved if unpinned), or VersionNotServed naming the route,
    variant, model and version. A failure to ask (the inference service or Triton down) keeps its own code.

    Triton answers UNAVAILABLE both for a version it has not loaded ("not at ready state") and when it cannot be
    reached, so on UNAVAILABLE its repository index is read: if that answers and does not list the version as
    ready, the version is not served (by status, never by message text)."""
    where = _where(route, variant, model, version)
    try:
        reply = await inference.describe(model, version, timeout_s)
    except MeshError as exc:
        if exc.code in (ErrorCode.NOT_FOUND, ErrorCode.UNAVAILABLE):
            states = await _repository_states(inference, model, timeout_s)
            if exc.code is ErrorCode.NOT_FOUND or (states is not None and not _ready(states, version)):
                if states is None:
                    raise VersionNotServed(route, variant, model, version, None, exc.message) from None
                served = sorted((v for v, s in states.items() if v and s == READY), key=_number)
                raise VersionNotServed(
                    route, variant, model, version, served, _state(states, version)
                ) from None
        raise MeshError(f"{where}: cannot check it with Triton: {exc.message}", exc.code) from None
    if not reply.ready:
        raise FailedPrecondition(f"{where} is loaded in Triton but not ready")
    return reply.resolved_version


async def _repository_states(
    inference: InferenceClient, model: str, timeout_s: float
) -> dict[str, str] | None:
    """Each version of `model` in Triton's repository index with its state ("UNAVAILABLE (unloaded)"); None
    when the index could not be read."""
    try:
        index = await inference.control("RepositoryIndex", service_pb2.RepositoryIndexRequest(), timeout_s)
    except MeshError:
        return None
    return {
        m.version: f"{m.state} ({m.reason})" if m.reason and m.state != READY else m.state
        for m in index.models
        if m.name == model
    }


def _ready(states: dict[str, str], version: str) -> bool:
    return states.get(version) == READY if version else READY in states.values()


def _state(states: dict[str, str], version: str) -> str:
    """What Triton's repository index says of the version, in words."""
    if not states:
        return "Triton's model repository has no such model"
    if not version:
        return "no version of it is ready"
    if not states.get(version):  # the index lists a version only once Triton has tried to load it
        return "Triton has not loaded it"
    return f"Triton lists it as {states[version]}"


def _number(version: str) -> int:
    return int(version) if version.isdigit() else -1


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
