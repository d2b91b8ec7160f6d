"""Which address each listener of `meshserve up` binds. Pure: unit-tested without starting anything.

`--host` says where callers reach the mesh, so it moves the gateway's client ports (gRPC and REST) and nothing
else. Everything else answers the gateway or an operator on this machine and stays on loopback:
- the feature, cache, inference and monitor services: without TLS they are plaintext and unauthenticated (a
  feature load writes the store; the inference port reaches Triton around the gateway's auth and admission; the
  monitor takes labels and hands out the prediction log, features included);
- every /metrics: even with TLS they ask no client certificate;
- the admin API, unless `admin_host` moves it (it changes routes: keep it off public networks);
- Triton (services.inference.tritonserver.BIND_ADDRESS, not planned here): its mTLS checks only that a
  certificate comes from the mesh's CA, and `up --tls` hands `client.pem` to callers.

With `--tls` the mesh gives the feature, cache, inference and monitor services mTLS and a peer check (only the
certificates that must call each one, mesh.ALLOWED_PEERS), so they follow `--host`: another host's gateway can
then use them, and nobody else can.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["LOOPBACK", "ListenHosts", "is_loopback", "plan_listen_hosts"]

LOOPBACK = "127.0.0.1"
WILDCARD = "0.0.0.0"


def is_loopback(host: str) -> bool:
    """Whether `host` is an address (or the name) of this machine's loopback interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ListenHosts:
    gateway: str  # the gateway's gRPC and REST ports: where callers come from
    admin: str  # the gateway's admin API
    services: str  # the feature, cache, inference and monitor services
    metrics: str  # every process's /metrics

    def probe_host(self) -> str:
        """Where to look for free ports: the one host when all listen there, else the wildcard, since a port
        free there is free on every address."""
        hosts = {self.gateway, self.admin, self.services, self.metrics}
        return self.gateway if len(hosts) == 1 else WILDCARD


def plan_listen_hosts(host: str, admin_host: str | None = None, peer_checked: bool = False) -> ListenHosts:
    """`host` for the gateway's client ports; loopback for the rest (`host` itself when it is a loopback address),
    except the admin API at `admin_host` when given, and the services at `host` when `peer_checked` (each of them
    runs with mTLS and a peer check)."""
    private = host if is_loopback(host) else LOOPBACK
    return ListenHosts(
        gateway=host,
        admin=admin_host or private,
        services=host if peer_checked else private,
        metrics=private,
    )
