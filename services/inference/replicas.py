"""Several Triton replicas behind the interface of one (`TritonBackend`'s): each inference goes to the replica the
picker chooses (services/inference/picker.py), model control goes to every healthy replica.

Each replica's readiness and its ready models are asked every check (server readiness, then the repository index
of ready models: two cheap calls), so a replica that lacks a model version gets none of its requests, and a new
replica takes traffic at its first good check. One that answers UNAVAILABLE is taken out at once, until a check
finds it ready again.

Control calls: load, unload, shared-memory registration, trace and log settings go to every healthy replica (the
first one's answer comes back; any failure fails the call). The repository index is the union of every healthy
replica's (by name and version; a version ready anywhere shows as ready). Statistics and shared-memory status
are the first healthy replica's.
"""

from __future__ import annotations

import asyncio
import logging
import time

from tritonclient.grpc import InferenceServerException, service_pb2

from meshserve.core.errors import ErrorCode, MeshError
from meshserve.core.tls import ClientTls
from services.inference.picker import Replica, ReplicaPicker
from services.inference.triton import ModelDescription, TritonBackend

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
        if healthy != replica.healthy:
            log.info("triton replica %s", "ready" if healthy else "not ready", extra={"url": replica.name})
        self.picker.update(replica, healthy, ready_models)
        return healthy

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
        picker = self.picker
        replica = picker.pick(*model_of(request))
        picker.started(replica)
        start = time.monotonic()
        try:
            return await self._backend[id(replica)].forward(request, timeout_s)
        except MeshError as exc:
            if exc.code is ErrorCode.UNAVAILABLE:
                picker.update(replica, False)  # out until a check finds it ready again
            raise
        finally:
            picker.finished(replica, time.monotonic() - start)

    # -- model description and control --------------------------------------------------------------------------
    async def describe(self, name: str, version: str = "") -> ModelDescription:
        return await self.backend(self.picker.pick(name, version)).describe(name, version)

    def _targets(self) -> list[TritonBackend]:
        return [self.backend(r) for r in self.picker.healthy()] or self.backends[:1]

    async def serve_versions(self, name: str, versions: list[str], timeout_s: float) -> list[str]:
        await asyncio.gather(*(b.serve_versions(name, versions, timeout_s) for b in self._targets()))
        return versions

    async def forward_control(self, method: str, request: bytes, timeout_s: float | None) -> bytes:
        targets = self._targets()
        if method == "RepositoryIndex":
            answers = await asyncio.gather(*(b.forward_control(method, request, timeout_s) for b in targets))
            return _union_index(answers)
        if method in BROADCAST:
            answers = await asyncio.gather(*(b.forward_control(method, request, timeout_s) for b in targets))
            return answers[0]
        return await targets[0].forward_control(method, request, timeout_s)

    async def close(self) -> None:
        await asyncio.gather(*(b.close() for b in self.backends))


__all__ = ["BROADCAST", "TritonReplicas", "model_of"]
