"""LocalMesh.stop stops processes side by side, each only once every process that calls it has exited, and says
each one as it exits; LocalMesh.start starts each once those it needs serve. Fake children whose stop (or health)
the test releases one by one: no process, no clock."""

from __future__ import annotations

import asyncio

import pytest

from meshserve.launcher.mesh import LocalMesh, MeshSettings, start_after, stop_after

NAMES = ["triton", "feature", "cache", "inference", "monitor", "gateway", "gateway-2"]


class FakeChild:
    def __init__(self, name: str, begun: list[str]) -> None:
        self.name, self.begun, self.release = name, begun, asyncio.Event()
        self.pid, self.exited = 1000 + NAMES.index(name), False

    async def stop(self, grace: float) -> int:
        self.begun.append(self.name)
        await self.release.wait()
        self.exited = True
        return 0


async def settle() -> None:
    """Let every task that can run go as far as it can."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_each_process_waits_for_its_callers_only():
    assert stop_after("gateway", NAMES) == []
    assert stop_after("gateway-2", NAMES) == []
    assert stop_after("feature", NAMES) == ["gateway", "gateway-2"]
    assert stop_after("inference", NAMES) == ["gateway", "gateway-2"]
    assert stop_after("cache", NAMES) == ["feature", "gateway", "gateway-2"]
    assert stop_after("triton", NAMES) == ["inference"]
    assert stop_after("monitor", NAMES) == ["gateway", "gateway-2"]  # the gateways' last log records land


def test_every_gateway_starts_once_the_monitor_serves_and_the_feature_service_once_the_cache_does():
    assert start_after("gateway") == start_after("gateway-2") == ("monitor",)
    assert start_after("feature") == ("cache",)
    assert start_after("monitor") == start_after("triton") == start_after("cache") == ()


async def test_stop_signals_together_what_can_go_together_in_callers_first_order(tmp_path):
    mesh = LocalMesh(MeshSettings(gateways=2, run_dir=tmp_path))
    begun: list[str] = []
    children = {name: FakeChild(name, begun) for name in NAMES}
    mesh.children = children  # type: ignore[assignment]
    stopped: list[tuple[str, int | None]] = []
    stopping = asyncio.create_task(mesh.stop(on_stopped=lambda name, code: stopped.append((name, code))))

    await settle()
    assert set(begun) == {"gateway", "gateway-2"}  # every gateway at once, nothing they call yet
    children["gateway"].release.set()
    await settle()
    assert set(begun) == {"gateway", "gateway-2"} and stopped == [("gateway", 0)]  # gateway-2 still drains
    children["gateway-2"].release.set()
    await settle()
    assert set(begun) == {"gateway", "gateway-2", "feature", "inference", "monitor"}  # side by side
    children["monitor"].release.set()
    await settle()
    children["inference"].release.set()
    await settle()
    assert "triton" in begun and "cache" not in begun  # the feature service may still write to the cache
    children["feature"].release.set()
    await settle()
    assert "cache" in begun
    for name in ("triton", "cache"):
        children[name].release.set()
    await asyncio.wait_for(stopping, 5)
    assert [name for name, _ in stopped] == [
        "gateway",
        "gateway-2",
        "monitor",
        "inference",
        "feature",
        "triton",
        "cache",
    ]
    assert {code for _, code in stopped} == {0}


async def test_a_failed_stop_still_stops_the_rest_and_is_raised(tmp_path):
    mesh = LocalMesh(MeshSettings(run_dir=tmp_path))
    begun: list[str] = []
    children = {name: FakeChild(name, begun) for name in NAMES[:-1]}
    for child in children.values():
        child.release.set()

    async def broken(grace: float) -> int:
        raise OSError("no such process group")

    children["gateway"].stop = broken  # type: ignore[method-assign]
    mesh.children = children  # type: ignore[assignment]
    with pytest.raises(OSError, match="no such process group"):
        await asyncio.wait_for(mesh.stop(), 5)
    assert set(begun) == {"triton", "feature", "cache", "inference", "monitor"}


class FakeStarting:
    """A child whose start is recorded; it is healthy when the test says so."""

    def __init__(self, name: str, started: list[str]) -> None:
        self.name, self.started, self.healthy = name, started, asyncio.Event()

    async def start(self) -> None:
        self.started.append(self.name)


async def test_start_holds_each_gateway_until_the_monitor_serves(tmp_path):
    mesh = LocalMesh(MeshSettings(gateways=2, run_dir=tmp_path))
    started: list[str] = []
    children = {name: FakeStarting(name, started) for name in NAMES}
    mesh.children = children  # type: ignore[assignment]

    async def until_healthy(name: str, during_start: bool = False) -> None:
        await children[name].healthy.wait()

    mesh._until_healthy = until_healthy  # type: ignore[method-assign]
    ready: list[str] = []
    healthy = {name: asyncio.Event() for name in NAMES}
    tasks = [asyncio.create_task(mesh._start_one(name, healthy, ready.append)) for name in NAMES]
    await settle()
    assert set(started) == {"triton", "cache", "inference", "monitor"}  # nobody waits for these
    children["monitor"].healthy.set()
    await settle()
    assert {"gateway", "gateway-2"} <= set(started) and "feature" not in started  # still waits for the cache
    for child in children.values():
        child.healthy.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert set(ready) == set(NAMES) and ready.index("monitor") < ready.index("gateway")
