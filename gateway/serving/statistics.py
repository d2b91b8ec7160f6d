"""Triton's statistics of the model versions behind a route, answered under the route's name: one entry per version,
summed over the variants that share it. Pure."""

from __future__ import annotations

from collections.abc import Iterable

from tritonclient.grpc import service_pb2

from meshserve.inference.statistics import add_model_statistics

__all__ = ["route_statistics"]


def route_statistics(
    route: str, entries: Iterable[service_pb2.ModelStatistics]
) -> list[service_pb2.ModelStatistics]:
    by_version: dict[str, service_pb2.ModelStatistics] = {}
    for entry in entries:
        total = by_version.get(entry.version)
        if total is None:
            total = by_version[entry.version] = service_pb2.ModelStatistics(name=route, version=entry.version)
        add_model_statistics(total, entry)
    return [by_version[v] for v in sorted(by_version, key=lambda v: (len(v), v))]
