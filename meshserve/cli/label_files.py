"""Label files for `meshserve feedback load`: CSV or Parquet (by suffix) with the columns prediction_id and label,
and optionally event_time. Each row becomes a label or a refusal naming its line and why, so that one bad row is
refused alone and the rest of the file is kept. Other columns are ignored. No gRPC here.

Lines are counted as bulk scoring counts them (meshserve.scoring.files): a CSV's line number with the header as
line 1; in a Parquet file the row number from 1.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from meshserve.scoring.files import count_rows, read_columns, read_rows
from meshserve.scoring.rows import prediction_id_problem

__all__ = [
    "ID_COLUMN",
    "LABEL_COLUMN",
    "TIME_COLUMN",
    "LabelFileError",
    "LabelRow",
    "RefusedRow",
    "check_columns",
    "count_labels",
    "parse_row",
    "read_labels",
    "refused_path",
    "write_refused",
]

ID_COLUMN, LABEL_COLUMN, TIME_COLUMN = "prediction_id", "label", "event_time"
REQUIRED = (ID_COLUMN, LABEL_COLUMN)


class LabelFileError(Exception):
    """The file cannot be read as a label file at all (or stops being readable at some line): a usage error."""


@dataclass(frozen=True)
class LabelRow:
    line: int
    prediction_id: str
    value: float
    event_time: float  # Unix seconds; 0: when the monitor receives it


@dataclass(frozen=True)
class RefusedRow:
    line: int
    prediction_id: str  # as far as it could be read; empty when missing
    reason: str


def _unreadable(path: Path, exc: BaseException) -> LabelFileError:
    what = "Parquet" if path.suffix.lower() in (".parquet", ".pq") else "CSV"
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return LabelFileError(f"cannot read {path} as {what}: {detail}")


def check_columns(path: Path) -> list[str]:
    """The file's columns; LabelFileError when it cannot be read or lacks a required one (naming those it has)."""
    try:
        columns = read_columns(path)
    except (OSError, ValueError, csv.Error) as exc:  # pyarrow's errors are ValueErrors; a binary CSV too
        raise _unreadable(path, exc) from None
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        have = ", ".join(columns) if columns else "none"
        named = " and ".join(repr(c) for c in missing)
        raise LabelFileError(
            f"{path} has no column{'s' if len(missing) > 1 else ''} {named}; its columns are: {have} "
            f"(a label file has {ID_COLUMN}, {LABEL_COLUMN} and optionally {TIME_COLUMN})"
        )
    return columns


def count_labels(path: Path) -> int:
    """Rows in the file (the progress bar's total); LabelFileError when it cannot be read."""
    try:
        return count_rows(path)
    except (OSError, ValueError, csv.Error) as exc:
        raise _unreadable(path, exc) from None


def read_labels(path: Path) -> Iterator[LabelRow | RefusedRow]:
    """Every row of the file in order; LabelFileError where the file stops being readable (the rows before it
    have been yielded)."""
    rows = read_rows(path)
    while True:
        try:
            raw = next(rows)
        except StopIteration:
            return
        except (OSError, ValueError, csv.Error) as exc:
            raise _unreadable(path, exc) from None
        yield parse_row(raw.line, raw.values, raw.extra_fields)


def parse_row(line: int, values: Mapping[str, object], extra_fields: int = 0) -> LabelRow | RefusedRow:
    """One row: the label it gives, or why it is refused."""
    prediction_id = _prediction_id(values.get(ID_COLUMN))
    if not isinstance(prediction_id, tuple):
        return RefusedRow(line, "", prediction_id)
    (prediction_id,) = prediction_id
    if extra_fields:
        return RefusedRow(
            line, prediction_id, f"{extra_fields} field(s) beyond the header's {len(values)} columns"
        )
    value = _label(values.get(LABEL_COLUMN))
    if isinstance(value, str):
        return RefusedRow(line, prediction_id, value)
    event_time = _event_time(values.get(TIME_COLUMN))
    if isinstance(event_time, str):
        return RefusedRow(line, prediction_id, event_time)
    return LabelRow(line, prediction_id, value, event_time)


def _missing(raw: object) -> bool:
    return (
        raw is None
        or (isinstance(raw, float) and math.isnan(raw))
        or (isinstance(raw, str) and not raw.strip())
    )


def _prediction_id(raw: object) -> tuple[str] | str:
    """(the id,) or why it is refused. Ids are text; a whole number (a Parquet integer column) is taken as its
    digits."""
    if _missing(raw):
        return f"missing {ID_COLUMN}"
    if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
        return f"{ID_COLUMN} must be text or a whole number, got {raw!r}"
    text = str(int(raw)) if isinstance(raw, int | float) else str(raw).strip()
    problem = prediction_id_problem(text)
    return problem if problem else (text,)


def _label(raw: object) -> float | str:
    """The label's value, or (a str) why it is refused. Whether it fits the route (0 or 1 for a binary one) only
    the monitor knows: it says so per label."""
    if _missing(raw):
        return f"missing {LABEL_COLUMN}"
    if isinstance(raw, bool):  # a Parquet boolean column: the positive class or not
        return float(raw)
    if isinstance(raw, int | float):
        value = float(raw)
    else:
        try:
            value = float(str(raw).strip())
        except ValueError:
            return f"{LABEL_COLUMN} {raw!r} is not a number"
    if not math.isfinite(value):
        return f"{LABEL_COLUMN} must be a finite number, got {raw!r}"
    return value


def _event_time(raw: object) -> float | str:
    """Unix seconds (0 when absent: the time the label is received), or (a str) why it is refused. Takes Unix
    seconds, an ISO 8601 time (UTC unless it says its offset) or a Parquet timestamp or date."""
    if _missing(raw):
        return 0.0
    if isinstance(raw, datetime):
        return (raw if raw.tzinfo else raw.replace(tzinfo=UTC)).timestamp()
    if isinstance(raw, date):
        return datetime(raw.year, raw.month, raw.day, tzinfo=UTC).timestamp()
    seconds: float
    if isinstance(raw, bool):
        return f"{TIME_COLUMN} must be Unix seconds or an ISO 8601 time, got {raw!r}"
    if isinstance(raw, int | float):
        seconds = float(raw)
    else:
        text = str(raw).strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                return f"{TIME_COLUMN} {raw!r} is neither Unix seconds nor an ISO 8601 time"
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(seconds) or seconds < 0:
        return f"{TIME_COLUMN} must be Unix seconds from 1970 on, got {raw!r}"
    return seconds


def refused_path(path: Path) -> Path:
    return path.with_name(path.name + ".refused.csv")


def write_refused(path: Path, refused: Iterable[RefusedRow]) -> Path | None:
    """`FILE.refused.csv` (line, prediction_id, reason, by line) when any row was refused; else none, and none
    left from an earlier load of the same file. Its path, or None."""
    out = refused_path(path)
    rows = sorted(refused, key=lambda r: r.line)
    if not rows:
        out.unlink(missing_ok=True)
        return None
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["line", ID_COLUMN, "reason"])
        writer.writerows([r.line, r.prediction_id, r.reason] for r in rows)
    return out
