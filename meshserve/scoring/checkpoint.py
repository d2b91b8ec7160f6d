"""Checkpoints: each finished chunk is one part file; a small state file says which command they belong to.

A rerun of the same command (same input file, route and batch size) skips the chunks whose parts exist, so an
interrupted run resumed ends with the same output as one that was never interrupted. Parts are written to a
temporary name and renamed, so a part either exists whole or not at all."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from meshserve.scoring.rows import Reject

__all__ = ["Checkpoint", "Fingerprint", "PartResult", "ScoredRow"]


@dataclass(frozen=True)
class ScoredRow:
    entity_key: str
    score: float
    variant: str
    model_version: str
    tier: str
    defaulted_features: tuple[str, ...] = ()  # stored features scored with defaults (missing or too old)
    prediction_id: str = ""  # the caller's, or the one the gateway made: what labels name


@dataclass
class PartResult:
    index: int
    rows: list[ScoredRow] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(
            {
                "index": self.index,
                "rows": [list(asdict(r).values()) for r in self.rows],
                "rejects": [[r.line, r.entity_key, r.reason] for r in self.rejects],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> PartResult:
        data = json.loads(text)
        return cls(
            data["index"],
            [ScoredRow(*r[:5], tuple(r[5]) if len(r) > 5 else (), *r[6:7]) for r in data["rows"]],
            [Reject(*r) for r in data["rejects"]],
        )


@dataclass(frozen=True)
class Fingerprint:
    """What a checkpoint belongs to: resuming with another input, route or batch size starts over."""

    input: str
    size: int
    mtime_ns: int
    route: str
    batch: int

    @classmethod
    def of(cls, path: Path, route: str, batch: int) -> Fingerprint:
        st = path.stat()
        return cls(str(path.resolve()), st.st_size, st.st_mtime_ns, route, batch)


class Checkpoint:
    """`<OUT>.parts/`: `state.json` and one `part-NNNNNN.json` per finished chunk."""

    def __init__(self, out: Path, fingerprint: Fingerprint) -> None:
        self.directory = out.with_name(out.name + ".parts")
        self.fingerprint = fingerprint
        self._state = self.directory / "state.json"

    def open(self) -> set[int]:
        """Prepare the directory; the chunks already done (none when the checkpoint is another command's)."""
        if self.directory.exists():
            try:
                state = json.loads(self._state.read_text())
            except (OSError, ValueError):
                state = None
            if state is not None and state.get("fingerprint") == asdict(self.fingerprint):
                # every part on disk counts, listed in the state or not: a part is renamed into place whole, and
                # an interruption can fall between that rename and the state file's rewrite
                return {int(part.stem.removeprefix("part-")) for part in self.directory.glob("part-*.json")}
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True)
        self._write_state(set())
        return set()

    def save(self, part: PartResult, done: set[int]) -> None:
        """Write the part, then record it (and every other finished chunk) in the state file."""
        _atomic_write(self._part(part.index), part.to_json())
        done.add(part.index)
        self._write_state(done)

    def load(self, index: int) -> PartResult:
        return PartResult.from_json(self._part(index).read_text())

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def _part(self, index: int) -> Path:
        return self.directory / f"part-{index:06d}.json"

    def _write_state(self, done: set[int]) -> None:
        last = max(done, default=-1)
        state = {"fingerprint": asdict(self.fingerprint), "done": sorted(done), "last_completed": last}
        _atomic_write(self._state, json.dumps(state))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
