"""`make lock` re-pins constraints.txt without touching it when nothing changed (the install stamp depends on
its mtime: a rewrite alone would reinstall everything on the next `make`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OLD = 1_000_000_000  # an mtime long past

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("numpy==1.26.4\nredis==6.0.0\n")
    os.utime(constraints, (OLD, OLD))
    return tmp_path


def lock(checkout: Path, python: str) -> subprocess.CompletedProcess[str]:
    """`make lock` with `python` (a shell script) standing in for the venv's interpreter."""
    bin_dir = checkout / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text(f"#!/bin/sh\n{python}\n")
    (bin_dir / "python").chmod(0o755)
    # -o: take the install stamp as up to date, so nothing is installed
    command = ["make", "--no-print-directory", "-o", ".venv/.installed", "lock", f"BIN={bin_dir}"]
    return subprocess.run(command, cwd=checkout, capture_output=True, text=True, timeout=60)


def freezing(*lines: str) -> str:
    """A stand-in whose `pip freeze --exclude-editable` prints these lines."""
    return f'[ "$*" = "-m pip freeze --exclude-editable" ] && printf "%s\\n" {" ".join(lines)}'


def test_make_lock_rewrites_constraints_only_when_the_pins_change(checkout):
    constraints = checkout / "constraints.txt"
    same = lock(checkout, freezing("meshserve==0.1.0", "numpy==1.26.4", "redis==6.0.0"))
    assert (same.returncode, same.stdout) == (0, "constraints.txt: unchanged\n"), same.stderr
    assert constraints.stat().st_mtime == OLD

    moved = lock(checkout, freezing("numpy==1.26.4", "redis==6.1.0"))
    assert (moved.returncode, moved.stdout) == (0, "constraints.txt: re-pinned\n"), moved.stderr
    assert constraints.read_text() == "numpy==1.26.4\nredis==6.1.0\n"
    assert constraints.stat().st_mtime > OLD


def test_make_lock_leaves_constraints_alone_when_pip_fails(checkout):
    failed = lock(checkout, "echo 'pip: broken' >&2; exit 1")
    assert failed.returncode != 0 and "pip: broken" in failed.stderr
    assert (checkout / "constraints.txt").read_text() == "numpy==1.26.4\nredis==6.0.0\n"
    assert (checkout / "constraints.txt").stat().st_mtime == OLD
