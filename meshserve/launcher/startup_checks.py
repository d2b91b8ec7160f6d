"""What `meshserve up` checks before anything starts: one `up` per run directory, a routes file the gateway will
take and whose every model and version the served repository has, and free fixed ports. Each problem is one line
naming what is wrong and where, for a person to act on; nothing here starts a process.

Doing this up front matters because afterwards the failures are misleading: the gateway takes a bad routes file
only once Triton has started, and a health probe to a port another mesh holds is answered by that mesh.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from meshserve.core.process import describe_process, listening_sockets, socket_holders, socket_inodes
from meshserve.launcher.endpoints_file import pid_alive, read_endpoints
from meshserve.launcher.repository import ServedRepository, loaded_versions

__all__ = [
    "PortUse",
    "RunDirLock",
    "StartupError",
    "check_ports",
    "check_routes",
    "foreign_listeners",
    "loaded_versions",
    "port_taken_message",
]

LOCK_FILE = "up.lock"  # in the run directory: held by the `meshserve up` serving from it


class StartupError(ValueError):
    """`meshserve up` cannot start; each problem is one line for the user."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class PortUse:
    port: int
    what: str  # for the user: gateway, admin, REST
    flag: str | None  # the `meshserve up` option that moves it; None: a port chosen afresh each start


def _holders(host: str, port: int, inodes: set[int] | None = None) -> str:
    """' by pid N (...)' for whoever listens on host:port, when /proc says; else ''."""
    if inodes is None:
        inodes = set(_relevant(host, listening_sockets(port) or {}))
    pids = socket_holders(inodes)
    return f" by {', '.join(describe_process(pid) for pid in pids)}" if pids else ""


def _relevant(host: str, listening: dict[int, str]) -> list[int]:
    """The listening sockets (inodes) a bind to, or a call to, host:port meets: on that address or a wildcard."""
    try:
        address = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0]
    except (OSError, IndexError):
        address = host
    wildcard = {"0.0.0.0", "::"}
    if address in wildcard:
        return list(listening)
    same = {address, f"::ffff:{address}", *wildcard}
    return [inode for inode, where in listening.items() if where in same]


def check_ports(host: str, uses: list[PortUse]) -> list[str]:
    """One line per fixed port that cannot be listened on now."""
    problems = []
    for use in uses:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
            # as our servers bind: a port left in TIME_WAIT by a mesh that just stopped is free
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, use.port))
                continue
            except OSError as exc:
                error = exc
        if error.errno == errno.EADDRINUSE:
            problems.append(
                f"port {use.port} ({use.what}) is in use{_holders(host, use.port)} — another meshserve up? "
                f"(`meshserve status`), or pass {use.flag}"
            )
        else:
            problems.append(
                f"cannot listen on {host}:{use.port} ({use.what}): {error.strerror or error} — pass {use.flag}"
            )
    return problems


def foreign_listeners(host: str, port: int, own_pids: set[int]) -> set[int] | None:
    """Sockets listening on host:port that none of `own_pids` holds (a probe there may reach someone else);
    None where /proc does not say."""
    listening = listening_sockets(port)
    if listening is None:
        return None
    ours = set().union(*(socket_inodes(pid) for pid in own_pids)) if own_pids else set()
    return set(_relevant(host, listening)) - ours


def port_taken_message(host: str, use: PortUse, inodes: set[int] | None = None) -> str:
    """A port free at the start-up check that another process holds now."""
    remedy = f"pass {use.flag}" if use.flag else "start again (this port is chosen afresh)"
    return (
        f"port {use.port} ({use.what}) was taken{_holders(host, use.port, inodes)} while meshserve started — "
        f"another meshserve up? (`meshserve status`), or {remedy}"
    )


def check_routes(routes_path: Path | None, served: ServedRepository) -> list[str]:
    """The routes file parsed and validated by the gateway's own loader, then every model and pinned version a
    variant names looked up in the served repository: one line per problem, naming route, variant and model."""
    from gateway.routing.routes import RoutesFileError, load_routes

    if routes_path is not None and not routes_path.is_file():
        state = "is not a file" if routes_path.exists() else "does not exist"
        return [f"routes file {routes_path} {state}"]
    try:
        table = load_routes(routes_path)
    except RoutesFileError as exc:
        return [str(exc)]
    source = f"routes file {routes_path or 'embedded routes.yaml'}"
    models = {m.name for m in served.models}
    skipped = {s.name: s.reason for s in served.skipped}
    problems = []
    for route_name, route in table.routes.items():
        for variant in route.variants:
            where = f"{source}: route {route_name!r} variant {variant.name!r} names model {variant.model!r}"
            if variant.model not in models:
                if variant.model in skipped:
                    why = f"it was left out: {skipped[variant.model]}"
                else:
                    why = f"the repositories serve {', '.join(sorted(models)) or 'no model'}"
                problems.append(f"{where}, which is not served ({why})")
                continue
            if not variant.version:
                continue  # Triton's highest, whatever it is
            loaded = loaded_versions(served.path / variant.model)
            if variant.version.lstrip("0") not in {v.lstrip("0") for v in loaded}:
                which = f"version{'s' if len(loaded) > 1 else ''} {', '.join(loaded)}" if loaded else "none"
                problems.append(
                    f"{where} version {variant.version}, which Triton would not load (it loads {which})"
                )
    return problems


class RunDirLock:
    """One `meshserve up` per run directory: it rebuilds the served repository and rewrites endpoints.json
    there, under a running mesh's feet otherwise. An exclusive flock, so it goes with the process however that
    ends; the file names the holder's pid for the message."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Hold the run directory; StartupError naming the `meshserve up` that holds it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise StartupError([self._busy(int(holder) if holder.isdigit() else None)]) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def _busy(self, pid: int | None) -> str:
        with contextlib.suppress(ValueError):
            found = read_endpoints(self.run_dir)
            if found is not None and pid_alive(found.up_pid) and found.up_pid == (pid or found.up_pid):
                pid = found.up_pid
                return (
                    f"another meshserve up (pid {pid}, gateway {found.gateway}) is running in {self.run_dir} — "
                    "stop it first (`meshserve status` shows it), or give this one its own MESHSERVE_RUN_DIR"
                )
        who = f" (pid {pid})" if pid else ""
        return (
            f"another meshserve up{who} is starting or running in {self.run_dir} — stop it first, or give this "
            "one its own MESHSERVE_RUN_DIR"
        )

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock; the file stays (removing it would race the next up)
            self._fd = None

    def __enter__(self) -> RunDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
