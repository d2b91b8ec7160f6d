"""Triton's statistics of the model versions behind a route, answered under the route's name: one entry per version,
summed over the variants that share it. Pure."""

from __future__ import annotations

from collections.abc import Iterable

from tritonclient.grpc import service_pb2

__all__ = ["route_statistics"]


def _add_durations(total, part) -> None:
    """Add every StatisticDuration field of `part` (inference, batch or response statistics) into `total`."""
    for field in part.DESCRIPTOR.fields:
        if field.message_type is not None and field.message_type.name == "StatisticDuration":
            mine, theirs = getattr(total, field.name), getattr(part, field.name)
            mine.count += theirs.count
            mine.ns += theirs.ns


def route_statistics(
    route: str, entries: Iterable[service_pb2.ModelStatistics]
) -> list[service_pb2.ModelStatistics]:
    by_version: dict[str, service_pb2.ModelStatistics] = {}
    for entry in entries:
        total = by_version.get(entry.version)
        if total is None:
            total = by_version[entry.version] = service_pb2.ModelStatistics(name=route, version=entry.version)
        total.last_inference = max(total.last_inference, entry.last_inference)
        total.inference_count += entry.inference_count
        total.execution_count += entry.execution_count
        _add_durations(total.inference_stats, entry.inference_stats)
        batches = {b.batch_size: b for b in total.batch_stats}
        for batch in entry.batch_stats:
            mine = batches.get(batch.batch_size)
            if mine is None:
                mine = batches[batch.batch_size] = total.batch_stats.add(batch_size=batch.batch_size)
            _add_durations(mine, batch)
        total.memory_usage.extend(entry.memory_usage)
        for key, value in entry.response_stats.items():
            _add_durations(total.response_stats[key], value)
    return [by_version[v] for v in sorted(by_version, key=lambda v: (len(v), v))]
