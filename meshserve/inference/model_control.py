"""Which model loads may reach Triton: the contract the gateway (which refuses early) and the inference service
(which refuses again, for callers that reach it some other way) both apply to a `RepositoryModelLoad`, so that
neither forwards a load that would crash or misuse Triton. Pure: no I/O, no gRPC.

A load may carry `file:<path>` parameters (files of the model, written by Triton under a temporary directory of
its own) and a `config` parameter (the model configuration as JSON). The bundled Triton 2.51 aborts (SIGABRT) on a
`file:` path it cannot stat: a component over NAME_MAX (255 bytes) or a whole path over PATH_MAX (4096, its own
temporary directory included). Paths that climb out with `..` are refused by Triton itself, and absolute ones are
silently written under its temporary directory, which is never what the caller meant.

A refusal has Triton's status and words, INTERNAL "failed to load '<model>', failed to poll from model
repository" (what Triton answers for every override it cannot take, and newer Triton for the long path), followed
by the reason, which Triton would only have written to its own log.
"""

from __future__ import annotations

from tritonclient.grpc import service_pb2

from meshserve.core.errors import ErrorCode, MeshError

__all__ = [
    "FILE_PREFIX",
    "MAX_CONFIG_BYTES",
    "MAX_FILE_PATH_BYTES",
    "MAX_PATH_COMPONENT_BYTES",
    "check_model_load",
    "model_load_problem",
]

FILE_PREFIX = "file:"
MAX_PATH_COMPONENT_BYTES = 255  # NAME_MAX on Linux: a longer component makes Triton 2.51 abort
# PATH_MAX is 4096 on Linux and Triton puts its temporary directory in front; no model file needs a longer path
MAX_FILE_PATH_BYTES = 1024
# A model configuration describes tensors, batching and instances: a few KB, tens of KB for a large ensemble.
# One of a MiB is not a configuration but a payload, which Triton would parse and keep while it loads.
MAX_CONFIG_BYTES = 1 << 20


def _file_problem(name: str) -> str | None:
    path = name[len(FILE_PREFIX) :]
    where = f"Invalid file parameter '{_shown(name)}'"
    if not path:
        return f"{where}: the path is empty"
    if path.startswith("/"):
        return f"{where}: the path must be relative to the model directory"
    if len(path.encode()) > MAX_FILE_PATH_BYTES:
        return f"{where}: the path is longer than {MAX_FILE_PATH_BYTES} bytes"
    for component in path.split("/"):
        if component == "..":
            return f"{where}: the path must stay within model directory"
        if len(component.encode()) > MAX_PATH_COMPONENT_BYTES:
            return f"{where}: a path component is longer than {MAX_PATH_COMPONENT_BYTES} bytes"
    return None


def _shown(name: str, limit: int = 80) -> str:
    """A parameter name as a message shows it: a long one cut, since repeating 4 KB back helps nobody."""
    return name if len(name) <= limit else f"{name[:limit]}... ({len(name.encode())} bytes)"


def model_load_problem(request: service_pb2.RepositoryModelLoadRequest) -> str | None:
    """Why this load must not reach Triton, or None when it may. File paths are checked in name order, so the
    reason given does not depend on the order the parameters came in."""
    for name in sorted(request.parameters):
        if name.startswith(FILE_PREFIX):
            problem = _file_problem(name)
            if problem is not None:
                return problem
    config = request.parameters.get("config")
    if config is not None and config.WhichOneof("parameter_choice") == "string_param":
        size = len(config.string_param.encode())
        if size > MAX_CONFIG_BYTES:
            return f"Invalid config override: {size} bytes, over the limit of {MAX_CONFIG_BYTES} bytes"
    return None


def check_model_load(request: service_pb2.RepositoryModelLoadRequest) -> None:
    """Raise Triton's own refusal (INTERNAL, its words, then the reason) for a load that must not reach it."""
    problem = model_load_problem(request)
    if problem is not None:
        raise MeshError(
            f"failed to load '{request.model_name}', failed to poll from model repository: {problem}",
            ErrorCode.INTERNAL,
        )
