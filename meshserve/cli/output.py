"""How listing commands print: `-o/--output` (a table for people, or JSON for scripts, `jq`), and tables that stay
readable in a narrow terminal (`FittedTable`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

__all__ = ["Cell", "FittedTable", "Output", "OutputOption", "indented", "print_json", "records"]

Cell = str | Text  # a str cell is rich markup, as in rich's own tables
UNBOUNDED = 10_000  # columns: wide enough for any table's natural width


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"


OutputOption = Annotated[
    Output, typer.Option("--output", "-o", help="table, or json for machine-readable output")
]


def print_json(data: object) -> None:
    typer.echo(json.dumps(data, indent=2))


def _text(cell: Cell) -> Text:
    return Text.from_markup(cell) if isinstance(cell, str) else cell


def indented(cell: Cell, by: int = 2) -> Padding:
    """A line indented by `by`, its wrapped continuation lines too."""
    return Padding(_text(cell), (0, 0, 0, by), expand=False)


def records(title: str, columns: Sequence[str], rows: Sequence[Sequence[Cell]]) -> Group:
    """Rows as `column: value` lines, for a terminal too narrow for their table: with two columns one line per
    row (`first: second`), else the first cell heads a block of the others' (empty cells left out). Long values
    wrap between words; nothing is cut."""
    parts: list[RenderableType] = [Text(title, style="italic")] if title else []
    for row in rows:
        head, *rest = (_text(cell) for cell in row)
        if len(columns) == 2:
            parts.append(Text.assemble(head, ": ", rest[0]))
            continue
        parts.append(Text.assemble(head, style="bold"))
        parts.extend(
            indented(Text.assemble(f"{name}: ", value))
            for name, value in zip(columns[1:], rest, strict=True)
            if value
        )
    return Group(*parts)


class FittedTable:
    """A table printed whole where it fits the terminal at its natural width (no cell cut or wrapped); else
    `narrow()`, by default the rows as `records`. Rich would otherwise squeeze every column until headers, URLs
    and words are cut with an ellipsis or wrapped one word per line."""

    def __init__(
        self,
        title: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Cell]],
        narrow: Callable[[], RenderableType] | None = None,
        **table_options: Any,
    ) -> None:
        self.title = title
        self.columns = list(columns)
        self.rows = [list(row) for row in rows]
        self.narrow = narrow or (lambda: records(self.title, self.columns, self.rows))
        self.table_options = table_options

    def table(self) -> Table:
        table = Table(title=self.title or None, **self.table_options)
        for column in self.columns:
            table.add_column(column)
        for row in self.rows:
            table.add_row(*row)
        return table

    def fits(self, console: Console, width: int) -> bool:
        natural = console.measure(self.table(), options=console.options.update_width(UNBOUNDED)).maximum
        return natural <= width

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.table() if self.fits(console, options.max_width) else self.narrow()
