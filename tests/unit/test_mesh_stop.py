"""LocalMesh.stop stops processes side by side, each only once every process that calls it has exited, and says
each one as it exits. Fake children whose stop the test releases one by one: no process, no clock."""

from __future__ import annotations

import asyncio

import pytest

from meshserve.launcher.mesh import LocalMesh, MeshSettings, stop_after

NAMES = ["triton", "feature", "cache", "inference", "gateway", "gateway-2"]


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
    assert set(begun) == {"gateway", "gateway-2", "feature", "inference"}  # side by side
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
    assert set(begun) == {"triton", "feature", "cache", "inference"}
