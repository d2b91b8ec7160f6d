"""The mesh on one machine (`meshserve up`): Triton, the services and the gateway as supervised children,
start-up checks, one log directory per run, the endpoints file the CLI reads, the served repository (with its
ONNX runner) and the mesh's certificates. Imports the processes' packages (`gateway`, `services`) and the core;
imported only by `meshserve.cli`."""
