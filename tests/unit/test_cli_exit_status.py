"""The CLI's one rule for a call the server refused (meshserve.cli.errors.BAD_INPUT): what the command asked
for is wrong -> exit 2, anything else -> exit 1; either way one line on stderr and nothing on stdout."""

from __future__ import annotations

import grpc
import pytest
import typer
from typer.testing import CliRunner

from meshserve.admin.v1 import admin_pb2
from meshserve.cli import admin as cli
from meshserve.cli.errors import EXIT_FAILED, EXIT_USAGE, GuardedGroup, exit_status


def refused(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, EXIT_USAGE),
        (grpc.StatusCode.OUT_OF_RANGE, EXIT_USAGE),
        (grpc.StatusCode.NOT_FOUND, EXIT_USAGE),
        (grpc.StatusCode.FAILED_PRECONDITION, EXIT_FAILED),
        (grpc.StatusCode.UNAVAILABLE, EXIT_FAILED),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, EXIT_FAILED),
        (grpc.StatusCode.UNAUTHENTICATED, EXIT_FAILED),
        (grpc.StatusCode.PERMISSION_DENIED, EXIT_FAILED),
        (grpc.StatusCode.INTERNAL, EXIT_FAILED),
    ],
)
def test_bad_input_is_what_the_command_asked_for_and_everything_else_a_failed_call(code, status):
    assert exit_status(refused(code)) == status


def test_a_refusal_that_escapes_a_command_exits_by_the_same_rule_with_one_line_on_stderr():
    app = typer.Typer(cls=GuardedGroup)

    @app.command()
    def go(code: str) -> None:
        raise refused(grpc.StatusCode[code], "instance 0: request feature 'amount' must be finite, got nan")

    @app.command()
    def other() -> None: ...

    result = CliRunner().invoke(app, ["go", "INVALID_ARGUMENT"])
    assert result.exit_code == EXIT_USAGE and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "meshserve go: INVALID_ARGUMENT: instance 0: request feature 'amount' must be finite, got nan "
        "(MESHSERVE_DEBUG=1 shows the traceback)"
    ]
    assert CliRunner().invoke(app, ["go", "UNAVAILABLE"]).exit_code == EXIT_FAILED


def test_canary_status_of_an_unknown_route_says_it_as_the_admin_api_does(monkeypatch):
    listed = admin_pb2.ListRoutesResponse(routes=[admin_pb2.RouteStatus(route="fraud")])
    monkeypatch.setattr(cli, "_call", lambda *args, **kwargs: listed)
    root = typer.Typer(cls=GuardedGroup)
    root.add_typer(cli.canary_app, name="canary", cls=GuardedGroup)
    result = CliRunner().invoke(root, ["canary", "status", "nosuch"])
    assert result.exit_code == EXIT_USAGE and result.stdout == ""
    assert result.stderr == "meshserve canary status: NOT_FOUND: unknown route 'nosuch'; routes: fraud\n"
