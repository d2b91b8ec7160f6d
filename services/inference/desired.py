"""Which models the Triton replicas should hold, kept in one place: the last model-control call made through the
mesh for each model, so a replica that missed some (down, unreachable, restarted with its repository as on disk)
is brought in line before it takes traffic again. Pure: no I/O.

A load is sent again as it was made (its config and file overrides included) whatever the replica reports: a
restarted Triton may hold the model, but as loaded from disk. An unload is sent again only to a replica that
still serves the model.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum

__all__ = ["Control", "ControlKind", "DesiredModels"]


class ControlKind(Enum):
    LOAD = "RepositoryModelLoad"
    UNLOAD = "RepositoryModelUnload"
    SERVE_VERSIONS = "ServeVersions"  # a load with a version policy of exactly these versions


@dataclass(frozen=True, slots=True)
class Control:
    kind: ControlKind
    model: str
    request: bytes = b""  # a load's or unload's request, serialised as the caller sent it
    versions: tuple[str, ...] = ()  # SERVE_VERSIONS only


class DesiredModels:
    def __init__(self) -> None:
        self._last: dict[str, Control] = {}
        self.generation = 0  # counts the calls recorded: a replica that has applied them all is in line

    def record(self, control: Control) -> int:
        """A control call that took effect on at least one replica; the new generation."""
        self._last.pop(control.model, None)  # re-inserted: replayed in the order the calls were made
        self._last[control.model] = control
        self.generation += 1
        return self.generation

    def controls(self) -> list[Control]:
        return list(self._last.values())

    def catch_up(self, ready: Collection[tuple[str, str]]) -> list[Control]:
        """What to send a replica whose ready (model, version) pairs are `ready` so it holds what the others do:
        every model's last load again, and the last unload of each model it still serves."""
        serving = {name for name, _ in ready}
        return [c for c in self._last.values() if c.kind is not ControlKind.UNLOAD or c.model in serving]
