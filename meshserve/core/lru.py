"""A bounded in-memory LRU with per-entry TTL. Pure and clock-injected, so expiry is unit-testable."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass


@dataclass(slots=True)
class _Entry:
    value: bytes
    expires_at: float
    size: int


class LruTtlCache:
    """Evicts least-recently-used entries once the total size of keys and values passes `max_bytes`."""

    def __init__(
        self,
        max_bytes: int,
        max_entry_bytes: int,
        default_ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.default_ttl_s = default_ttl_s
        self.clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.size = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        now = self.clock()
        hits: dict[str, bytes] = {}
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                continue
            if entry.expires_at <= now:
                self._remove(key)
                continue
            self._entries.move_to_end(key)
            hits[key] = entry.value
        return hits

    def set_many(self, items: Iterable[tuple[str, bytes]], ttl_s: float | None = None) -> int:
        now = self.clock()
        self._drop_expired(now)
        expires_at = now + (ttl_s or self.default_ttl_s)
        stored = 0
        for key, value in items:
            size = len(key) + len(value)
            if size > self.max_entry_bytes:
                continue
            self._remove(key)
            self._entries[key] = _Entry(value, expires_at, size)
            self.size += size
            stored += 1
        while self.size > self.max_bytes:
            self._remove(next(iter(self._entries)))
        return stored

    def _drop_expired(self, now: float) -> None:
        """Writes drop what has expired at the cold end, so memory follows (rate x TTL) rather than filling up to
        `max_bytes` with the dead: with one TTL per caller, entries expire roughly in the order they were written."""
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires_at > now:
                return
            self._remove(key)

    def clear(self) -> None:
        self._entries.clear()
        self.size = 0

    def delete_many(self, keys: Iterable[str]) -> int:
        return sum(self._remove(key) for key in keys)

    def _remove(self, key: str) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self.size -= entry.size
        return True
