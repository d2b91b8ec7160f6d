"""How a CLI command fails: one line naming what went wrong, and an exit status (2: bad input, 1: a failed call;
for a call the server refused, BAD_INPUT says which).

Commands raise `CliError`; the root command group (`GuardedGroup`, meshserve.cli.app) prints it as
`meshserve <command>: <line>` on stderr. It also turns a gRPC, OS or meshserve error that escaped a command into
the same one line (a safety net, not the main path); `MESHSERVE_DEBUG=1` lets the traceback through instead.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import grpc
import typer
from typer.core import TyperGroup

from meshserve.launcher.endpoints_file import (
    EndpointsFileError,
    Located,
    endpoints_path,
    env_name,
    run_dir_from,
)

EXIT_FAILED = 1  # a call failed, or the mesh refused
EXIT_USAGE = 2  # the command's input is wrong: arguments, options, the file it was given
READY_TIMEOUT_S = 3.0
# The one rule for a call the server refused. It is bad input (exit 2, as if the CLI had caught it itself) when
# the server says what the command asked for is wrong: a value it rejects (INVALID_ARGUMENT, OUT_OF_RANGE: a
# feature that is not finite, missing or unknown, a bad row of a file, a variant the route lacks) or a name it
# does not know (NOT_FOUND: the route, variant or version the command was given). Every other status is a failed
# call (exit 1): nothing answers, the mesh is overloaded or cannot do it now (FAILED_PRECONDITION), or the
# caller may not (UNAUTHENTICATED, PERMISSION_DENIED).
BAD_INPUT = frozenset(
    {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.NOT_FOUND}
)

__all__ = [
    "BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "CliError",
    "GuardedGroup",
    "describe_rpc_error",
    "dial",
    "exit_status",
    "found_where",
    "no_mesh",
    "reached",
    "require_reachable",
    "settings_errors",
]


class CliError(Exception):
    """A failure the user can act on: `str(exc)` is the whole message, `exit_code` the process's status."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def found_where(found: Located, kind: str, flag: str = "--target") -> str:
    """Where an address came from, in the words a user would look for it."""
    if found.source == "flag":
        return flag
    if found.source == "env":
        return env_name(kind)
    path = endpoints_path(run_dir_from())
    if found.source == "file":
        return str(path)
    return f"the default address; no running mesh's {path}"


def no_mesh(found: Located, kind: str, flag: str = "--target") -> str:
    return (
        f"no mesh at {found.address} (from {found_where(found, kind, flag)}): is `meshserve up` running? "
        "(`meshserve status`)"
    )


def describe_rpc_error(
    exc: grpc.aio.AioRpcError, found: Located, kind: str, flag: str = "--target", reached: bool = True
) -> str:
    """One line for a failed call. UNAVAILABLE from a channel that never connected means nothing listens there
    (a server answering UNAVAILABLE itself leaves the channel READY: that one is shown as the server said it)."""
    if exc.code() is grpc.StatusCode.UNAVAILABLE and not reached:
        return no_mesh(found, kind, flag)
    return f"{exc.code().name}: {' '.join((exc.details() or '').split())}"


def exit_status(exc: grpc.aio.AioRpcError) -> int:
    """The exit status for a failed call, by BAD_INPUT's rule."""
    return EXIT_USAGE if exc.code() in BAD_INPUT else EXIT_FAILED


def reached(channel: grpc.aio.Channel) -> bool:
    """Whether the channel is connected: after a failed call, False means nothing answered at the address."""
    return channel.get_state(try_to_connect=False) is grpc.ChannelConnectivity.READY


@contextmanager
def settings_errors(prefix: str = "MESHSERVE_", flags: Mapping[str, str] | None = None) -> Iterator[None]:
    """Settings built inside the block that fail validation become one usage line naming the setting as the
    user gave it, never a traceback: by its flag for those in `flags` (setting -> flag, only the ones given on
    the command line), else by its environment variable."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from meshserve.launcher.mesh import describe_settings_error

    try:
        yield
    except ValidationError as exc:
        raise CliError(describe_settings_error(exc, prefix, flags), EXIT_USAGE) from None
    except SettingsError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


@asynccontextmanager
async def dial(
    found: Located,
    kind: str,
    *,
    flag: str = "--target",
    server_name: str = "gateway",
    tls: bool | None = None,
) -> AsyncIterator[grpc.aio.Channel]:
    """A CLI channel to `found` (from `locate(kind, flag value)`); a call failing inside the block becomes a
    CliError naming the address and where it came from. TLS as the mesh runs it unless `tls` says."""
    from meshserve.launcher.mesh import cli_channel

    async with cli_channel(
        found.address, server_name=server_name, tls=found.tls if tls is None else tls
    ) as channel:
        try:
            yield channel
        except grpc.aio.AioRpcError as exc:
            line = describe_rpc_error(exc, found, kind, flag, reached=reached(channel))
            raise CliError(line, exit_status(exc)) from None


async def require_reachable(
    channel: grpc.aio.Channel, found: Located, kind: str, flag: str = "--target"
) -> None:
    """Fail at once when nothing answers at the address (the first failed connection attempt, or none within
    READY_TIMEOUT_S), before work that would otherwise fail row by row."""
    state = channel.get_state(try_to_connect=True)
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            while state is not grpc.ChannelConnectivity.READY:
                if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                    raise TimeoutError
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)
    except TimeoutError:
        raise CliError(no_mesh(found, kind, flag), EXIT_FAILED) from None


def _safety_net_line(exc: BaseException) -> str | None:
    """The one line for an error a command let escape, or None for one that is a bug (its traceback shows)."""
    from meshserve.core.errors import MeshError

    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {' '.join((exc.details() or '').split())}"
    if isinstance(exc, OSError | MeshError | EndpointsFileError):
        return str(exc)
    return None


def _plain_flags(params: list[Any]) -> list[Any]:
    """typer's rich help shows a flag as if it took a value (`--tls <bool>`, inviting `--tls true`); an empty
    metavar shows it alone."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class GuardedGroup(TyperGroup):
    """A command group whose commands end in one line on stderr and a non-zero status when they raise a
    CliError, or let a gRPC, OS or meshserve error escape; MESHSERVE_DEBUG=1 shows the traceback instead. The
    root and every sub-group use it, so the line names the command, e.g. `meshserve features load: ...`.
    Their help shows flags as flags (no `<bool>`)."""

    def get_params(self, ctx: typer.Context) -> list[Any]:
        return _plain_flags(super().get_params(ctx))

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _plain_flags(command.get_params(ctx))
        return command

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except Exception as exc:
            line = str(exc) if isinstance(exc, CliError) else _safety_net_line(exc)
            if line is None or os.environ.get("MESHSERVE_DEBUG"):
                raise  # typer.Exit and usage errors included: click prints those itself
            if not isinstance(exc, CliError):
                line += " (MESHSERVE_DEBUG=1 shows the traceback)"
            # `meshserve ...` however the program was started (python -m, a test runner, a renamed script)
            below_root = ctx.command_path.split()[1:]
            command = " ".join(filter(None, ("meshserve", *below_root, ctx.invoked_subcommand)))
            typer.echo(f"{command}: {line}", err=True)
            if isinstance(exc, CliError):
                status = exc.exit_code
            else:
                status = exit_status(exc) if isinstance(exc, grpc.aio.AioRpcError) else EXIT_FAILED
            raise typer.Exit(status) from None
