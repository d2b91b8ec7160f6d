"""The CLI as a user runs it: `meshserve up` serves tritonclient and `meshserve predict`, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from meshserve.core.channels import wait_until_serving
from tests.e2e.meshserve_up import MESHSERVE, meshserve_up, run_logs
from tests.helpers import alive, descendants

PROCESSES = {"triton", "feature", "cache", "inference", "monitor", "gateway"}


@pytest.fixture
def up_env() -> dict[str, str]:
    """More environment for `meshserve up` (a test parametrizes it to change its settings)."""
    return {}


@pytest.fixture
async def up(tmp_path, up_env):
    """`meshserve up` on a free port, waited for through the gateway's health check."""
    async with meshserve_up(tmp_path / "run", up_env) as (process, port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_until_serving(channel, timeout_s=10)
        yield process, port, tmp_path / "run"


def children_of(pid: int) -> set[int]:
    return alive(descendants(pid))


async def wait_for_exit(process, timeout: float = 60) -> tuple[int, str]:
    output, _ = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode, output.decode(errors="replace")


async def test_up_serves_tritonclient_and_predict_then_stops_every_process(up):
    process, port, run_dir = up
    family = children_of(process.pid)
    assert len(family) >= len(PROCESSES)  # Triton, its python stubs, our five services

    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
    tensor = triton_grpc.InferInput("features", [1, 5], "FP32")
    tensor.set_data_from_numpy(np.array([[250.0, 3, 80.0, 2, 400]], dtype=np.float32))
    score = client.infer("fraud", [tensor]).as_numpy("score")[0, 0]
    assert 0.0 <= score <= 1.0

    predict = await asyncio.create_subprocess_exec(
        MESHSERVE, "predict", "fraud", "acct-00042", "amount=250", "merchant_category=3",
        "--target", f"127.0.0.1:{port}", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    code, output = await wait_for_exit(predict)
    assert code == 0, output
    assert "acct-00042" in output and "variant stable" in output

    process.send_signal(signal.SIGTERM)
    code, output = await wait_for_exit(process)
    assert code == 0, output
    assert "stopped in" in output
    # each process is named as it stops, the gateway (which drains callers) before what it calls
    lines = {name: output.find(f"✓ {name} stopped (") for name in PROCESSES}
    assert -1 not in lines.values(), output
    assert lines["gateway"] < min(lines[name] for name in PROCESSES - {"gateway"}), output
    assert not alive(family), f"left behind: {alive(family)}"
    assert {p.stem for p in run_logs(run_dir).glob("*.log")} == PROCESSES


def pid_running(family: set[int], module: str) -> int:
    for pid in alive(family):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if module.encode() in cmdline:
            return pid
    raise LookupError(f"no {module} among {family}")


async def read_until(process, text: str, timeout: float = 60) -> str:
    """`up`'s output up to the line that contains `text`."""
    seen = []
    async with asyncio.timeout(timeout):
        while text not in (line := (await process.stdout.readline()).decode(errors="replace")):
            assert line, "meshserve up exited:\n" + "".join(seen)
            seen.append(line)
    return "".join([*seen, line])


@pytest.mark.parametrize(
    "up_env", [{"MESHSERVE_RESTART_MAX_CRASHES": "1", "MESHSERVE_RESTART_BACKOFF_S": "0.1"}]
)
async def test_a_crashed_child_is_restarted_and_one_that_keeps_crashing_stops_the_mesh(up):
    process, _, run_dir = up
    # what a crashed child wrote is printed as it is: rich markup in it (here a closing tag that was never opened)
    # once made `up` itself crash and leave the mesh running, orphaned
    with (run_logs(run_dir) / "cache.log").open("a") as log:
        log.write("[/meshserve.cache] [bold]not markup[/bold] [red]\n")
    os.kill(pid_running(children_of(process.pid), "services.cache"), signal.SIGKILL)
    output = await read_until(process, "cache healthy again")
    assert "cache crashed (killed by SIGKILL); restart 1 of 1 within 60s" in output
    assert "[/meshserve.cache] [bold]not markup[/bold] [red]" in output
    assert process.returncode is None

    family = children_of(process.pid)
    os.kill(pid_running(family, "services.cache"), signal.SIGKILL)  # the second crash within the window
    code, output = await wait_for_exit(process)
    assert code == 1
    assert "cache crashed (killed by SIGKILL): 2 crashes within 60s, more than 1; giving up" in output
    assert "cache keeps crashing; stopping the mesh" in output and "stopped" in output
    assert not alive(family), f"left behind: {alive(family)}"


async def test_predict_reports_a_clear_error_for_an_unknown_route(mesh):
    predict = await asyncio.create_subprocess_exec(
        MESHSERVE, "predict", "nope", "acct-1", "amount=1", "merchant_category=1", "--target", mesh.endpoints.gateway,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    code, output = await wait_for_exit(predict)
    assert code == 2  # bad input: meshserve.cli.errors.BAD_INPUT
    assert "NOT_FOUND: unknown route 'nope'" in output


async def test_predict_shows_variant_version_and_tier_and_json(mesh):
    args = (
        "predict",
        "fraud",
        "acct-00042",
        "amount=250",
        "merchant_category=3",
        "--target",
        mesh.endpoints.gateway,
    )
    code, output = await run_cli(*args)
    assert code == 0, output
    assert "variant stable" in output and "│ acct-00042 │" in output and "│ PRIMARY │" in output, output
    code, output = await run_cli(*args, "-o", "json")
    assert code == 0, output
    answer = json.loads(output)
    assert (answer["route"], answer["variant"], answer["model_name"]) == ("fraud", "stable", "fraud")
    (prediction,) = answer["predictions"]
    assert prediction["entity_key"] == "acct-00042" and 0.0 <= prediction["score"] <= 1.0
    assert (prediction["variant"], prediction["tier"]) == ("stable", "PRIMARY")
    assert prediction["model_version"] == answer["model_version"] != ""


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        MESHSERVE, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )  # fmt: skip
    return await wait_for_exit(process)


async def test_canary_verbs_change_live_weights_and_land_in_the_audit_log(mesh):
    admin = ("--admin", mesh.endpoints.admin)
    code, output = await run_cli("routes", "audit", *admin, env={"MESHSERVE_RUN_DIR": "/nonexistent"})
    assert code == 1 and "UNAUTHENTICATED" in output, output  # the mesh's admin API asks for its token
    env = {"MESHSERVE_RUN_DIR": str(mesh.settings.run_dir)}  # where `up` wrote the admin token
    code, output = await run_cli("canary", "weights", "cli-canary", "stable=90", "canary=10", *admin, env=env)
    assert code == 0, output
    assert "│ stable  │ fraud │ 1       │ 90" in output and "│ canary  │ fraud │ 2       │ 10" in output
    code, output = await run_cli(
        "canary", "rollback", "cli-canary", "--reason", "smoke test", *admin, env=env
    )
    assert code == 0 and "│ canary  │ fraud │ 2       │ 0 " in output, output
    code, output = await run_cli("routes", "audit", *admin, env=env)
    assert code == 0 and "set_weights" in output and "smoke test" in output, output
    assert "admin-token" in output and "denied" in output, output  # who did it, and the refusal above
    code, output = await run_cli("canary", "weights", "cli-canary", "ghost=5", *admin, env=env)
    assert code == 2 and "INVALID_ARGUMENT" in output and "no variant 'ghost'" in output, output
    code, output = await run_cli("canary", "start", "cli-canary", *admin, env=env)
    assert code == 1 and "FAILED_PRECONDITION" in output and "no rollout plan" in output, output
