"""The `--target` options of the commands that dial the gateway or the monitor: one declaration each, saying
where the address comes from when the flag is absent (`meshserve.launcher.endpoints_file.locate`)."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["GatewayTarget", "MonitorTarget"]

GatewayTarget = Annotated[
    str | None,
    typer.Option(
        help="gateway address (default: MESHSERVE_TARGET_GATEWAY, else the running mesh's "
        "<run_dir>/endpoints.json, else 127.0.0.1:50051)"
    ),
]
MonitorTarget = Annotated[
    str | None,
    typer.Option(
        help="the monitor service's address (default: MESHSERVE_TARGET_MONITOR, else the running mesh's "
        "<run_dir>/endpoints.json, else 127.0.0.1:50057)"
    ),
]
