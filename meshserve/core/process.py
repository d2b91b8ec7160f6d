"""Child processes that are always cleaned up: each in its own session, stopped by process group, and sent a
signal by the kernel when their parent dies, whatever killed it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

# Runs between our fork and the real program: arms the parent-death signal, then becomes that program (same pid;
# the setting survives execve). Done in a fresh interpreter rather than as a `preexec_fn`, which would run Python
# in a forked copy of a multi-threaded process (gRPC's threads; its fork handlers then log on our terminal).
_DIE_WITH_PARENT = """\
import ctypes, os, sys
sig, parent, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
if ctypes.CDLL(None, use_errno=True).prctl(1, sig, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
    sys.exit(f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}")
if os.getppid() != parent:  # the parent died before the line above: no signal will ever come
    sys.exit(1)
os.execvp(argv[0], argv)
"""


def free_ports(count: int, host: str = "127.0.0.1", avoid: Iterable[int] = ()) -> list[int]:
    """Ask the OS for `count` distinct free ports (for children that cannot bind port 0 and report it back, like
    Triton). All sockets stay open until every port is chosen, so the OS cannot hand out one port twice; ports in
    `avoid` (fixed ports someone else will bind, free right now) are drawn again, since the OS may offer them."""
    avoid = set(avoid)
    with contextlib.ExitStack() as stack:
        chosen: list[int] = []
        while len(chosen) < count:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            if (number := sock.getsockname()[1]) not in avoid:
                chosen.append(number)
        return chosen


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, found through /proc (children run in their own sessions, so process
    groups do not find them)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _proc_address(hex_address: str) -> str:
    """An address as /proc/net/tcp{,6} writes it (32-bit words in host byte order), as text."""
    raw = bytes.fromhex(hex_address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def listeners() -> dict[int, tuple[str, int]] | None:
    """Every TCP socket listening on this machine (its network namespace), as {inode: (address, port)}; None
    where /proc does not say (not Linux)."""
    found: dict[int, tuple[str, int]] = {}
    tables = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        tables += 1
        for line in lines:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] == "0A":  # 0A: LISTEN
                found[int(fields[9])] = (_proc_address(address), int(hex_port, 16))
    return found if tables else None


def listening_sockets(port: int) -> dict[int, str] | None:
    """The TCP sockets listening on `port` on this machine (its network namespace), as {inode: address}; None
    where /proc does not say (not Linux)."""
    found = listeners()
    if found is None:
        return None
    return {inode: address for inode, (address, number) in found.items() if number == port}


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets `pid` holds open; empty when its fds cannot be read (gone, another user's)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def socket_holders(inodes: set[int]) -> list[int]:
    """The processes (those whose fds we may read) holding any of these sockets, lowest pid first."""
    if not inodes:
        return []
    return sorted(
        int(entry) for entry in os.listdir("/proc") if entry.isdigit() and socket_inodes(int(entry)) & inodes
    )


def command_line(pid: int) -> list[str]:
    """`pid`'s argv as the kernel keeps it (/proc/<pid>/cmdline), whole; empty when it cannot be read."""
    with contextlib.suppress(OSError):
        return [
            a for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0") if a
        ]
    return []


def display_command(argv: Sequence[str], width: int = 60) -> str:
    """`argv` on one line for a person: the program's base name, then its arguments, cut to `width`."""
    if not argv:
        return ""
    text = " ".join(" ".join([Path(argv[0]).name, *argv[1:]]).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def is_meshserve_up(argv: Sequence[str]) -> bool:
    """Whether `argv` runs `meshserve up` (its console script, or `python -m meshserve`), judged from every
    argument, so a long path to the script cannot hide the `up` after it."""
    for i, arg in enumerate(argv):
        if Path(arg).name == "meshserve":
            return "up" in argv[i + 1 :]
    return False


def describe_process(pid: int) -> str:
    """`pid` for a person: its command line (the program's base name first), and the `meshserve up` that
    started it when it was one. Only the text shown is cut short; the decision reads the whole argv."""
    text = display_command(command_line(pid))
    described = f"pid {pid} ({text})" if text else f"pid {pid}"
    with contextlib.suppress(OSError, IndexError, ValueError):
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        if is_meshserve_up(command_line(parent)):
            described += f" of the meshserve up with pid {parent}"
    return described


def tied_to_parent(argv: Sequence[str], sig: int = signal.SIGTERM) -> list[str]:
    """`argv`, started so that the kernel sends it `sig` when this process dies (Linux PR_SET_PDEATHSIG): not even
    a SIGKILL of the parent can orphan it. Unchanged where there is no prctl.

    SIGTERM rather than SIGKILL: every child we start drains on it within a bounded time (our services within
    grace_s, Triton within its exit timeout), and Triton then stops its own python stubs, which the setting does
    not reach (it is not inherited across fork). The kernel sends it when the *thread* that forked exits: start
    children from the event loop's thread, which lives as long as the process.
    """
    if sys.platform != "linux":
        return list(argv)
    return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(int(sig)), str(os.getpid()), *argv]


class ChildProcess:
    """A process in a new session, so stopping it also stops whatever it started (Triton's python stubs).

    It gets SIGTERM when its parent dies (`tied_to_parent`): a supervisor that is itself killed takes its
    children with it instead of leaving them serving ports nobody watches.
    """

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.stop_requested = False  # set by stop(): an exit after it was asked for, not a crash
        self.starts = 0

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.stop_requested = False
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *tied_to_parent(self.argv),
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1

    async def restart(self) -> None:
        """Start the same argv and environment again (same ports: its peers reconnect) once it has exited; what
        was left of its process group first goes (a python stub that outlived Triton)."""
        if self.process is not None:
            if self.process.returncode is None:
                raise RuntimeError(f"{self.name} is still running")
            self.signal(signal.SIGKILL)
        await self.start()

    async def wait(self) -> int:
        """Until it exits; its return code (-N: killed by signal N)."""
        if self.process is None:
            raise RuntimeError(f"{self.name} was never started")
        return await self.process.wait()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def exited(self) -> bool:
        return self.process is not None and self.process.returncode is not None

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def signal(self, sig: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)

    async def stop(self, grace: float) -> int | None:
        """SIGTERM the group, wait up to `grace` seconds, then SIGKILL whatever is left of it."""
        if self.process is None:
            return None
        self.stop_requested = True
        if self.process.returncode is None:
            self.signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), grace)
        self.signal(signal.SIGKILL)  # also reaps grandchildren left in the group after a crash
        return await self.process.wait()
