"""What Triton serves, followed: every model in its repository index that no declared route takes is served under
its own name (an implicit pass-through route). Looked up again every `refresh_s`, and at once after a load or an
unload made through the gateway, so a model loaded at run time is served at once and an unloaded one goes away
(a declared route naming it falls back, as for any variant that is down). No gRPC here."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from tritonclient.grpc import service_pb2

from gateway.routing.live import LiveRoutes
from gateway.serving.catalog import ModelCatalog
from gateway.serving.clients import InferenceClient
from meshserve.core.errors import MeshError

log = logging.getLogger(__name__)
CHANGES_REPOSITORY = frozenset({"RepositoryModelLoad", "RepositoryModelUnload"})


def ready_models(index: service_pb2.RepositoryIndexResponse) -> set[str]:
    return {model.name for model in index.models if model.state == "READY"}


def ready_versions(index: service_pb2.RepositoryIndexResponse) -> dict[str, frozenset[str]]:
    versions: dict[str, set[str]] = {}
    for model in index.models:
        if model.state == "READY":
            versions.setdefault(model.name, set()).add(model.version)
    return {name: frozenset(v) for name, v in versions.items()}


class ModelRepository:
    def __init__(
        self,
        inference: InferenceClient,
        routes: LiveRoutes,
        catalog: ModelCatalog,
        refresh_s: float = 5.0,
        timeout_s: float = 5.0,
        look_again_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inference = inference
        self.routes = routes
        self.catalog = catalog
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self.models: set[str] = set()
        self.versions: dict[str, frozenset[str]] = {}  # the ready versions of each model
        self.look_again_s = look_again_s
        self.clock = clock
        self._looked_at = -math.inf
        self._looking: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        index = await self.inference.control(
            "RepositoryIndex", service_pb2.RepositoryIndexRequest(ready=True), self.timeout_s
        )
        self._looked_at = self.clock()
        models, versions = ready_models(index), ready_versions(index)
        for gone in self.models - models:
            self.catalog.forget(gone)  # what the gateway knew of it no longer holds
        for name in models & self.models:
            if versions.get(name) != self.versions.get(name):
                self.catalog.forget(name)  # a version loaded or unloaded elsewhere: the latest may be another
        if models != self.models:
            log.info("models served by Triton", extra={"models": sorted(models)})
        self.models, self.versions = models, versions
        self.routes.follow_repository(models)

    async def look_again(self) -> bool:
        """Refresh now for a caller that asked for a name nobody serves, unless the index was read less than
        `look_again_s` ago (a flood of unknown names costs Triton at most one lookup a second; concurrent callers
        share it). True when a fresh index was read."""
        if self._looking is None:
            if self.clock() - self._looked_at < self.look_again_s:
                return False
            self._looked_at = self.clock()  # a failing lookup is not retried sooner either
            self._looking = asyncio.ensure_future(self.refresh())
            self._looking.add_done_callback(self._looked)
        try:
            await asyncio.shield(self._looking)
        except MeshError:
            return False
        return True

    def _looked(self, task: asyncio.Task[None]) -> None:
        self._looking = None
        if not task.cancelled():
            task.exception()  # retrieved here: every caller may have gone

    async def follow(self) -> None:
        """Refresh forever (until cancelled); a failed lookup keeps the last known models."""
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except MeshError as exc:
                log.warning("Triton's repository index could not be read", extra={"reason": exc.message})

    async def control(self, method: str, request, timeout_s: float | None):
        """Triton's own control call; after a load or unload, the models it serves are looked up again before
        the caller has its answer, and what the gateway knew of that model is forgotten."""
        reply = await self.inference.control(method, request, timeout_s)
        if method in CHANGES_REPOSITORY:
            self.catalog.forget(request.model_name)
            await self.refresh()
        return reply
