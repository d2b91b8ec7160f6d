"""Each `meshserve up` logs into its own directory, `<run_dir>/logs/<UTC start time>/<process>.log`, with
`<run_dir>/logs/latest` linking to the newest; the last KEEP_RUNS runs are kept. A failed run's messages then
show that run's lines, never another's. Also: what Triton's log says about models it would not load.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

__all__ = [
    "KEEP_RUNS",
    "LATEST",
    "ModelLoadFailure",
    "latest_run",
    "prune_runs",
    "readable_tail",
    "run_log_dirs",
    "start_run_logs",
    "triton_load_failures",
]

KEEP_RUNS = 10
LATEST = "latest"  # the link to the newest run's directory
_RUN_ID = re.compile(r"^(\d{8}T\d{6}Z)(?:-(\d+))?$")  # 20261202T015848Z, -2 for a second start that second


def _order(path: Path) -> tuple[str, int]:
    match = _RUN_ID.match(path.name)
    assert match is not None
    return match.group(1), int(match.group(2) or 1)


def run_log_dirs(logs_root: Path) -> list[Path]:
    """The runs' log directories, oldest first; anything else under `logs_root` is not one."""
    if not logs_root.is_dir():
        return []
    found = [p for p in logs_root.iterdir() if _RUN_ID.match(p.name) and p.is_dir() and not p.is_symlink()]
    return sorted(found, key=_order)


def prune_runs(logs_root: Path, keep: int, spare: Path | None = None) -> list[Path]:
    """Remove all but the newest `keep` runs' directories (never `spare`, the one just made, whatever the clock
    did); the removed ones."""
    runs = [p for p in run_log_dirs(logs_root) if p != spare]
    removed = runs[: max(0, len(runs) - max(0, keep - (spare is not None)))]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def _point_latest(logs_root: Path, name: str) -> None:
    """`latest` -> name, replaced in one step (a reader sees the old link or the new one)."""
    staging = logs_root / f".{LATEST}.{os.getpid()}"
    staging.unlink(missing_ok=True)
    staging.symlink_to(name)  # relative: the run directory may be moved whole
    os.replace(staging, logs_root / LATEST)


def start_run_logs(logs_root: Path, now: datetime | None = None, keep: int = KEEP_RUNS) -> Path:
    """A new, empty log directory for this run, named by its UTC start time; `latest` points at it and only the
    newest `keep` runs are left."""
    logs_root.mkdir(parents=True, exist_ok=True)
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in itertools.count(1):
        path = logs_root / (stamp if n == 1 else f"{stamp}-{n}")
        with contextlib.suppress(FileExistsError):
            path.mkdir()
            break
    _point_latest(logs_root, path.name)
    prune_runs(logs_root, keep, spare=path)
    return path


def latest_run(logs_root: Path) -> Path | None:
    """The newest run's log directory, as `latest` says (else by name); None when there is none."""
    link = logs_root / LATEST
    if link.is_symlink() and link.resolve().is_dir():
        return logs_root / os.readlink(link)
    runs = run_log_dirs(logs_root)
    return runs[-1] if runs else None


# Triton logs one line per model version it could not load, the message quoted with C escapes:
#   E1202 01:58:02.814304 476 model_lifecycle.cc:642] "failed to load 'bad' version 1: Internal: RuntimeError: ..."
_LOAD_FAILED = re.compile(r"failed to load '(?P<model>[^']+)'(?: version (?P<version>\d+))?: (?P<reason>.*)")


@dataclass(frozen=True)
class ModelLoadFailure:
    """One model (version) Triton would not load, and why."""

    model: str
    version: str | None
    reason: str

    def summary(self) -> str:
        version = f" version {self.version}" if self.version else ""
        return f"triton could not load model {self.model!r}{version}: {self.reason}"


def triton_load_failures(log_text: str) -> list[ModelLoadFailure]:
    """Each model (and version) Triton's log says it failed to load, in log order, once; the reason is the
    message's first line (a python model's traceback follows it)."""
    found: dict[tuple[str, str | None], ModelLoadFailure] = {}
    for line in log_text.splitlines():
        match = _LOAD_FAILED.search(line)
        if match is None:
            continue
        reason = match.group("reason").split("\\n", 1)[0]
        if reason.endswith('"') and "\\n" not in match.group("reason"):
            reason = reason[:-1]  # the closing quote of a one-line message
        reason = reason.replace('\\"', '"').strip()
        key = (match.group("model"), match.group("version"))
        found.setdefault(key, ModelLoadFailure(*key, reason or "no reason given"))
    return list(found.values())


_TRACEBACK = "Traceback (most recent call last):"
_CHAINED = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)


def readable_tail(log_text: str, lines: int = 20) -> str:
    """A log's last `lines` for a person: a Python traceback's frames left out (the full log has them), its
    exception kept, blank lines dropped. Frames are the indented lines after a `Traceback` header, up to the
    exception's own line."""
    kept: list[str] = []
    in_frames = False
    for line in log_text.splitlines()[-400:]:
        if line.startswith(_TRACEBACK):
            in_frames = True
        elif line in _CHAINED or not line.strip():
            continue
        elif in_frames and (not line or line[0].isspace()):
            continue
        else:
            in_frames = False
            kept.append(line)
    return "\n".join(kept[-lines:])
