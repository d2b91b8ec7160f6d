"""The replica picker (power of two choices on in-flight x peak-EWMA latency), the model read from a raw
ModelInferRequest, the index union, and how channel targets are balanced."""

from __future__ import annotations

import json
import random
from collections import Counter

from tritonclient.grpc import service_pb2

from meshserve.core.channels import balanced_target, with_round_robin
from services.inference.picker import ReplicaPicker
from services.inference.replicas import _union_index, model_of


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def picker(n: int, clock: Clock | None = None, seed: int = 1) -> ReplicaPicker:
    p = ReplicaPicker([f"r{i}" for i in range(n)], rng=random.Random(seed), clock=clock or Clock())
    for r in p.replicas:
        p.update(r, True, [("m", "1")])
    return p


def simulate(p: ReplicaPicker, clock: Clock, latency: dict[str, float], n: int, concurrency: int) -> Counter:
    """`n` requests, `concurrency` in flight at once, each replica answering in its fixed latency."""
    served: Counter = Counter()
    in_flight: list[tuple[float, object]] = []
    for _ in range(n):
        while len(in_flight) >= concurrency:
            in_flight.sort(key=lambda e: e[0])
            done, replica = in_flight.pop(0)
            clock.now = max(clock.now, done)
            p.finished(replica, latency[replica.name])
        replica = p.pick("m", "1")
        p.started(replica)
        served[replica.name] += 1
        in_flight.append((clock.now + latency[replica.name], replica))
    return served


def test_equal_replicas_share_evenly():
    clock = Clock()
    p = picker(3, clock)
    served = simulate(p, clock, {"r0": 0.01, "r1": 0.01, "r2": 0.01}, 3000, 12)
    assert all(800 < count < 1200 for count in served.values()), served


def test_a_slowed_replica_gets_little_traffic():
    clock = Clock()
    p = picker(2, clock)
    served = simulate(p, clock, {"r0": 0.01, "r1": 0.1}, 2000, 8)
    assert served["r1"] < 0.15 * 2000, served


def test_in_flight_counts_before_any_latency_is_known():
    p = picker(2)
    first = p.pick("m", "1")
    p.started(first)
    (other,) = [r for r in p.replicas if r is not first]
    assert p.pick("m", "1") is other


def test_unhealthy_replicas_and_those_without_the_model_are_skipped():
    p = picker(3)
    r0, r1, r2 = p.replicas
    p.update(r0, False)
    p.update(r1, True, [("m", "2")])
    assert {p.pick("m", "1").name for _ in range(50)} == {"r2"}
    assert {p.pick("m", "").name for _ in range(50)} == {"r1", "r2"}  # "" = any version of the model
    assert {p.pick("m", "2").name for _ in range(50)} == {"r1"}


def test_nobody_serving_the_model_falls_back_to_every_healthy_replica_then_to_all():
    p = picker(2)
    assert {p.pick("other", "").name for _ in range(50)} == {"r0", "r1"}  # Triton answers NOT_FOUND itself
    for r in p.replicas:
        p.update(r, False)
    assert not p.any_healthy()
    assert {p.pick("m", "1").name for _ in range(50)} == {"r0", "r1"}


def test_a_new_replica_is_assumed_as_fast_as_the_best_and_takes_traffic_at_once():
    clock = Clock()
    p = ReplicaPicker(["r0", "r1", "r2"], rng=random.Random(3), clock=clock)
    r0, r1, r2 = p.replicas
    p.update(r0, True)
    p.update(r1, True)
    simulate(p, clock, {"r0": 0.02, "r1": 0.02, "r2": 0.02}, 500, 6)
    p.update(r2, True)  # started under load
    served = simulate(p, clock, {"r0": 0.02, "r1": 0.02, "r2": 0.02}, 600, 6)
    assert served["r2"] > 120, served


def test_peak_ewma_rises_at_once_and_falls_over_time():
    clock = Clock()
    p = picker(1, clock)
    (r,) = p.replicas
    for latency in (0.01, 0.5):
        p.started(r)
        clock.now += 0.001
        p.finished(r, latency)
    assert r.ewma_s == 0.5
    p.started(r)
    clock.now += 2.0  # one decay time later
    p.finished(r, 0.01)
    assert 0.15 < r.ewma_s < 0.25


def test_a_replica_silent_for_stale_s_is_measured_afresh():
    clock = Clock()
    p = picker(2, clock)
    r0, r1 = p.replicas
    for r, latency in ((r0, 0.01), (r1, 1.0)):
        p.started(r)
        p.finished(r, latency)
    assert {p.pick("m", "1").name for _ in range(20)} == {"r0"}
    clock.now += 10  # both stale: nothing measured counts, each is as good as the other
    assert {p.pick("m", "1").name for _ in range(50)} == {"r0", "r1"}


def test_model_of_reads_name_and_version_without_the_tensors():
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[1, 5])
    request = service_pb2.ModelInferRequest(
        model_name="fraud", model_version="2", id="x", inputs=[tensor], raw_input_contents=[b"\0" * 20]
    )
    request.parameters["timeout"].int64_param = 1000
    assert model_of(request.SerializeToString()) == ("fraud", "2")
    assert model_of(service_pb2.ModelInferRequest(model_name="m").SerializeToString()) == ("m", "")
    assert model_of(b"\x0a\xff") == ("", "")  # truncated: Triton's to refuse


def test_index_union_prefers_ready():
    index = service_pb2.RepositoryIndexResponse
    a = index(models=[index.ModelIndex(name="m", version="1", state="READY")]).SerializeToString()
    b = index(
        models=[
            index.ModelIndex(name="m", version="1", state="UNAVAILABLE"),
            index.ModelIndex(name="m", version="2", state="READY"),
        ]
    ).SerializeToString()
    merged = index.FromString(_union_index([b, a])).models
    assert {(m.name, m.version, m.state) for m in merged} == {("m", "1", "READY"), ("m", "2", "READY")}


def test_channel_targets_balance_only_when_they_name_several_replicas():
    assert balanced_target("127.0.0.1:50054") == ("127.0.0.1:50054", False)
    assert balanced_target("feature:50052") == ("feature:50052", False)
    assert balanced_target("ipv4:10.0.0.1:1") == ("ipv4:10.0.0.1:1", False)
    assert balanced_target("dns:///inference-headless:50054") == ("dns:///inference-headless:50054", True)
    assert balanced_target("10.0.0.1:1, 10.0.0.2:1") == ("ipv4:10.0.0.1:1,10.0.0.2:1", True)
    assert balanced_target("[::1]:1,[::1]:2") == ("ipv6:[::1]:1,[::1]:2", True)
    assert balanced_target("ipv4:10.0.0.1:1,10.0.0.2:1") == ("ipv4:10.0.0.1:1,10.0.0.2:1", True)


def test_round_robin_joins_a_callers_service_config_and_respects_its_own_choice():
    retry = {"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 2}}]}
    options = dict(
        with_round_robin([("grpc.max_send_message_length", 1), ("grpc.service_config", json.dumps(retry))])
    )
    config = json.loads(options["grpc.service_config"])
    assert (
        config["loadBalancingConfig"] == [{"round_robin": {}}]
        and config["methodConfig"] == retry["methodConfig"]
    )
    assert options["grpc.max_send_message_length"] == 1
    assert with_round_robin([("grpc.lb_policy_name", "pick_first")]) == [
        ("grpc.lb_policy_name", "pick_first")
    ]
