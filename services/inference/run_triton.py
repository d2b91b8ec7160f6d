"""Run the tritonserver bundled in the nvidia-pytriton wheel as a container's main process.

    python -m services.inference.run_triton --model-repository /models -- --strict-readiness=true ...

The same backend directory, library path and PATH as `meshserve up` (services/inference/tritonserver.py), but
listening on every interface of the container (its only client, the inference service, is in another one) and
exec'd rather than supervised: Triton becomes the process Docker signals and watches. Everything after `--` goes
to tritonserver unchanged, and overrides a default of the same flag.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from services.inference.tritonserver import prepare_backend_dir, triton_command

__all__ = ["main"]

# Triton's own default ports, which the compose file's healthcheck and URLs assume.
GRPC_PORT, HTTP_PORT, METRICS_PORT = 8001, 8000, 8002


def parse_args(args: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    args = list(args)
    split = args.index("--") if "--" in args else len(args)
    parser = argparse.ArgumentParser(prog="python -m services.inference.run_triton", description=__doc__)
    parser.add_argument("--model-repository", type=Path, action="append", required=True)
    parser.add_argument("--address", default="0.0.0.0", help="where gRPC, HTTP and metrics listen")
    parser.add_argument(
        "--backend-cache",
        type=Path,
        default=Path("/tmp/meshserve-triton"),
        help="where the python backend directory is assembled (a writable path)",
    )
    return parser.parse_args(args[:split]), args[split + 1 :]


def main(args: Sequence[str] | None = None) -> None:
    options, extra = parse_args(sys.argv[1:] if args is None else args)
    missing = [str(repo) for repo in options.model_repository if not repo.is_dir()]
    if missing:
        sys.exit(f"run_triton: no model repository at {', '.join(missing)}")
    try:
        backend_dir = prepare_backend_dir(options.backend_cache)
    except (FileNotFoundError, OSError) as error:
        sys.exit(f"run_triton: {error}")
    addresses = [f"--{kind}-address={options.address}" for kind in ("grpc", "http", "metrics")]
    argv, env = triton_command(
        options.model_repository,
        GRPC_PORT,
        HTTP_PORT,
        METRICS_PORT,
        backend_dir,
        extra_args=[*addresses, *extra],
    )
    os.execve(argv[0], argv, {**os.environ, **env})


if __name__ == "__main__":
    main()
