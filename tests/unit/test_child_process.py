"""ChildProcess: a child dies with its parent, even a SIGKILLed one, and restarts as it was first started."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from meshserve.core.process import (
    ChildProcess,
    describe_process,
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
