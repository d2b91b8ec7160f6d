"""Blue-green model switch: load the new version beside the old, warm it, switch traffic in one swap, let the old
version's in-flight requests finish, then serve exactly the versions the routes still use. Routes reloads go
through here too, so that a reload and a switch never interleave. No gRPC here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import numpy as np
from tritonclient.grpc import service_pb2

from gateway.control.audit import AuditEntry
from gateway.rollout.advice import reload_refusal, switched_away
from gateway.rollout.versions import (
    CHECK_TIMEOUT_S,
    VersionNotServed,
    check_table,
    check_version,
    versions_in_use,
)
from gateway.routing.live import LiveRoutes
from gateway.routing.routes import Route, RouteTable
from gateway.serving.catalog import ModelCatalog
from gateway.serving.clients import InferenceClient
from meshserve.core.errors import ErrorCode, FailedPrecondition, InvalidArgument, MeshError

log = logging.getLogger(__name__)
NUMPY_DTYPES = {
    "FP32": np.float32,
    "FP64": np.float64,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
}
FINISH_S = 2.0  # what a switch needs after its load besides the drain: warm-up, swap, unload
AUDIT_LOOKBACK = 1000  # audit entries searched for the switch that unloaded a version a reload names


def warmup_request(
    model: str, version: str, metadata: service_pb2.ModelMetadataResponse
) -> service_pb2.ModelInferRequest:
    """One row of zeros for every input: enough to load weights and compile kernels before real traffic."""
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    for tensor in metadata.inputs:
        dtype = NUMPY_DTYPES.get(tensor.datatype)
        if dtype is None:
            raise FailedPrecondition(f"cannot warm input {tensor.name!r} of type {tensor.datatype}")
        shape = [1 if d < 0 else d for d in tensor.shape]
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=shape)
        request.raw_input_contents.append(np.zeros(shape, dtype).tobytes())
    return request


def _ordered(versions: set[str]) -> list[str]:
    return sorted(versions, key=int)


class ModelLifecycle:
    """Changes that decide which model versions serve (version switches, routes reloads), one at a time; each
    checks the versions it names with Triton before it changes anything.

    A switch asks the inference service to serve the union of what every variant of every route of this gateway
    serves, so a version another variant still uses is never unloaded. DescribeModel only sees loaded versions,
    so a target that is not loaded yet cannot be told from one Triton lacks until its load fails: the load is
    bounded by what the caller's deadline leaves, and on failure Triton is asked to serve what it served before.
    """

    def __init__(
        self,
        live: LiveRoutes,
        catalog: ModelCatalog,
        inference: InferenceClient,
        load_timeout_s: float = 120.0,
        check_timeout_s: float = CHECK_TIMEOUT_S,
    ) -> None:
        self.live = live
        self.catalog = catalog
        self.inference = inference
        self.load_timeout_s = load_timeout_s
        self.check_timeout_s = check_timeout_s
        self._busy: str | None = None  # what is in progress

    @contextlib.contextmanager
    def _exclusive(self, what: str) -> Iterator[None]:
        # Refuse rather than queue: the caller learns at once, and no change waits minutes behind a model load.
        if self._busy is not None:
            raise FailedPrecondition(f"{self._busy} is in progress; try again once it has finished")
        self._busy = what
        try:
            yield
        finally:
            self._busy = None

    async def reload(self, who: str) -> tuple[bool, str]:
        """LiveRoutes.reload, refused (FailedPrecondition, nothing changed) if a variant names a version Triton
        does not serve, saying why and how to go on."""
        with self._exclusive("a routes reload"):
            return await self.live.reload(who, check=self._check_reload)

    async def _check_reload(self, table: RouteTable) -> None:
        try:
            await check_table(self.inference, table, timeout_s=self.check_timeout_s)
        except VersionNotServed as missing:
            live = self.live.routes.get(missing.route)
            variant = next((v for v in live.variants if v.name == missing.variant), None) if live else None
            switch = switched_away(await self._audit(), missing.route, missing.variant, missing.version)
            message = reload_refusal(missing, self.live.path, variant.version if variant else None, switch)
            raise FailedPrecondition(message) from None

    async def _audit(self) -> list[AuditEntry]:
        try:
            return await self.live.audit.recent(AUDIT_LOOKBACK)
        except MeshError:  # the shared log unreachable: the refusal says less, but still says why
            return []

    async def switch(
        self,
        route_name: str,
        variant_name: str,
        version: str,
        who: str,
        warmup_requests: int = 8,
        time_left_s: float | None = None,
    ) -> None:
        route = self.live.get(route_name)
        route.variant(variant_name)  # names a variant, or InvalidArgument
        if not version.isdigit():
            raise InvalidArgument(f"version must be a number, got {version!r}")
        with self._exclusive(
            f"a switch of route {route_name!r} variant {variant_name!r} to version {version}"
        ):
            await self._switch(route_name, route, variant_name, version, who, warmup_requests, time_left_s)

    async def _switch(
        self,
        route_name: str,
        route: Route,
        variant_name: str,
        version: str,
        who: str,
        warmup_requests: int,
        time_left_s: float | None,
    ) -> None:
        variant = route.variant(variant_name)
        model = variant.model
        where = f"route {route_name!r} variant {variant_name!r}: model {model!r} version {version}"
        # The model must be served at all; its highest version is what unpinned variants serve.
        latest = await check_version(
            self.inference, route_name, variant_name, model, "", self.check_timeout_s
        )
        old = variant.version or latest
        if version == old:
            raise FailedPrecondition(f"variant {variant_name!r} already serves version {version}")
        before = versions_in_use(self.live.routes, model, latest)
        loaded = await self._loaded(where, model, version)
        budget = 0.0 if loaded else self._load_budget(where, route, time_left_s)  # refused before any change
        try:
            if not loaded:
                await self.inference.serve_versions(model, _ordered(before | {version}), budget)
            self.catalog.forget()
            info = await self.catalog.get(model, version)
            warm = warmup_request(model, version, info.metadata)
            await asyncio.gather(
                *(self.inference.infer(warm, route.timeout_ms / 1000) for _ in range(warmup_requests))
            )
        except MeshError as exc:
            with contextlib.suppress(MeshError):  # logged; the caller hears why the switch failed
                await self._serve_exactly(model, before)  # leave Triton as it was: no half-loaded target
            if exc.code is ErrorCode.DEADLINE_EXCEEDED and not loaded:
                raise FailedPrecondition(
                    f"{where} was not ready within {budget:.1f} s: Triton has no such version, or it loads slower "
                    "than the call's deadline allows"
                ) from None
            raise FailedPrecondition(f"{where} could not be loaded and warmed: {exc.message}") from None
        await self.live.switch_version(route_name, variant_name, version, who)
        # A request that picked the old version before the swap finishes within the route's timeout.
        await asyncio.sleep(route.timeout_ms / 1000)
        # Computed after the drain, from the routes as they are now: whatever any variant serves stays loaded.
        await self._serve_exactly(model, versions_in_use(self.live.routes, model, latest))
        log.info(
            "switched version",
            extra={"route": route_name, "variant": variant_name, "from": old, "to": version},
        )

    async def _loaded(self, where: str, model: str, version: str) -> bool:
        try:
            reply = await self.inference.describe(model, version, self.check_timeout_s)
        except MeshError as exc:
            # The model answered just before, so these mean the version is not loaded, or loading or unloading
            # (Triton: "not at ready state"); serving it again waits until it is ready.
            if exc.code in (ErrorCode.NOT_FOUND, ErrorCode.UNAVAILABLE):
                return False
            raise MeshError(f"{where}: cannot check it with Triton: {exc.message}", exc.code) from None
        return reply.ready

    def _load_budget(self, where: str, route: Route, time_left_s: float | None) -> float:
        """How long the load may take: what the caller's deadline leaves after draining and finishing."""
        if time_left_s is None:
            return self.load_timeout_s
        budget = min(self.load_timeout_s, time_left_s - route.timeout_ms / 1000 - FINISH_S)
        if budget <= 0:
            raise FailedPrecondition(
                f"{where}: the call's deadline ({time_left_s:.1f} s left) does not cover a load, the route's "
                f"drain ({route.timeout_ms} ms) and {FINISH_S:.0f} s to finish; allow more time"
            )
        return budget

    async def _serve_exactly(self, model: str, versions: set[str]) -> None:
        try:
            await self.inference.serve_versions(model, _ordered(versions), self.load_timeout_s)
        except MeshError:
            log.exception(
                "could not set the served versions", extra={"model": model, "versions": sorted(versions)}
            )
            raise
        finally:
            self.catalog.forget()
