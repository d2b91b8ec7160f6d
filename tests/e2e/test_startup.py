"""`meshserve up` says what broke, in one line, before anything starts where it can: a bad routes file, a route
naming a model nobody serves, a busy port, a second `up` in the same run directory; and, once started, a model
Triton refuses or a port taken while the mesh started. Never a traceback. Each run logs into its own directory.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from meshserve.core.channels import wait_until_serving
from meshserve.core.process import free_port, free_ports
from meshserve.launcher.mesh import LocalMesh, MeshSettings, StartupFailure
from tests.e2e.meshserve_up import meshserve_up, meshserve_up_fails, run_logs

PROCESSES = {"triton", "feature", "cache", "inference", "monitor", "gateway"}
RAISES_IN_INITIALIZE = """\
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("weights file is corrupt")

    def execute(self, requests):
        return []
"""
BAD_CONFIG = """\
name: "bad"
backend: "python"
input [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]
instance_group [ { count: 1, kind: KIND_CPU } ]
"""


def ports_free(*, port: int | None = None, admin: int | None = None) -> list[str]:
    """`up`'s port options: free ports, but for those given."""
    gateway, admin_port, http = free_ports(3)
    return [
        "--port",
        str(port or gateway),
        "--admin-port",
        str(admin or admin_port),
        "--http-port",
        str(http),
    ]


def problem_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("meshserve up: ")]


async def up_fails(tmp_path: Path, *args: str, run_dir: Path | None = None) -> tuple[int, str]:
    code, output = await meshserve_up_fails(
        *args, env={"MESHSERVE_RUN_DIR": str(run_dir or tmp_path / "run")}
    )
    assert "Traceback" not in output, output
    return code, output


@pytest.fixture
def listener():
    """A socket listening on a free port, as another program would hold it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_a_bad_routes_file_is_one_line_naming_the_field_and_nothing_starts(tmp_path):
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "routes:\n  fraud:\n    variants:\n      - {name: stable, model: fraud, version: '1', weight: 100}\n"
        "      - {name: canary, model: fraud, version: '2', weight: -3}\n"
    )
    code, output = await up_fails(tmp_path, "--routes", str(routes), *ports_free())
    assert code == 2, output
    assert problem_lines(output) == [
        f"meshserve up: routes file {routes}: routes.fraud.variants.1.weight: "
        "Input should be greater than or equal to 0"
    ]
    assert not (tmp_path / "run" / "logs").exists()  # no process was started


async def test_a_routes_file_that_is_not_yaml_is_one_line_naming_where_the_parser_stopped(tmp_path):
    routes = tmp_path / "routes.yaml"
    routes.write_text("routes:\n  fraud: {variants: [\n")
    code, output = await up_fails(tmp_path, "--routes", str(routes), *ports_free())
    assert code == 2, output
    assert output.strip().splitlines() == [
        f"meshserve up: routes file {routes}: line 3 column 1: expected the node content, but found '<stream end>'"
    ]


async def test_a_route_naming_a_model_not_served_names_route_variant_and_model(tmp_path):
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "routes:\n  fraud:\n    variants:\n      - {name: stable, model: fraud, version: '1', weight: 100}\n"
        "      - {name: canary, model: nosuch, weight: 0}\n"
        "      - {name: old, model: fraud, version: '7', weight: 0}\n"
    )
    code, output = await up_fails(tmp_path, "--routes", str(routes), *ports_free())
    assert code == 2, output
    assert problem_lines(output) == [
        f"meshserve up: routes file {routes}: route 'fraud' variant 'canary' names model 'nosuch', which is not "
        "served (the repositories serve fraud)",
        f"meshserve up: routes file {routes}: route 'fraud' variant 'old' names model 'fraud' version 7, which "
        "Triton would not load (it loads versions 1, 2)",
    ]
    assert not (tmp_path / "run" / "logs").exists()


@pytest.mark.parametrize(("flag", "what"), [("--port", "gateway"), ("--admin-port", "admin")])
async def test_a_busy_port_is_one_line_naming_it_and_who_holds_it(tmp_path, listener, flag, what):
    args = ports_free(port=listener) if flag == "--port" else ports_free(admin=listener)
    code, output = await up_fails(tmp_path, *args)
    assert code == 2, output
    lines = problem_lines(output)
    assert len(lines) == 1, output
    assert lines[0].startswith(f"meshserve up: port {listener} ({what}) is in use by pid {os.getpid()} (")
    assert lines[0].endswith(f"— another meshserve up? (`meshserve status`), or pass {flag}")
    assert not (tmp_path / "run" / "logs").exists()


async def test_an_empty_repository_is_refused_before_anything_starts(tmp_path):
    (tmp_path / "models").mkdir()
    code, output = await up_fails(tmp_path, "--model-repository", str(tmp_path / "models"), *ports_free())
    assert code == 2, output
    assert problem_lines(output) == [
        f"meshserve up: model repository {tmp_path / 'models'} holds no model (one directory per model: "
        "<name>/config.pbtxt and <name>/1/...)"
    ]


async def test_a_model_triton_refuses_is_named_with_its_reason_and_this_runs_log(tmp_path):
    repository = tmp_path / "models"
    (repository / "bad" / "1").mkdir(parents=True)
    (repository / "bad" / "config.pbtxt").write_text(BAD_CONFIG)
    (repository / "bad" / "1" / "model.py").write_text(RAISES_IN_INITIALIZE)
    logs = []
    for _ in range(2):  # a second failed run prints its own log, not the first one's
        code, output = await up_fails(tmp_path, "--model-repository", str(repository), *ports_free())
        assert code == 1, output
        log = run_logs(tmp_path / "run") / "triton.log"
        assert problem_lines(output) == [
            "meshserve up: triton could not load model 'bad' version 1: Internal: RuntimeError: weights file is "
            f"corrupt (full log: {log})"
        ]
        assert "server_version" not in output  # not Triton's table of options
        assert log.read_text().count("failed to load 'bad' version 1") == 1
        logs.append(log)
    assert logs[0] != logs[1] and logs[0].exists()


@pytest.fixture(scope="module")
async def running(tmp_path_factory):
    """One `meshserve up`, for the tests that need a mesh already serving."""
    run_dir = tmp_path_factory.mktemp("first") / "run"
    async with meshserve_up(run_dir) as (process, port):
        found = json.loads((run_dir / "endpoints.json").read_text())
        yield process, port, run_dir, found


async def still_serving(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await wait_until_serving(channel, timeout_s=10)


async def test_a_second_up_in_the_same_run_dir_is_refused_and_the_first_keeps_serving(running, tmp_path):
    process, port, run_dir, found = running
    runs_before = sorted((run_dir / "logs").iterdir())
    code, output = await up_fails(tmp_path, *ports_free(), run_dir=run_dir)
    assert code == 2, output
    assert problem_lines(output) == [
        f"meshserve up: another meshserve up (pid {process.pid}, gateway 127.0.0.1:{port}) is running in "
        f"{run_dir} — stop it first (`meshserve status` shows it), or give this one its own MESHSERVE_RUN_DIR"
    ]
    assert sorted((run_dir / "logs").iterdir()) == runs_before  # nothing written there
    assert json.loads((run_dir / "endpoints.json").read_text()) == found
    await still_serving(port)


async def test_a_port_another_mesh_serves_names_that_meshs_process(running, tmp_path):
    process, port, _, found = running
    gateway_pid = next(p["pid"] for p in found["processes"] if p["name"] == "gateway")
    code, output = await up_fails(tmp_path, *ports_free(port=port))
    assert code == 2, output
    assert problem_lines(output) == [
        f"meshserve up: port {port} (gateway) is in use by pid {gateway_pid} (python -m gateway) of the "
        f"meshserve up with pid {process.pid} — another meshserve up? (`meshserve status`), or pass --port"
    ]
    assert "meshserve is up" not in output
    await still_serving(port)


async def test_each_run_logs_into_its_own_directory_named_in_endpoints_json(running):
    _, _, run_dir, found = running
    log_dir = Path(found["log_dir"])
    assert log_dir.parent == run_dir.resolve() / "logs"
    assert re.fullmatch(r"\d{8}T\d{6}Z(-\d+)?", log_dir.name)
    assert run_logs(run_dir) == log_dir  # logs/latest
    assert {p.stem for p in log_dir.glob("*.log")} == PROCESSES
    assert not list((run_dir / "logs").glob("*.log"))  # nothing appended to a shared file any more


async def test_a_health_probe_answered_by_another_process_is_a_port_taken_not_a_start(tmp_path):
    """The race a start-up check cannot close: the gateway's port, free when checked, taken before the gateway
    listens, by a server that says SERVING. `up` must not take that answer for its gateway's."""
    settings = MeshSettings(
        gateway_port=free_port(), admin_port=0, gateway_http_port=0, run_dir=tmp_path / "run", grace_s=2.0
    )
    mesh = LocalMesh(settings)
    mesh.plan()
    impostor = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, impostor)
    assert impostor.add_insecure_port(f"127.0.0.1:{settings.gateway_port}") == settings.gateway_port
    await impostor.start()
    try:
        with pytest.raises(StartupFailure) as failure:
            await mesh.start()
    finally:
        await mesh.stop()
        await impostor.stop(None)
    assert failure.value.name == "gateway"
    [line] = failure.value.lines
    assert line.startswith(f"port {settings.gateway_port} (gateway) was taken by pid {os.getpid()} (")
    assert line.endswith(
        "while meshserve started — another meshserve up? (`meshserve status`), or pass --port"
    )
    assert failure.value.log_path == mesh.log_dir / "gateway.log"
    assert not [name for name, child in mesh.children.items() if child.pid and not child.exited]


async def test_a_port_taken_after_the_check_that_stops_the_gateway_is_named(tmp_path):
    """The gateway cannot bind its admin port, taken after the check: that is what `up` says, not the exit."""
    settings = MeshSettings(
        gateway_port=0, admin_port=free_port(), gateway_http_port=0, run_dir=tmp_path / "run", grace_s=2.0
    )
    mesh = LocalMesh(settings)
    mesh.plan()
    with socket.socket() as sock:  # what another program could do between the check and the gateway's bind
        sock.bind(("127.0.0.1", settings.admin_port))
        sock.listen()
        try:
            with pytest.raises(StartupFailure) as failure:
                await mesh.start()
        finally:
            await mesh.stop()
    assert failure.value.name == "gateway"
    [line] = failure.value.lines
    assert line.startswith(f"port {settings.admin_port} (admin) was taken by pid {os.getpid()} (")
    assert line.endswith("or pass --admin-port")
    assert "Failed to bind" in failure.value.log_path.read_text()  # the gateway's own account, in its log
