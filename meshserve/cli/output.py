"""`-o/--output` for listing commands: a table for people, or JSON for scripts (`jq`)."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import typer

__all__ = ["Output", "OutputOption", "print_json"]


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"


OutputOption = Annotated[
    Output, typer.Option("--output", "-o", help="table, or json for machine-readable output")
]


def print_json(data: object) -> None:
    typer.echo(json.dumps(data, indent=2))
