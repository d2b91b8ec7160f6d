"""A bounded in-memory LRU with per-entry TTL, by bytes: cachetools' TLRUCache, sized by each key and value.

Clock-injected, so expiry is unit-testable. Entries larger than `max_entry_bytes` are never stored (one large
answer must not flush the cache)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from cachetools import TLRUCache


class _Entry(NamedTuple):
    value: bytes
    ttl_s: float
    size: int  # key and value bytes: what `max_bytes` bounds


def _expires_at(_key: str, entry: _Entry, now: float) -> float:
    return now + entry.ttl_s


class LruTtlCache:
    """Evicts least-recently-used entries once the total size of keys and values passes `max_bytes`; writes drop
    what has expired first, so memory follows (rate x TTL) rather than filling up with the dead."""

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
        self._entries: TLRUCache[str, _Entry] = TLRUCache(
            max_bytes, _expires_at, timer=clock, getsizeof=lambda entry: entry.size
        )

    @property
    def size(self) -> int:
        return int(self._entries.currsize)

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        self._entries.expire()
        hits: dict[str, bytes] = {}
        for key in keys:
            entry = self._entries.get(key)
            if entry is not None:
                hits[key] = entry.value
        return hits

    def set_many(self, items: Iterable[tuple[str, bytes]], ttl_s: float | None = None) -> int:
        ttl = ttl_s or self.default_ttl_s
        stored = 0
        for key, value in items:
            size = len(key) + len(value)
            if size > self.max_entry_bytes or size > self.max_bytes:
                continue
            self._entries[key] = _Entry(value, ttl, size)
            stored += 1
        return stored

    def clear(self) -> None:
        self._entries.clear()

    def delete_many(self, keys: Iterable[str]) -> int:
        return sum(self._entries.pop(key, None) is not None for key in keys)
