"""What `meshserve up` checks before anything starts: routes against the served repository, the versions Triton
would load, fixed ports, one `up` per run directory. Real files and sockets, no process started."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest

from meshserve.launcher.endpoints_file import MeshEndpoints, write_endpoints
from meshserve.launcher.repository import prepare_served_repository
from meshserve.launcher.startup_checks import (
    PortUse,
    RunDirLock,
    StartupError,
    check_ports,
    check_routes,
    foreign_listeners,
    loaded_versions,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="listeners are found through /proc")

PYTHON_MODEL = 'backend: "python"\n{policy}\n'


def model(repository: Path, name: str, versions: list[int], policy: str = "") -> None:
    for version in versions:
        (repository / name / str(version)).mkdir(parents=True)
        (repository / name / str(version) / "model.py").write_text("")
    (repository / name / "config.pbtxt").write_text(PYTHON_MODEL.format(policy=policy))


@pytest.mark.parametrize(
    ("policy", "loaded"),
    [
        ("", ["3"]),  # Triton's default: the latest one
        ("version_policy: { latest { num_versions: 2 } }", ["2", "3"]),
        ("version_policy: { all {} }", ["1", "2", "3"]),
        ("version_policy: { specific { versions: [1, 3, 9] } }", ["1", "3"]),
    ],
)
def test_the_versions_triton_loads_follow_the_version_policy(tmp_path, policy, loaded):
    model(tmp_path, "m", [1, 2, 3], policy)
    assert loaded_versions(tmp_path / "m") == loaded


@pytest.fixture
def served(tmp_path):
    repository = tmp_path / "models"
    model(repository, "scorer", [1, 2], "version_policy: { all {} }")
    model(repository, "lonely", [1])
    (repository / "onnxish" / "1").mkdir(parents=True)  # a backend the bundled Triton lacks: skipped
    (repository / "onnxish" / "config.pbtxt").write_text('backend: "tensorflow"\n')
    return prepare_served_repository([repository], tmp_path / "served")


def write_routes(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    return path


def test_routes_naming_served_models_and_versions_pass(tmp_path, served):
    routes = write_routes(
        tmp_path,
        "routes:\n  r:\n    variants:\n      - {name: a, model: scorer, version: '2', weight: 1}\n"
        "      - {name: b, model: lonely, weight: 0}\n",
    )
    assert check_routes(routes, served) == []


def test_each_route_problem_names_route_variant_and_model(tmp_path, served):
    routes = write_routes(
        tmp_path,
        "routes:\n  r:\n    variants:\n      - {name: a, model: scorer, version: '3', weight: 1}\n"
        "      - {name: b, model: ghost, weight: 0}\n      - {name: c, model: onnxish, weight: 0}\n",
    )
    where = f"routes file {routes}: route 'r' variant"
    assert check_routes(routes, served) == [
        f"{where} 'a' names model 'scorer' version 3, which Triton would not load (it loads versions 1, 2)",
        f"{where} 'b' names model 'ghost', which is not served (the repositories serve lonely, scorer)",
        f"{where} 'c' names model 'onnxish', which is not served (it was left out: backend 'tensorflow' is not "
        "in the bundled Triton, which has python (and runs ONNX models with onnxruntime through it))",
    ]


def test_a_routes_file_the_gateway_would_refuse_is_its_loaders_field_path_error(tmp_path, served):
    routes = write_routes(tmp_path, "routes:\n  r:\n    variants: []\n")
    [problem] = check_routes(routes, served)
    assert problem.startswith(f"routes file {routes}: routes.r.variants: List should have at least 1 item")
    assert check_routes(tmp_path / "none.yaml", served) == [
        f"routes file {tmp_path / 'none.yaml'} does not exist"
    ]
    assert check_routes(tmp_path, served) == [f"routes file {tmp_path} is not a file"]
    broken = write_routes(tmp_path, "routes: {r: [\n")
    assert check_routes(broken, served) == [
        f"routes file {broken}: line 2 column 1: expected the node content, but found '<stream end>'"
    ]


def test_a_busy_port_names_who_holds_it_and_the_flag_that_moves_it():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        [problem] = check_ports("127.0.0.1", [PortUse(port, "admin", "--admin-port")])
        assert problem.startswith(f"port {port} (admin) is in use by pid {os.getpid()} (")
        assert problem.endswith("— another meshserve up? (`meshserve status`), or pass --admin-port")
        # held by this process: foreign to a mesh whose processes are others, not to one that includes it
        assert foreign_listeners("127.0.0.1", port, {1}) == foreign_listeners("127.0.0.1", port, set())
        assert foreign_listeners("127.0.0.1", port, {1}) and not foreign_listeners(
            "127.0.0.1", port, {os.getpid()}
        )
    assert check_ports("127.0.0.1", [PortUse(port, "admin", "--admin-port")]) == []  # free again
    assert foreign_listeners("127.0.0.1", port, set()) == set()


def test_a_port_that_cannot_be_listened_on_for_another_reason_says_why():
    [problem] = check_ports("192.0.2.1", [PortUse(50051, "gateway", "--port")])  # not this machine's address
    assert (
        problem == "cannot listen on 192.0.2.1:50051 (gateway): Cannot assign requested address — pass --port"
    )


def test_one_up_per_run_dir_and_the_refusal_names_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    with RunDirLock(run_dir):
        with pytest.raises(StartupError) as refused:
            RunDirLock(run_dir).acquire()
        assert refused.value.problems == [
            f"another meshserve up (pid {os.getpid()}) is starting or running in {run_dir} — stop it first, or "
            "give this one its own MESHSERVE_RUN_DIR"
        ]
        ep = MeshEndpoints(os.getpid(), False, "127.0.0.1:6000", "h", "a", "f", "c", "i", "t")
        write_endpoints(run_dir, ep)  # once it serves, the refusal says where
        with pytest.raises(StartupError) as refused:
            RunDirLock(run_dir).acquire()
        assert f"(pid {os.getpid()}, gateway 127.0.0.1:6000) is running in {run_dir}" in str(refused.value)
    with RunDirLock(run_dir):  # released with its holder
        pass


def test_endpoints_json_names_the_runs_logs_and_older_or_newer_files_still_read():
    ep = MeshEndpoints(1, False, "g", "h", "a", "f", "c", "i", "t", log_dir="/run/logs/20261202T015848Z")
    assert MeshEndpoints.from_json(ep.to_json()) == ep
    older = json.loads(ep.to_json())
    del older["log_dir"]
    assert MeshEndpoints.from_json(json.dumps(older)).log_dir is None
    newer = {**older, "something_new": 1, "processes": [{"name": "x", "pid": 2, "address": "a", "new": 0}]}
    assert MeshEndpoints.from_json(json.dumps(newer)).processes[0].name == "x"


def test_a_python_model_without_its_file_is_left_out_rather_than_left_to_hang_triton(tmp_path):
    """Triton does not fail such a load: it waits on the python stub until `up` gives up on Triton."""
    model(tmp_path / "models", "nofile", [1, 2], "version_policy: { all {} }")
    (tmp_path / "models" / "nofile" / "2" / "model.py").unlink()
    model(tmp_path / "models", "old_only", [1, 2])  # the latest is what Triton loads: 1 needs no model.py
    (tmp_path / "models" / "old_only" / "1" / "model.py").unlink()
    served = prepare_served_repository([tmp_path / "models"], tmp_path / "served")
    assert [m.name for m in served.models] == ["old_only"]
    assert [(s.name, s.reason) for s in served.skipped] == [
        ("nofile", "version 2 has no model.py, which the python backend runs")
    ]
