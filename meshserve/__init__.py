"""meshserve: a gRPC model-serving mesh in front of NVIDIA Triton.

This package is the bottom and the top of the house, in separate rooms; imports only point down this list
(`gateway/` and `services/` sit between the contracts and the tools):

- `core`: what every process shares: settings, lifecycle, health, error mapping, request ids, logging, TLS,
  authentication, channels, coalescing and a TTL cache. Imports nothing of ours.
- `defaults`: the embedded routes, features and reference profile.
- the contracts two processes share: `admin`, `cache`, `gateway`, `inference` and `feature` hold the generated
  `v1` protobuf code; `inference.triton_control` names Triton's calls passed through as bytes; `feature` also
  holds the feature registry and drift monitor.
- `gateway/` and `services/` (top-level packages): the processes, built on the above.
- `samples`, `scoring`, `deploy`: the sample models, bulk scoring and Envoy config generation.
- `launcher`: the mesh on one machine (`meshserve up`): supervised processes, start-up checks, run logs, the
  endpoints file, the served repository and its ONNX runner, certificates.
- `cli`: the `meshserve` command, at the top.
- `protogen`: regenerates the contracts' code from `protos/` (`make gen`).
"""
