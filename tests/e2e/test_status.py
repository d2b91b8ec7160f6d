"""`meshserve up` publishes its endpoints; `meshserve status` and the other CLI commands find the mesh through
them, with no address given; explicit flags still win; a stopped mesh leaves no file and status says so."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from importlib.metadata import version
from pathlib import Path

import pytest

from meshserve.core.process import free_port
from meshserve.launcher.endpoints_file import (
    MeshEndpoints,
    ProcessEndpoint,
    endpoints_path,
    read_endpoints,
    write_endpoints,
)
from tests.e2e.meshserve_up import MESHSERVE, meshserve_up
from tests.helpers import alive

PROCESSES = {"triton", "feature", "cache", "inference", "monitor", "gateway"}


async def run_cli(*args: str, env: dict[str, str], timeout: float = 60) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        MESHSERVE, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def cli_env(run_dir: Path) -> dict[str, str]:
    """Only the run directory: no address, no MESHSERVE_TARGET_*, no MESHSERVE_TLS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHSERVE_")}
    return {**env, "COLUMNS": "200", "MESHSERVE_RUN_DIR": str(run_dir)}


@pytest.fixture
async def up(tmp_path):
    """`meshserve up` on free ports (the gateway's too), until it says every process is up."""
    async with meshserve_up(tmp_path / "run") as (process, port):
        yield process, port, tmp_path / "run"


async def test_status_and_commands_find_the_running_mesh_and_the_file_goes_with_it(up):
    process, port, run_dir = up
    env = cli_env(run_dir)

    published = read_endpoints(run_dir)
    assert published is not None and published.up_pid == process.pid and published.tls is False
    assert published.gateway == f"127.0.0.1:{port}"
    assert {p.name for p in published.processes} == PROCESSES
    assert all(alive({p.pid}) for p in published.processes)

    code, out, err = await run_cli("status", "-o", "json", env=env)
    assert code == 0, err
    status = json.loads(out)
    assert status["running"] is True and status["routes_error"] is None
    assert {p["name"]: (p["alive"], p["health"]) for p in status["processes"]} == dict.fromkeys(
        PROCESSES, (True, "SERVING")
    )
    assert status["versions"] == {"meshserve": version("meshserve"), "triton": "triton 2.51.0"}
    fraud = next(r for r in status["routes"] if r["route"] == "fraud")
    assert {v["name"]: v["weight"] for v in fraud["variants"]} == {"stable": 100.0, "canary": 0.0}

    code, out, err = await run_cli("status", env=env)
    assert code == 0, err
    assert "SERVING" in out and "route fraud: stable" in out
    assert f"meshserve {version('meshserve')} in front of triton 2.51.0" in out

    # no address given: each command finds the mesh through <run_dir>/endpoints.json
    for args in (
        ("predict", "fraud", "acct-00042", "amount=250", "merchant_category=3"),
        ("features", "freshness"),
        ("routes", "list"),
    ):
        code, out, err = await run_cli(*args, env=env)
        assert code == 0, f"{args}: {out}{err}"

    # an explicit flag still wins over the file (nothing listens there)
    code, out, err = await run_cli("routes", "list", "--admin", f"127.0.0.1:{free_port()}", env=env)
    assert code == 1 and "no mesh at" in err and "(from --admin)" in err, err

    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 60) == 0
    assert not endpoints_path(run_dir).exists()
    code, out, err = await run_cli("status", env=env)
    assert code == 1 and err.strip().startswith("meshserve status: no mesh running"), err
    assert "Traceback" not in out + err


async def test_status_without_a_running_mesh_is_one_line_and_exit_code_1(tmp_path):
    env = cli_env(tmp_path)
    code, out, err = await run_cli("status", env=env)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and "no mesh running" in err and "meshserve up" in err

    gone = 2**22 + 12345  # above any pid_max: the `up` that wrote it is gone
    write_endpoints(
        tmp_path, MeshEndpoints(gone, False, *["127.0.0.1:1"] * 7, [ProcessEndpoint("cache", gone, "x")])
    )
    code, out, err = await run_cli("status", "-o", "json", env=env)
    assert code == 1 and json.loads(out)["running"] is False
    assert "has exited" in json.loads(out)["reason"] and "Traceback" not in err
