"""Shared fixtures: one real mesh (Triton from the bundled binary, our services, the gateway) per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_asyncio

from meshserve.launcher.mesh import REPO_ROOT, LocalMesh, MeshSettings
from tests.helpers import FIXTURES, running_redis


@pytest.fixture(scope="session")
def marker_dir(tmp_path_factory) -> Path:
    """The test-only `slow` model drops one file here per request it starts."""
    return tmp_path_factory.mktemp("slow-markers")


@pytest.fixture(scope="session")
def sleepy_dir(tmp_path_factory) -> Path:
    """The test-only `sleepy` model records each execution here (start time and rows)."""
    return tmp_path_factory.mktemp("sleepy-executions")


@pytest_asyncio.fixture(scope="session")
async def mesh(tmp_path_factory, marker_dir, sleepy_dir) -> LocalMesh:
    settings = MeshSettings(
        gateway_port=0,
        admin_port=0,
        gateway_http_port=0,
        model_repositories=[REPO_ROOT / "model_repository", FIXTURES / "model_repository"],
        routes_path=FIXTURES / "routes.yaml",
        run_dir=tmp_path_factory.mktemp("mesh"),
        grace_s=5.0,
        log_level="DEBUG",  # access logs, so tests can follow a request id across hops
        extra_env={
            "MESHSERVE_TEST_MARKER_DIR": str(marker_dir),
            "MESHSERVE_TEST_SLEEPY_DIR": str(sleepy_dir),
            "MESHSERVE_TEST_SLOW_SECONDS": "1.0",
            "MESHSERVE_GATEWAY_NEAR_CACHE_TTL_S": "0.2",  # bounds how long an invalidation can go unseen
            "MESHSERVE_GATEWAY_MAX_MESSAGE_BYTES": str(16 * 2**20),  # a limit the tests can reach quickly
        },
    )
    local = LocalMesh(settings)
    await local.start()
    yield local
    await local.stop()
    # every process, Triton included, shut down cleanly on SIGTERM (not killed, not crashed)
    assert {name: c.process.returncode for name, c in local.children.items()} == dict.fromkeys(
        local.children, 0
    )


@pytest_asyncio.fixture(scope="session")
async def redis_url(tmp_path_factory) -> str:
    """A real redis-server (Debian's; `.ci/run` installs it) on a free port, for this test session."""
    from meshserve.core.process import free_port

    port = free_port()
    async with running_redis(
        tmp_path_factory.mktemp("redis"), ["--port", str(port)], f"redis://127.0.0.1:{port}/0"
    ) as url:
        yield url
