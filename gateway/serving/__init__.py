"""The data path: Predict, the Open Inference Protocol handler, the prediction cache and its keys, typed clients
of the feature, cache and inference services, batching, tensor checks, the model catalog, the repository
follower and Triton's statistics under route names. Imports `gateway.routing`, `gateway.settings` and
`meshserve`'s core, contracts and feature registry; no gRPC servicers."""
