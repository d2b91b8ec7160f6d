"""`meshserve deploy ...`: deployment files generated from meshserve's own settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

deploy_app = typer.Typer(help="Generate deployment files from meshserve's settings.", no_args_is_help=True)


@deploy_app.command("envoy")
def envoy(
    out: Annotated[Path, typer.Option(help="file to write")] = Path("deploy/envoy/envoy.yaml"),
    local: Annotated[
        bool, typer.Option("--local", help="proxy to a gateway on 127.0.0.1 and listen there only")
    ] = False,
) -> None:
    """Write the Envoy edge config (defaults: docker-compose; MESHSERVE_ENVOY_* variables override)."""
    from meshserve.deploy.envoy import EnvoySettings, deploy_envoy, local_settings

    path = deploy_envoy(out, local_settings() if local else EnvoySettings())
    typer.echo(f"wrote {path}")
