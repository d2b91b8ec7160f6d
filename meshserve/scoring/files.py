"""Reading the input (CSV or Parquet) as RawRows and writing the merged output and rejects."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from meshserve.scoring.checkpoint import Checkpoint, ScoredRow
from meshserve.scoring.rows import RawRow, Reject

__all__ = ["count_rows", "read_columns", "read_rows", "rejects_path", "write_outputs"]

OUTPUT_COLUMNS = [
    "entity_key",
    "score",
    "variant",
    "model_version",
    "tier",
    "defaulted_features",
    "prediction_id",
]


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def read_rows(path: Path) -> Iterator[RawRow]:
    if _is_parquet(path):
        import pyarrow.parquet as pq

        line = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for values in batch.to_pylist():
                line += 1
                yield RawRow(line, values)
        return
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        for fields in reader:
            if not fields:
                continue
            values = dict(zip(header, fields, strict=False))
            yield RawRow(reader.line_num, values, max(0, len(fields) - len(header)))


def read_columns(path: Path) -> list[str]:
    """The file's column names as `read_rows` reads them (a CSV's header, a Parquet file's schema)."""
    if _is_parquet(path):
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    with path.open(newline="") as f:
        return [h.strip() for h in next(csv.reader(f), [])]


def count_rows(path: Path) -> int:
    if _is_parquet(path):
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with path.open(newline="") as f:
        return max(0, sum(1 for fields in csv.reader(f) if fields) - 1)


def rejects_path(out: Path) -> Path:
    return out.with_name(out.name + ".rejects.csv")


def _names(row: ScoredRow) -> str:
    """The stored features a row was scored with defaults for, comma-separated; empty when none."""
    return ",".join(row.defaulted_features)


def write_outputs(out: Path, checkpoint: Checkpoint, chunks: int) -> tuple[int, int, int]:
    """Merge the parts in chunk order into OUT (Parquet or CSV by suffix) and, when any row was rejected,
    OUT.rejects.csv (with none, no such file, and none left from an earlier run over the same OUT); the rows
    scored, the rows rejected, and how many of the scored ones had stored features scored with defaults."""
    rows: list[ScoredRow] = []
    rejects: list[Reject] = []
    for index in range(chunks):
        part = checkpoint.load(index)
        rows.extend(part.rows)
        rejects.extend(part.rejects)
    if _is_parquet(out):
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(
            {
                "entity_key": pa.array([r.entity_key for r in rows], pa.string()),
                "score": pa.array([r.score for r in rows], pa.float32()),
                "variant": pa.array([r.variant for r in rows], pa.string()),
                "model_version": pa.array([r.model_version for r in rows], pa.string()),
                "tier": pa.array([r.tier for r in rows], pa.string()),
                "defaulted_features": pa.array([_names(r) for r in rows], pa.string()),
                "prediction_id": pa.array([r.prediction_id for r in rows], pa.string()),
            }
        )
        pq.write_table(table, out)
    else:
        with out.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(OUTPUT_COLUMNS)
            writer.writerows(
                [r.entity_key, repr(r.score), r.variant, r.model_version, r.tier, _names(r), r.prediction_id]
                for r in rows
            )
    defaulted = sum(1 for r in rows if r.defaulted_features)
    if not rejects:
        rejects_path(out).unlink(missing_ok=True)
        return len(rows), 0, defaulted
    with rejects_path(out).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["line", "entity_key", "reason"])
        writer.writerows([r.line, r.entity_key, r.reason] for r in rejects)
    return len(rows), len(rejects), defaulted
