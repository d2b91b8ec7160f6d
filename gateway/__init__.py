"""The gateway: routes Predict and Open Inference Protocol calls through cache, features and inference.

Its packages, each importing only those listed before it (and `meshserve`'s core, contracts and feature
registry; never `services`, `meshserve.launcher` or `meshserve.cli`):

- `control`: state shared by several gateways (the control store) and the audit log.
- `routing`: routes, the live route table, weights, variant choice, dispatch down fallback tiers, ejection,
  admission control, shadows and per-variant statistics. Pure policy, no gRPC.
- `settings`: the gateway process's one settings class.
- `serving`: the data path: Predict, the Open Inference Protocol handler, the prediction cache, typed clients of
  feature, cache and inference, batching, tensor checks, the model catalog and the repository follower.
- `rollout`: automated canaries (the judge and controller), blue-green switches, version checks.
- `api`: the adapters: gRPC servicers, the REST codec and server, the admin API.
- `metrics`, `service`, `__main__`: Prometheus collectors, the process that assembles it all, and its entry.
"""
