"""ChildProcess: a child dies with its parent, even a SIGKILLed one, and restarts as it was first started."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from meshserve.core.process import (
    ChildProcess,
    command_line,
    describe_process,
    display_command,
    free_ports,
    is_meshserve_up,
    listening_sockets,
    socket_holders,
    socket_inodes,
)
from tests.helpers import alive

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")

# A parent that starts one long-lived child, says its pid, and is SIGKILLed: no chance to clean anything up.
PARENT = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    from meshserve.core.process import ChildProcess

    async def main():
        child = ChildProcess("sleeper", ["sleep", "60"], dict(os.environ), Path(sys.argv[1]))
        await child.start()
        print(child.pid, flush=True)
        await asyncio.sleep(0.2)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
    """
)


async def test_a_child_gets_sigterm_when_its_parent_is_killed(tmp_path):
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PARENT, str(tmp_path / "sleeper.log"),
        stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    child_pid = int(await asyncio.wait_for(parent.stdout.readline(), 30))
    assert await asyncio.wait_for(parent.wait(), 30) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while alive({child_pid}):
        assert time.monotonic() < deadline, f"child {child_pid} outlived its parent"
        await asyncio.sleep(0.02)


async def lines_in(log: Path, count: int) -> None:
    """Until the child has written `count` lines (it is up, past the exec)."""
    for _ in range(1000):  # 10 s at most
        if len(log.read_text().splitlines()) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{log} never had {count} lines: {log.read_text()!r}")


async def test_restart_runs_the_same_argv_and_env_again_once_it_has_exited(tmp_path):
    log = tmp_path / "child.log"
    child = ChildProcess(
        "echo", ["/bin/sh", "-c", 'echo "run $RUN_NAME"; exec sleep 30'], {"RUN_NAME": "x"}, log
    )
    await child.start()
    try:
        with pytest.raises(RuntimeError, match="still running"):
            await child.restart()
        await lines_in(log, 1)
        first = child.pid
        os.kill(first, signal.SIGKILL)
        assert await child.wait() == -signal.SIGKILL
        assert not child.stop_requested
        await child.restart()
        await lines_in(log, 2)
        assert child.pid != first and child.starts == 2 and not child.exited
    finally:
        assert await child.stop(2) == -signal.SIGTERM
    assert child.stop_requested
    assert log.read_text().splitlines() == ["run x", "run x"]


LISTENER = textwrap.dedent(
    """
    import socket, sys, time
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    print(sock.getsockname()[1], flush=True)
    time.sleep(60)
    """
)


async def test_a_childs_listening_socket_is_found_and_its_process_described(tmp_path):
    child = ChildProcess("listener", [sys.executable, "-c", LISTENER], dict(os.environ), tmp_path / "l.log")
    await child.start()
    try:
        await lines_in(child.log_path, 1)
        port = int(child.log_path.read_text())
        listening = listening_sockets(port)
        assert list(listening.values()) == ["127.0.0.1"]
        assert set(listening) <= socket_inodes(child.pid)
        assert socket_holders(set(listening)) == [child.pid]
        assert describe_process(child.pid).startswith(f"pid {child.pid} (python")  # the program's base name
        assert "import socket, sys, time" in describe_process(child.pid)  # its arguments, on one line
    finally:
        await child.stop(2)
    assert listening_sockets(port) == {}
    assert socket_holders(set()) == []


# A clone in a long path: the interpreter and the console script each take well over 60 characters.
LONG = "/home/someone/" + "a-rather-long-folder-name/" * 6 + ".venv/bin"


def test_meshserve_up_is_told_from_the_whole_argv_and_only_the_display_is_cut():
    argv = [f"{LONG}/python", f"{LONG}/meshserve", "up", "--tls"]
    shown = display_command(argv)
    assert (
        len(shown) == 60 and shown.startswith("python /home/someone/a-rather-long") and shown.endswith("...")
    )
    assert "up" not in shown.split()  # what the old check, reading the display, missed
    assert is_meshserve_up(argv)
    assert is_meshserve_up(["python3", "-I", "-m", "meshserve", "up", "--port", "0"])
    assert is_meshserve_up([f"{LONG}/meshserve", "up"])
    assert not is_meshserve_up([f"{LONG}/python", f"{LONG}/meshserve", "status"])
    assert not is_meshserve_up(["python", "-m", "gateway", "up"])  # no meshserve before the up
    assert not is_meshserve_up(["up", "meshserve"])
    assert not is_meshserve_up([])
    assert display_command(["/usr/bin/python3", "-c", "a\n  b"]) == "python3 -c a b"
    assert display_command([]) == ""


# Stands in for the console script: starts one child, says its pid, and waits for its stdin to close.
FAKE_UP = textwrap.dedent(
    """
    import subprocess, sys
    child = subprocess.Popen(["sleep", "60"])
    print(child.pid, flush=True)
    sys.stdin.read()
    child.kill()
    child.wait()
    """
)


async def test_a_child_of_a_meshserve_up_run_from_a_long_path_is_named_as_such(tmp_path):
    script = tmp_path.joinpath(*["a-rather-long-folder-name"] * 6, ".venv", "bin", "meshserve")
    script.parent.mkdir(parents=True)
    script.write_text(FAKE_UP)
    assert len(f"python {script} up") > 60
    up = await asyncio.create_subprocess_exec(
        sys.executable, str(script), "up", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    try:
        child_pid = int(await asyncio.wait_for(up.stdout.readline(), 30))
        for _ in range(1000):  # just past its exec, the kernel shows an empty argv for a moment
            if command_line(child_pid):
                break
            await asyncio.sleep(0.01)
        assert (
            describe_process(child_pid) == f"pid {child_pid} (sleep 60) of the meshserve up with pid {up.pid}"
        )
        shown = display_command([sys.executable, str(script), "up"])
        assert (
            shown.endswith("...") and describe_process(up.pid) == f"pid {up.pid} ({shown})"
        )  # shown cut short
    finally:
        up.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(up.wait(), 10)
        if up.returncode is None:
            up.kill()
            await up.wait()


def test_free_ports_never_offer_a_port_someone_else_was_promised(monkeypatch):
    """The OS may offer again a port a caller checked and released (the user's fixed --port, say): avoided ports are
    drawn again, so no child binds the port another one was given."""
    offered = iter([41001, 41002, 41003, 41004])

    class Socket:
        def __init__(self, *args):
            self.port = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def bind(self, address):
            self.port = next(offered)

        def getsockname(self):
            return ("127.0.0.1", self.port)

    monkeypatch.setattr("meshserve.core.process.socket.socket", Socket)
    assert free_ports(2, avoid={41001, 41003}) == [41002, 41004]
