"""`make bench`: the mesh against direct Triton and an Envoy peer, in one run (see docs/benchmarks.md)."""

from benchmarks.load import closed_loop, open_loop
from benchmarks.scenarios import SCENARIOS

__all__ = ["SCENARIOS", "closed_loop", "open_loop"]
