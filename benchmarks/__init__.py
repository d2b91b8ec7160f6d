"""meshserve's benchmark: the mesh against Triton directly, on one machine. Run `python -m benchmarks`."""

from benchmarks.report import Summary, percentile, ratio, summarize
from benchmarks.scenarios import SCENARIOS, closed_loop

__all__ = ["SCENARIOS", "Summary", "closed_loop", "percentile", "ratio", "summarize"]
