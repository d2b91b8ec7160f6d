"""The gateway's view of what Triton serves (gateway.serving.repository), against a stand-in for the inference client."""

from __future__ import annotations

import asyncio

import pytest
from tritonclient.grpc import service_pb2

from gateway.control.audit import AuditLog
from gateway.routing.live import LiveRoutes
from gateway.routing.routes import RouteTable
from gateway.serving.repository import ModelRepository
from meshserve.core.errors import ErrorCode, MeshError, NotFound


class FakeTriton:
    """Answers RepositoryIndex with `models` (all READY), or fails while `down`; counts the lookups."""

    def __init__(self, *models: str) -> None:
        self.models = set(models)
        self.versions: dict[str, list[str]] = {}  # a model's ready versions, when not just "1"
        self.lookups = 0
        self.down = False

    async def control(self, method, request, timeout_s):
        assert method == "RepositoryIndex"
        self.lookups += 1
        await asyncio.sleep(0)  # a real call yields: concurrent callers overlap
        if self.down:
            raise MeshError("triton unavailable", ErrorCode.UNAVAILABLE)
        index = service_pb2.RepositoryIndexResponse()
        for name in sorted(self.models):
            for version in self.versions.get(name, ["1"]):
                index.models.add(name=name, version=version, state="READY")
        return index


class FakeCatalog:
    def __init__(self) -> None:
        self.forgotten: list[str] = []

    def forget(self, model=None):
        self.forgotten.append(model)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def repository(triton: FakeTriton, clock: Clock, tmp_path) -> tuple[ModelRepository, LiveRoutes, FakeCatalog]:
    routes = LiveRoutes(RouteTable(), None, AuditLog(tmp_path / "audit.jsonl"))
    catalog = FakeCatalog()
    return ModelRepository(triton, routes, catalog, look_again_s=1.0, clock=clock), routes, catalog  # type: ignore[arg-type]


async def test_each_model_triton_serves_gets_a_route_and_one_unloaded_is_forgotten(tmp_path):
    triton, clock = FakeTriton("a", "b"), Clock()
    repo, routes, catalog = repository(triton, clock, tmp_path)
    await repo.refresh()
    assert set(routes.served) == {"a", "b"} and routes.get("a").variants[0].model == "a"
    triton.models = {"a"}
    await repo.refresh()
    assert set(routes.served) == {"a"} and catalog.forgotten == ["b"]
    with pytest.raises(NotFound, match="^unknown route 'b'; routes: a$"):
        routes.get("b")


async def test_an_unknown_name_looks_again_at_most_once_a_second_and_concurrent_callers_share_it(tmp_path):
    triton, clock = FakeTriton("a"), Clock()
    repo, routes, _ = repository(triton, clock, tmp_path)
    await repo.refresh()
    triton.models.add("new")  # loaded behind this gateway's back
    clock.now += 0.5
    assert not await repo.look_again() and triton.lookups == 1  # the index is fresh enough
    clock.now += 0.6
    assert await asyncio.gather(*(repo.look_again() for _ in range(20))) == [True] * 20
    assert triton.lookups == 2 and "new" in routes.served
    assert not await repo.look_again() and triton.lookups == 2


async def test_a_failed_look_is_not_retried_sooner_and_keeps_the_known_models(tmp_path):
    triton, clock = FakeTriton("a"), Clock()
    repo, routes, _ = repository(triton, clock, tmp_path)
    await repo.refresh()
    clock.now += 2
    triton.down = True
    assert not await repo.look_again()
    assert not await repo.look_again() and triton.lookups == 2
    assert set(routes.served) == {"a"}


async def test_a_model_whose_ready_versions_change_elsewhere_is_forgotten(tmp_path):
    triton, clock = FakeTriton("a", "b"), Clock()
    repo, _, catalog = repository(triton, clock, tmp_path)
    await repo.refresh()
    triton.versions["a"] = [
        "1",
        "2",
    ]  # loaded behind this gateway's back (meshserve up following a repository)
    await repo.refresh()
    assert catalog.forgotten == ["a"]  # its latest version is another one now
    triton.versions["a"] = ["2"]
    await repo.refresh()
    await repo.refresh()
    assert catalog.forgotten == ["a", "a"]
