"""Triton's model statistics added together: several replicas' answers as if one Triton had served every
request. Pure (protobuf in, protobuf out); shared by the inference service (its replicas) and the gateway (the
variants behind a route)."""

from __future__ import annotations

from collections.abc import Iterable

from tritonclient.grpc import service_pb2

__all__ = ["add_model_statistics", "merge_statistics"]


def _add_durations(total, part) -> None:
    """Add every StatisticDuration field of `part` (inference, batch or response statistics; cache hits and
    misses are among them) into `total`."""
    for field in part.DESCRIPTOR.fields:
        if field.message_type is not None and field.message_type.name == "StatisticDuration":
            mine, theirs = getattr(total, field.name), getattr(part, field.name)
            mine.count += theirs.count
            mine.ns += theirs.ns


def add_model_statistics(total: service_pb2.ModelStatistics, entry: service_pb2.ModelStatistics) -> None:
    """Add `entry` into `total` (name and version are the caller's business): counts and durations summed, per
    batch size and per response index too, memory summed per (type, id), the latest inference kept."""
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
    memory = {(m.type, m.id): m for m in total.memory_usage}
    for usage in entry.memory_usage:
        mine = memory.get((usage.type, usage.id))
        if mine is None:
            mine = memory[(usage.type, usage.id)] = total.memory_usage.add(type=usage.type, id=usage.id)
        mine.byte_size += usage.byte_size
    for key, value in entry.response_stats.items():
        _add_durations(total.response_stats[key], value)


def merge_statistics(
    answers: Iterable[service_pb2.ModelStatisticsResponse],
) -> service_pb2.ModelStatisticsResponse:
    """One ModelStatisticsResponse for several Tritons': one entry per (model, version) any of them reports, in
    the order first seen, each the sum of every replica's figures for it."""
    merged: dict[tuple[str, str], service_pb2.ModelStatistics] = {}
    for answer in answers:
        for entry in answer.model_stats:
            total = merged.get((entry.name, entry.version))
            if total is None:
                total = merged[(entry.name, entry.version)] = service_pb2.ModelStatistics(
                    name=entry.name, version=entry.version
                )
            add_model_statistics(total, entry)
    return service_pb2.ModelStatisticsResponse(model_stats=list(merged.values()))
