"""Several Triton replicas behind the interface of one (`TritonBackend`'s), answering as one Triton would: each
inference goes to the replica the picker chooses (services/inference/picker.py), model control goes to every
healthy replica.

Each replica's readiness and its ready models are asked every check (server readiness, then the repository index
of ready models: two cheap calls), so a replica that lacks a model version gets none of its requests, and a new
replica takes traffic at its first good check. One that answers UNAVAILABLE is taken out at once, until a check
finds it ready again; the request it failed goes once to another replica (services/inference/retry.py), within
the caller's deadline.

Control calls: load, unload, shared-memory registration, trace and log settings go to every healthy replica (the
first answer comes back; a replica that is unreachable is taken out, any other failure fails the call). Each load
and unload that took effect is kept (services/inference/desired.py): a replica coming back (or joining) is sent
what it missed before it is picked again. The repository index is the union of every healthy replica's (by name
and version; a version ready anywhere shows as ready), statistics their sum (meshserve.inference.statistics).
Shared-memory status is the first healthy replica's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from tritonclient.grpc import InferenceServerException, service_pb2

from meshserve.core.errors import ErrorCode, MeshError
from meshserve.core.tls import ClientTls
from meshserve.inference.statistics import merge_statistics
from services.inference.desired import Control, ControlKind, DesiredModels
from services.inference.picker import Replica, ReplicaPicker
from services.inference.retry import retry_on_another
from services.inference.triton import ModelDescription, TritonBackend, TritonCallError

log = logging.getLogger(__name__)

BROADCAST = frozenset(
    {
        "RepositoryModelLoad",
        "RepositoryModelUnload",
        "SystemSharedMemoryRegister",
        "SystemSharedMemoryUnregister",
        "CudaSharedMemoryRegister",
        "CudaSharedMemoryUnregister",
        "TraceSetting",
        "LogSettings",
    }
)


def model_of(request: bytes) -> tuple[str, str]:
    """(model_name, model_version) of a serialised ModelInferRequest, read from its top-level fields without
    decoding the tensors (fields 1 and 2; every other field is skipped by its length)."""
    name, version, i, end = "", "", 0, len(request)
    try:
        while i < end:
            tag, i = _varint(request, i)
            field, wire = tag >> 3, tag & 7
            if wire == 2:
                length, i = _varint(request, i)
                if field == 1:
                    name = request[i : i + length].decode()
                elif field == 2:
                    version = request[i : i + length].decode()
                i += length
            elif wire == 0:
                _, i = _varint(request, i)
            elif wire == 1:
                i += 8
            elif wire == 5:
                i += 4
            else:
                break
    except (IndexError, UnicodeDecodeError):
        pass  # not ours to judge: Triton answers a malformed request
    return name, version


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _model_name(kind: ControlKind, request: bytes) -> str:
    message = (
        service_pb2.RepositoryModelLoadRequest
        if kind is ControlKind.LOAD
        else service_pb2.RepositoryModelUnloadRequest
    )
    return message.FromString(request).model_name


def _union_index(answers: list[bytes]) -> bytes:
    merged: dict[tuple[str, str], service_pb2.RepositoryIndexResponse.ModelIndex] = {}
    for answer in answers:
        for model in service_pb2.RepositoryIndexResponse.FromString(answer).models:
            seen = merged.get((model.name, model.version))
            if seen is None or (seen.state != "READY" and model.state == "READY"):
                merged[(model.name, model.version)] = model
    return service_pb2.RepositoryIndexResponse(models=list(merged.values())).SerializeToString()


class TritonReplicas:
    def __init__(
        self,
        urls: list[str],
        timeout_s: float,
        max_message_bytes: int,
        reconnect_max_s: float = 1.0,
        max_call_s: float = 300.0,
        tls: ClientTls | None = None,
        tls_name: str = "triton",
        failed_checks: int = 3,
        picker: ReplicaPicker | None = None,
    ) -> None:
        self.url = ",".join(urls)
        self.backends = [
            TritonBackend(url, timeout_s, max_message_bytes, reconnect_max_s, max_call_s, tls, tls_name)
            for url in urls
        ]
        self.picker = picker or ReplicaPicker(urls)
        self._backend = dict(zip(map(id, self.picker.replicas), self.backends, strict=True))
        self._failed = dict.fromkeys(map(id, self.picker.replicas), 0)
        self.failed_checks = failed_checks
        self.desired = DesiredModels()
        # the generation of `desired` each replica is known to hold; None: unknown (it has been out since)
        self._synced: dict[int, int | None] = dict.fromkeys(map(id, self.picker.replicas), 0)
        self._catching_up: dict[int, asyncio.Task[None]] = {}

    def backend(self, replica: Replica) -> TritonBackend:
        return self._backend[id(replica)]

    # -- readiness ----------------------------------------------------------------------------------------------
    async def _check(self, replica: Replica, models: list[str], timeout_s: float) -> bool:
        backend = self.backend(replica)
        ok = await backend.all_ready(models, timeout_s)
        ready_models = None
        if ok:
            try:
                index = await backend.control.get_model_repository_index(client_timeout=timeout_s)
                ready_models = [(m.name, m.version) for m in index.models if m.state == "READY"]
            except InferenceServerException:
                ok = False
        failed = 0 if ok else self._failed[id(replica)] + 1
        self._failed[id(replica)] = failed
        healthy = ok or (replica.healthy and failed < self.failed_checks)
        if healthy and not replica.healthy and not self._caught_up(replica):
            healthy, ready_models = False, None  # not picked before it holds what the others do
        if healthy != replica.healthy:
            log.info("triton replica %s", "ready" if healthy else "not ready", extra={"url": replica.name})
        self._set_healthy(replica, healthy, ready_models)
        return healthy

    def _set_healthy(
        self, replica: Replica, healthy: bool, ready_models: list[tuple[str, str]] | None = None
    ) -> None:
        if not healthy:
            self._synced[id(replica)] = None  # what it missed from now on, or lost in a restart, is unknown
        self.picker.update(replica, healthy, ready_models)

    def _caught_up(self, replica: Replica) -> bool:
        """Whether a replica coming back holds every load and unload made through the mesh; if not, its catch-up
        starts (in the background: a model load takes seconds, and the checks go on meanwhile)."""
        key = id(replica)
        if self._synced[key] == self.desired.generation:
            return True
        if not self.desired.controls():
            self._synced[key] = self.desired.generation  # nothing to catch up on
            return True
        if key not in self._catching_up:
            task = asyncio.ensure_future(self._catch_up(replica))
            self._catching_up[key] = task
            task.add_done_callback(lambda _: self._catching_up.pop(key, None))
        return False

    async def _catch_up(self, replica: Replica) -> None:
        backend = self.backend(replica)
        try:
            while True:
                generation = self.desired.generation
                index = await backend.control.get_model_repository_index(client_timeout=backend.timeout_s)
                ready = {(m.name, m.version) for m in index.models if m.state == "READY"}
                for control in self.desired.catch_up(ready):
                    await self._apply(replica, backend, control)
                if self.desired.generation == generation:  # else a call came meanwhile: once more
                    self._synced[id(replica)] = generation
                    log.info(
                        "triton replica caught up", extra={"url": replica.name, "generation": generation}
                    )
                    return
        except (MeshError, InferenceServerException) as exc:
            reason = exc.message if isinstance(exc, MeshError) else exc.message()
            log.warning("triton replica could not catch up", extra={"url": replica.name, "reason": reason})

    async def _apply(self, replica: Replica, backend: TritonBackend, control: Control) -> None:
        """One call of the catch-up. Triton refusing it (a model its repository lacks...) is its answer: the
        replica then serves what it can, and gets none of the requests for what it lacks (the picker follows its
        index). Only an unreachable replica stops the catch-up."""
        try:
            if control.kind is ControlKind.SERVE_VERSIONS:
                await backend.serve_versions(control.model, list(control.versions), backend.max_call_s)
            else:
                await backend.forward_control(control.kind.value, control.request, None)
        except (MeshError, TimeoutError) as exc:
            if isinstance(exc, MeshError) and exc.code is ErrorCode.UNAVAILABLE:
                raise
            log.warning(
                "triton replica refused a call of its catch-up",
                extra={
                    "url": replica.name,
                    "model": control.model,
                    "call": control.kind.value,
                    "reason": str(exc),
                },
            )

    async def all_ready(self, models: list[str], timeout_s: float) -> bool:
        """Every replica checked at once; True while at least one is ready (with each of `models`)."""
        results = await asyncio.gather(*(self._check(r, models, timeout_s) for r in self.picker.replicas))
        return any(results)

    async def wait_ready(self, models: list[str], timeout_s: float) -> None:
        """Wait (bounded) until at least one replica and each of `models` on it are ready."""
        deadline = time.monotonic() + timeout_s
        while not await self.all_ready(models, min(2.0, timeout_s)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no Triton replica of {self.url} ready after {timeout_s:.0f}s")
            await asyncio.sleep(0.1)
        log.info("triton replicas ready", extra={"url": self.url, "ready": len(self.picker.healthy())})

    # -- inference ----------------------------------------------------------------------------------------------
    async def forward(self, request: bytes, timeout_s: float | None) -> bytes:
        """To the replica the picker chooses; once more to another if it failed before running the request."""
        model = model_of(request)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        replica = self.picker.pick(*model)
        try:
            return await self._forward_to(replica, request, timeout_s)
        except TritonCallError as exc:
            time_left = None if deadline is None else deadline - time.monotonic()
            others = len(self.picker.candidates(*model, exclude=replica))
            if not retry_on_another(exc.status, 1, others, time_left):
                raise
        return await self._forward_to(self.picker.pick(*model, exclude=replica), request, time_left)

    def forward_stream(self, requests: AsyncIterator[bytes], timeout_s: float | None) -> AsyncIterator[bytes]:
        """A relayed stream stays on one replica (a decoupled request's responses come from where it runs): the
        one the picker would choose for any model. A replica lost mid-stream ends the stream with its error."""
        return self.backend(self.picker.pick()).forward_stream(requests, timeout_s)

    async def _forward_to(self, replica: Replica, request: bytes, timeout_s: float | None) -> bytes:
        picker = self.picker
        picker.started(replica)
        start = time.monotonic()
        try:
            return await self._backend[id(replica)].forward(request, timeout_s)
        except MeshError as exc:
            if exc.code is ErrorCode.UNAVAILABLE and replica.healthy:
                self._set_healthy(replica, False)  # out until a check finds it ready again
            raise
        finally:
            picker.finished(replica, time.monotonic() - start)

    # -- model description and control --------------------------------------------------------------------------
    async def describe(self, name: str, version: str = "") -> ModelDescription:
        return await self.backend(self.picker.pick(name, version)).describe(name, version)

    def _targets(self) -> list[Replica]:
        return self.picker.healthy() or self.picker.replicas[:1]

    async def _broadcast(self, call, control: Control | None = None):
        """`call(backend)` on every healthy replica; the first answer. A replica that is unreachable is taken out
        (it catches up when it is back) unless none answered; any other failure fails the call. A load or unload
        (`control`) that took effect anywhere is kept for the replicas that missed it."""
        targets = self._targets()
        generation = self.desired.generation
        results = await asyncio.gather(*(call(self.backend(r)) for r in targets), return_exceptions=True)
        done = [
            r for r, result in zip(targets, results, strict=True) if not isinstance(result, BaseException)
        ]
        if control is not None and done:
            now = self.desired.record(control)
            for replica in done:  # those that held every earlier call hold this one too
                if self._synced[id(replica)] == generation:
                    self._synced[id(replica)] = now
            for replica in self.picker.healthy():
                if replica not in targets:  # came back during the call, without it: out until it catches up
                    self._set_healthy(replica, False)
        errors = [result for result in results if isinstance(result, BaseException)]
        for replica, result in zip(targets, results, strict=True):
            if done and isinstance(result, MeshError) and result.code is ErrorCode.UNAVAILABLE:
                self._set_healthy(replica, False)
                errors.remove(result)
        if errors:
            raise errors[0]
        return next(r for r in results if not isinstance(r, BaseException))

    async def serve_versions(self, name: str, versions: list[str], timeout_s: float) -> list[str]:
        control = Control(ControlKind.SERVE_VERSIONS, name, versions=tuple(versions))
        await self._broadcast(lambda b: b.serve_versions(name, versions, timeout_s), control)
        return versions

    async def forward_control(self, method: str, request: bytes, timeout_s: float | None) -> bytes:
        def call(backend: TritonBackend):
            return backend.forward_control(method, request, timeout_s)

        if method == "RepositoryIndex":
            answers = await asyncio.gather(*(call(self.backend(r)) for r in self._targets()))
            return _union_index(answers)
        if method == "ModelStatistics":
            return await self._statistics(call)
        if method in (ControlKind.LOAD.value, ControlKind.UNLOAD.value):
            kind = ControlKind(method)
            name = _model_name(kind, request)
            return await self._broadcast(call, Control(kind, name, request=request))
        if method in BROADCAST:
            return await self._broadcast(call)
        return await call(self.backend(self._targets()[0]))

    async def _statistics(self, call) -> bytes:
        """The sum of every healthy replica's statistics. One that has not (yet) loaded the model, or cannot be
        reached, adds nothing, as long as another answers: the figures are those of the replicas that served."""
        results = await asyncio.gather(
            *(call(self.backend(r)) for r in self._targets()), return_exceptions=True
        )
        answers = [r for r in results if not isinstance(r, BaseException)]
        errors = [r for r in results if isinstance(r, BaseException)]
        passable = (ErrorCode.NOT_FOUND, ErrorCode.UNAVAILABLE)
        if not answers or any(not (isinstance(e, MeshError) and e.code in passable) for e in errors):
            raise errors[0]
        parsed = map(service_pb2.ModelStatisticsResponse.FromString, answers)
        return merge_statistics(parsed).SerializeToString()

    async def close(self) -> None:
        for task in list(self._catching_up.values()):
            task.cancel()
        await asyncio.gather(*(b.close() for b in self.backends))


__all__ = ["BROADCAST", "TritonReplicas", "model_of"]
