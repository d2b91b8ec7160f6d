"""Offered load beyond capacity (open loop, 1 s deadlines) on the real mesh: no congestion collapse. The gateway
refuses what it cannot take (RESOURCE_EXHAUSTED, with a retry hint), keeps serving the rest in time, never
ejects its only variant for being busy, and is clean again as soon as the load stops. The numbers are printed
for the record (`pytest -s`).

Two kinds of overload. At the model (`busy`: a fixed capacity of about 150 rows a second, the production case of
a saturated GPU), where the load generator is cheap and the numbers are steady; and of the whole machine (the
`fraud` path at 4x what it can do), where the generator shares the two cores with the mesh, falls seconds
behind, and moves every number from run to run: there only the no-collapse floor and recovery are asserted
(before admission control and the ejection fix: 0.05x at 2x, 0 at 4x)."""

from __future__ import annotations

import pytest

from benchmarks.report import percentile
from tests.helpers import scrape
from tests.reliability.overload import Outcome, closed_loop_capacity, offer, seconds_until_clean

pytestmark = pytest.mark.timeout(120)


def report(label: str, capacity: float, outcome: Outcome) -> float:
    share = outcome.goodput_rps / capacity
    print(f"\n{label} of {capacity:,.0f}/s: goodput {share:.2f}x; refused {len(outcome.refused_latencies_s)}, p99 "
          f"{outcome.refused_p99_ms:.0f} ms after sending; answered p99 "
          f"{1000 * percentile(outcome.ok_latencies_s, 99):.0f} ms; other {dict(outcome.other)}; generator late "
          f"by up to {1000 * percentile(outcome.lag_s, 99):.0f} ms (p99)")  # fmt: skip
    return share


def ejections(mesh, route: str) -> float:
    metrics = scrape(mesh.endpoints.gateway_metrics).items()
    ejected = [v for k, v in metrics if k.startswith(f'meshserve_gateway_variant_ejected{{route="{route}",')]
    assert ejected, f"no ejection gauge for route {route!r}"
    return sum(ejected)


@pytest.mark.parametrize(("factor", "floor"), [(2, 0.6), (4, 0.5)])
async def test_overload_at_the_model_is_refused_at_once_and_goodput_holds(mesh, factor, floor):
    target = mesh.endpoints.gateway
    # Two batches' worth in flight: Triton's own peak for this model (deeper queues only slow it down)
    capacity = await closed_loop_capacity(target, concurrency=8, model="busy")
    outcome = await offer(target, factor * capacity, seconds=3.0, model="busy")
    share = report(f"busy {factor}x", capacity, outcome)
    assert share >= floor, f"goodput fell to {share:.2f}x capacity at {factor}x load"
    assert len(outcome.refused_latencies_s) >= 0.1 * factor * capacity, "the excess queued instead of refused"
    # at once: a fraction of the 1 s deadline a queued call would wait out (p99 109 ms in one CI run on a host
    # running about 2x slower than usual; 8-14 ms in a run here otherwise)
    assert outcome.refused_p99_ms < 250, "refusals were not answered at once"
    assert not outcome.other.get("UNAVAILABLE"), "overload made the route unavailable"
    assert ejections(mesh, "busy") == 0
    recovery = await seconds_until_clean(target, model="busy")
    print(f"clean again {recovery:.2f} s after the load stopped")
    assert recovery < 2.0


async def test_a_saturated_machine_never_collapses_goodput_and_is_clean_at_once_after(mesh):
    target = mesh.endpoints.gateway
    capacity = await closed_loop_capacity(target)
    outcome = await offer(target, 4 * capacity, seconds=3.0)
    share = report("fraud 4x", capacity, outcome)
    assert share >= 0.15, f"goodput collapsed to {share:.2f}x capacity"
    assert not outcome.other.get("UNAVAILABLE"), "overload made the route unavailable"
    assert ejections(mesh, "fraud") == 0
    recovery = await seconds_until_clean(target)
    print(f"clean again {recovery:.2f} s after the load stopped")
    assert recovery < 2.0
