"""`<run_dir>/endpoints.json`: where a running `meshserve up` listens, for the CLI commands that dial it.

`meshserve up` writes it once every process is healthy (a temporary file renamed into place, so a reader never
sees half of it), rewrites it when a process is restarted (new pid), and removes it when it stops. CLI commands
find an address with `locate`: the command's flag first, then its `MESHSERVE_TARGET_<KIND>` variable, then this
file in MESHSERVE_RUN_DIR (default `.meshserve`), then the fixed default address.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

ENDPOINTS_FILE = "endpoints.json"
FORMAT_VERSION = 1
DEFAULT_RUN_DIR = Path(".meshserve")
# today's fixed defaults, used when nothing else names an address
DEFAULT_ADDRESSES: dict[str, str] = {
    "gateway": "127.0.0.1:50051",
    "feature": "127.0.0.1:50052",
    "admin": "127.0.0.1:50055",
    "gateway_http": "127.0.0.1:50056",
    "monitor": "127.0.0.1:50057",
}


class EndpointsFileError(ValueError):
    """The endpoints file exists but cannot be read as one."""


@dataclass(frozen=True)
class ProcessEndpoint:
    name: str
    pid: int | None
    address: str  # where it answers grpc.health.v1
    metrics: str | None = None  # its Prometheus URL
    addresses: dict[str, str] = field(default_factory=dict)  # every port it listens on, by purpose


@dataclass(frozen=True)
class MeshEndpoints:
    up_pid: int  # the `meshserve up` that wrote the file
    tls: bool
    gateway: str
    gateway_http: str
    admin: str
    feature: str
    cache: str
    inference: str
    triton_grpc: str
    processes: list[ProcessEndpoint] = field(default_factory=list)
    log_dir: str | None = None  # this run's logs (absent from files of older versions)
    monitor: str | None = None  # the monitor service (absent from files of older versions)

    def address(self, kind: str) -> str | None:
        value = getattr(self, kind, None)
        return value if isinstance(value, str) else None

    def to_json(self) -> str:
        return json.dumps({"version": FORMAT_VERSION, **asdict(self)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> MeshEndpoints:
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            data.pop("version", None)
            processes = [ProcessEndpoint(**_known(ProcessEndpoint, p)) for p in data.pop("processes", [])]
            return cls(**_known(cls, data), processes=processes)
        except (ValueError, TypeError) as exc:
            raise EndpointsFileError(f"unreadable endpoints file: {exc}") from None


def _known(kind: type, data: object) -> dict:
    """The fields `kind` has: a file written by a newer version may say more, and is read all the same."""
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object, not {data!r}")
    names = {f.name for f in fields(kind)}
    return {k: v for k, v in data.items() if k in names}


def run_dir_from(env: Mapping[str, str] | None = None) -> Path:
    """The run directory a CLI command looks in: MESHSERVE_RUN_DIR, else `.meshserve`."""
    env = os.environ if env is None else env
    return Path(env.get("MESHSERVE_RUN_DIR") or DEFAULT_RUN_DIR)


def endpoints_path(run_dir: Path) -> Path:
    return Path(run_dir) / ENDPOINTS_FILE


def write_endpoints(run_dir: Path, endpoints: MeshEndpoints) -> Path:
    """Write the file atomically: a temporary file beside it, then renamed over it."""
    path = endpoints_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".endpoints-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(endpoints.to_json())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def read_endpoints(run_dir: Path) -> MeshEndpoints | None:
    """The file's endpoints; None when there is none; EndpointsFileError when it is not one."""
    try:
        text = endpoints_path(run_dir).read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EndpointsFileError(f"cannot read {endpoints_path(run_dir)}: {exc}") from None
    return MeshEndpoints.from_json(text)


def remove_endpoints(run_dir: Path, up_pid: int | None = None) -> None:
    """Remove the file; with `up_pid`, only when that `meshserve up` wrote it (another may run there now)."""
    path = endpoints_path(run_dir)
    if up_pid is not None:
        try:
            current = read_endpoints(run_dir)
        except EndpointsFileError:
            current = None
        if current is None or current.up_pid != up_pid:
            return
    path.unlink(missing_ok=True)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process, but alive
        return True
    return True


@dataclass(frozen=True)
class Located:
    address: str
    source: str  # flag | env | file | default
    tls: bool | None  # from the endpoints file; None: let MESHSERVE_TLS (cli_channel) decide


def env_name(kind: str) -> str:
    return f"MESHSERVE_TARGET_{kind.upper()}"


def locate(kind: str, flag: str | None = None, env: Mapping[str, str] | None = None) -> Located:
    """Where `kind` (gateway, admin, feature, ...) listens: the flag, MESHSERVE_TARGET_<KIND>, the endpoints file
    of a running mesh in the run directory, else the fixed default. The file's TLS setting applies unless
    MESHSERVE_TLS is set; an unreadable file is passed over."""
    env = os.environ if env is None else env
    try:
        found = read_endpoints(run_dir_from(env))
    except EndpointsFileError:
        found = None
    if found is not None and not pid_alive(found.up_pid):
        found = None  # left behind by an `up` that was killed
    tls = found.tls if found is not None and not env.get("MESHSERVE_TLS") else None
    if flag:
        return Located(flag, "flag", tls)
    if env.get(env_name(kind)):
        return Located(env[env_name(kind)], "env", tls)
    if found is not None and found.address(kind):
        return Located(found.address(kind) or "", "file", tls)
    if kind not in DEFAULT_ADDRESSES:
        raise KeyError(f"no default address for {kind!r}")
    return Located(DEFAULT_ADDRESSES[kind], "default", tls)


__all__ = [
    "ENDPOINTS_FILE",
    "EndpointsFileError",
    "Located",
    "MeshEndpoints",
    "ProcessEndpoint",
    "endpoints_path",
    "locate",
    "pid_alive",
    "read_endpoints",
    "remove_endpoints",
    "run_dir_from",
    "write_endpoints",
]
