"""A container healthcheck: ask a process's grpc.health.v1 once, exit 0 if it is SERVING and 1 otherwise.

    python -m meshserve.core.healthcheck 127.0.0.1:50051 [--service NAME] [--timeout 2]
        [--ca CA.pem [--cert ME.pem --key ME-key.pem]]

docker-compose.yml runs it inside each service's container. It prints the status (or why there is none) on one
line, which Docker keeps with the health state (`docker inspect`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["check", "main"]

SERVING = health_pb2.HealthCheckResponse.SERVING


def check(
    target: str, service: str = "", timeout_s: float = 2.0, tls: grpc.ChannelCredentials | None = None
) -> tuple[bool, str]:
    """One Check call to `target` (host:port); returns (serving, what was seen)."""
    # The target is the process's own port: never route it through an HTTP proxy from the environment.
    options = [("grpc.enable_http_proxy", 0)]
    channel = grpc.secure_channel(target, tls, options) if tls else grpc.insecure_channel(target, options)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            return False, f"{exc.code().name}: {exc.details()}"
    return reply.status == SERVING, health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def _tls(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """With --ca, TLS (the CA the server's certificate chains to); with --cert/--key too, mTLS: a process
    checks itself with its own certificate, the one identity its port always admits."""
    if args.ca is None:
        return None
    key, cert = (Path(args.key).read_bytes(), Path(args.cert).read_bytes()) if args.cert else (None, None)
    return grpc.ssl_channel_credentials(Path(args.ca).read_bytes(), key, cert)


def _target(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return value


def _seconds(value: str) -> float:
    seconds = float(value)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return seconds


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # Docker reserves exit status 2 (argparse's usual one); a misconfigured check is simply unhealthy.
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m meshserve.core.healthcheck",
        description="Exit 0 if the gRPC server at HOST:PORT reports SERVING, 1 otherwise.",
    )
    parser.add_argument("target", type=_target, metavar="HOST:PORT")
    parser.add_argument("--service", default="", help="service name to ask about; default: the whole server")
    parser.add_argument("--timeout", type=_seconds, default=2.0, help="seconds to wait for the answer")
    parser.add_argument("--ca", help="speak TLS, verifying the server against this CA (PEM)")
    parser.add_argument("--cert", help="with --key: present this certificate (mTLS)")
    parser.add_argument("--key", help="the private key of --cert")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if (args.cert is None) != (args.key is None) or (args.cert and not args.ca):
        return _parser().exit(1, "--cert and --key go together, and with --ca\n")
    serving, seen = check(args.target, args.service, args.timeout, _tls(args))
    print(f"{args.target}: {seen}")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
