"""`meshserve <command> --help` for every command: a flag shows as a flag, never as taking a value
(`--tls <bool>` invited `--tls true`)."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from meshserve.cli.app import app


def command_paths(command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [path]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        paths += command_paths(sub, (*path, name))
    return paths


ALL = command_paths(typer.main.get_command(app))


def test_every_command_is_walked():
    assert {("up",), ("predict",), ("routes", "reload"), ("deploy", "envoy"), ("features", "load")} <= set(
        ALL
    )


@pytest.mark.parametrize("path", ALL, ids=lambda p: " ".join(p) or "meshserve")
def test_help_shows_flags_without_a_value(path):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "--help" in result.output
    assert "<bool>" not in result.output and "BOOLEAN" not in result.output.upper(), result.output


def test_a_flag_is_still_listed_with_its_help():
    output = CliRunner().invoke(app, ["up", "--help"], env={"COLUMNS": "200"}).output
    (line,) = [line for line in output.splitlines() if line.lstrip("│ ").startswith("--tls ")]
    assert line.split("--tls", 1)[1].split()[0] == "mTLS"  # the help text follows the flag, nothing between
