"""meshserve.launcher.endpoints_file: the run's endpoints written atomically, read back, and the order CLI commands find
an address in (flag, MESHSERVE_TARGET_*, the running mesh's file, the default)."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from meshserve.launcher.endpoints_file import (
    EndpointsFileError,
    MeshEndpoints,
    ProcessEndpoint,
    endpoints_path,
    locate,
    read_endpoints,
    remove_endpoints,
    write_endpoints,
)


def endpoints(up_pid: int | None = None, tls: bool = False) -> MeshEndpoints:
    return MeshEndpoints(
        up_pid=os.getpid() if up_pid is None else up_pid,
        tls=tls,
        gateway="127.0.0.1:41001",
        gateway_http="127.0.0.1:41002",
        admin="127.0.0.1:41003",
        feature="127.0.0.1:41004",
        cache="127.0.0.1:41005",
        inference="127.0.0.1:41006",
        triton_grpc="127.0.0.1:41007",
        processes=[
            ProcessEndpoint("feature", 123, "127.0.0.1:41004", "http://127.0.0.1:41010/metrics"),
            ProcessEndpoint("gateway", 124, "127.0.0.1:41001", None, {"admin": "127.0.0.1:41003"}),
        ],
    )


def test_written_endpoints_read_back_equal_and_no_temporary_file_is_left(tmp_path):
    path = write_endpoints(tmp_path / "run", endpoints())
    assert path == endpoints_path(tmp_path / "run")
    assert read_endpoints(tmp_path / "run") == endpoints()
    assert [p.name for p in path.parent.iterdir()] == ["endpoints.json"]


def test_rewriting_replaces_the_file_whole(tmp_path):
    write_endpoints(tmp_path, endpoints())
    write_endpoints(tmp_path, endpoints(tls=True))
    assert read_endpoints(tmp_path).tls is True


def test_no_file_reads_as_none_and_a_broken_one_says_so(tmp_path):
    assert read_endpoints(tmp_path) is None
    endpoints_path(tmp_path).write_text("{not json")
    with pytest.raises(EndpointsFileError, match="unreadable endpoints file"):
        read_endpoints(tmp_path)
    endpoints_path(tmp_path).write_text('{"up_pid": 1}')
    with pytest.raises(EndpointsFileError):
        read_endpoints(tmp_path)


def test_remove_leaves_another_ups_file_alone(tmp_path):
    write_endpoints(tmp_path, endpoints(up_pid=os.getpid()))
    remove_endpoints(tmp_path, up_pid=os.getpid() + 1)
    assert read_endpoints(tmp_path) is not None
    remove_endpoints(tmp_path, up_pid=os.getpid())
    assert read_endpoints(tmp_path) is None
    remove_endpoints(tmp_path, up_pid=os.getpid())  # nothing to remove: no error


def test_an_explicit_flag_wins_then_the_variable_then_the_file_then_the_default(tmp_path):
    env = {"MESHSERVE_RUN_DIR": str(tmp_path)}
    assert locate("feature", env=env).address == "127.0.0.1:50052"
    assert locate("feature", env=env).source == "default"
    write_endpoints(tmp_path, endpoints())
    assert (locate("feature", env=env).address, locate("feature", env=env).source) == (
        "127.0.0.1:41004",
        "file",
    )
    assert locate("admin", env=env).address == "127.0.0.1:41003"
    assert locate("gateway", env=env).address == "127.0.0.1:41001"
    env["MESHSERVE_TARGET_FEATURE"] = "10.0.0.1:1"
    assert (locate("feature", env=env).address, locate("feature", env=env).source) == ("10.0.0.1:1", "env")
    assert locate("feature", "10.0.0.2:2", env=env).address == "10.0.0.2:2"
    assert locate("feature", "10.0.0.2:2", env=env).source == "flag"


def test_a_file_left_by_an_up_that_is_gone_is_passed_over(tmp_path):
    write_endpoints(tmp_path, endpoints(up_pid=2**22 + 12345))  # above the usual pid_max: never alive
    found = locate("gateway", env={"MESHSERVE_RUN_DIR": str(tmp_path)})
    assert (found.address, found.source, found.tls) == ("127.0.0.1:50051", "default", None)


def test_tls_comes_from_the_file_unless_meshserve_tls_is_set(tmp_path):
    write_endpoints(tmp_path, endpoints(tls=True))
    assert locate("gateway", env={"MESHSERVE_RUN_DIR": str(tmp_path)}).tls is True
    assert locate("gateway", env={"MESHSERVE_RUN_DIR": str(tmp_path), "MESHSERVE_TLS": "0"}).tls is None


def test_a_broken_file_falls_back_to_the_default(tmp_path):
    endpoints_path(tmp_path).write_text("[]")
    assert locate("admin", env={"MESHSERVE_RUN_DIR": str(tmp_path)}).address == "127.0.0.1:50055"


def test_the_monitor_is_found_like_the_others_and_an_older_file_without_it_falls_to_the_default(tmp_path):
    run_dir = tmp_path / "run"
    env = {"MESHSERVE_RUN_DIR": str(run_dir)}
    assert locate("monitor", env=env).address == "127.0.0.1:50057"  # the monitor's own default port
    write_endpoints(run_dir, replace(endpoints(), monitor="127.0.0.1:41008"))
    assert (locate("monitor", env=env).address, locate("monitor", env=env).source) == (
        "127.0.0.1:41008",
        "file",
    )
    assert locate("monitor", env={**env, "MESHSERVE_TARGET_MONITOR": "m:1"}).address == "m:1"
    assert locate("monitor", "flag:2", env=env).address == "flag:2"
    write_endpoints(run_dir, endpoints())  # written by an `up` that had no monitor
    assert read_endpoints(run_dir).monitor is None
    assert locate("monitor", env=env).source == "default"
