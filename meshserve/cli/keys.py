"""`meshserve keys create/list/revoke`: API keys for the gateway's callers. Only each key's hash is stored; the key
itself is printed once, at creation. The gateway rereads the file when it changes: no restart."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from meshserve.cli.errors import CliError
from meshserve.cli.output import Output, OutputOption, print_json
from meshserve.core.auth import ApiKeyStore

console = Console()
notes = Console(
    stderr=True
)  # what `create` says besides the key, so `$(meshserve keys create ...)` is the key
keys_app = typer.Typer(help="API keys for the gateway's callers: create, list, revoke.", no_args_is_help=True)
KeysFile = Annotated[
    Path | None,
    typer.Option(
        "--file",
        help="the gateway's API key file (default: MESHSERVE_GATEWAY_AUTH_API_KEYS_FILE, else "
        "<run_dir>/api-keys.json, the one `meshserve up` gives the gateway)",
    ),
]


def keys_path(file: Path | None = None) -> Path:
    if file is not None:
        return file
    explicit = os.environ.get("MESHSERVE_GATEWAY_AUTH_API_KEYS_FILE")
    if explicit:
        return Path(explicit)
    from meshserve.launcher.mesh import API_KEYS_FILE, MeshSettings

    return MeshSettings().run_dir / API_KEYS_FILE


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="the principal's name (audit logs show it)")],
    role: Annotated[list[str] | None, typer.Option("--role", help="a role the key holds (repeat)")] = None,
    file: KeysFile = None,
) -> None:
    """Create a key for NAME and print it once (only its hash is stored)."""
    store = ApiKeyStore(keys_path(file))
    try:
        token = store.create(name, role or [])
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    roles = ", ".join(sorted(set(role or []))) or "no roles"
    notes.print(
        f"key for [bold]{name}[/] ({roles}) in {store.path}; shown once, keep it now:", highlight=False
    )
    typer.echo(token)


@keys_app.command("list")
def keys_list(file: KeysFile = None, output: OutputOption = Output.TABLE) -> None:
    """Every key's name, roles, and when it was created or revoked (never the keys)."""
    store = ApiKeyStore(keys_path(file))
    try:
        keys = sorted(store.keys().values(), key=lambda k: k.name)
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise CliError(f"{store.path} is not an API key file: {exc}") from None
    if output is Output.JSON:
        print_json({"file": str(store.path), "keys": [
            {"name": k.name, "roles": list(k.roles), "created": k.created, "revoked": k.revoked or None}
            for k in keys
        ]})  # fmt: skip
        return
    table = Table(title=f"API keys ({store.path})")
    for column in ("name", "roles", "created", "revoked"):
        table.add_column(column)
    for key in keys:
        table.add_row(key.name, ", ".join(key.roles) or "-", key.created, key.revoked or "")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(name: str, file: KeysFile = None) -> None:
    """Revoke NAME's key: the gateway refuses it from its next request on."""
    store = ApiKeyStore(keys_path(file))
    try:
        key = store.revoke(name)
    except KeyError:
        console.print(f"[red]no key named {name!r}[/]")
        raise typer.Exit(1) from None
    console.print(f"[green]revoked[/] {key.name} (at {key.revoked})")


__all__ = ["keys_app", "keys_path"]
