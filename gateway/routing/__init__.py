"""Where each request goes: routes, the live table, weights, variant choice, dispatch down the fallback tiers,
ejection and retry budgets, admission control, shadows and per-variant statistics. Pure policy (clock and RNG
injected), no gRPC. Imports `gateway.control` and `meshserve.core` only."""
