"""Where `meshserve up` puts each listener: `--host` moves the gateway's client ports only; the rest stays on
loopback unless the mesh runs with mTLS and peer checks; and what it reports is where each process listens."""

from __future__ import annotations

import json
import os

import pytest

from meshserve.launcher.listen_hosts import ListenHosts, is_loopback, plan_listen_hosts
from meshserve.launcher.mesh import LocalMesh, MeshSettings


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch):
    for name in list(os.environ):
        if name.startswith("MESHSERVE_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True), ("0.0.0.0", False),
     ("::", False), ("192.0.2.7", False), ("example.org", False)],
)  # fmt: skip
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def test_a_public_host_moves_the_gateways_client_ports_only():
    assert plan_listen_hosts("0.0.0.0") == ListenHosts(
        gateway="0.0.0.0", admin="127.0.0.1", services="127.0.0.1", metrics="127.0.0.1"
    )
    assert plan_listen_hosts("192.0.2.7") == ListenHosts(
        gateway="192.0.2.7", admin="127.0.0.1", services="127.0.0.1", metrics="127.0.0.1"
    )


def test_a_loopback_host_keeps_everything_there():
    assert plan_listen_hosts("127.0.0.1") == ListenHosts(*["127.0.0.1"] * 4)
    assert plan_listen_hosts("::1", peer_checked=True) == ListenHosts(*["::1"] * 4)


def test_with_peer_checks_the_services_follow_the_host_but_metrics_and_admin_stay():
    assert plan_listen_hosts("0.0.0.0", peer_checked=True) == ListenHosts(
        gateway="0.0.0.0", admin="127.0.0.1", services="0.0.0.0", metrics="127.0.0.1"
    )


def test_the_admin_api_moves_only_when_asked():
    assert plan_listen_hosts("0.0.0.0", admin_host="0.0.0.0").admin == "0.0.0.0"
    assert plan_listen_hosts("127.0.0.1", admin_host="192.0.2.7").admin == "192.0.2.7"


def test_free_ports_are_looked_for_where_every_listener_can_bind_them():
    assert plan_listen_hosts("127.0.0.1").probe_host() == "127.0.0.1"
    assert plan_listen_hosts("::1").probe_host() == "::1"
    assert plan_listen_hosts("192.0.2.7").probe_host() == "0.0.0.0"  # also covers 127.0.0.1
    assert plan_listen_hosts("0.0.0.0").probe_host() == "0.0.0.0"


def planned(monkeypatch, tmp_path, **settings) -> tuple[LocalMesh, list[str]]:
    """The mesh planned (nothing starts), with the host free ports were looked for."""
    ports, probed = iter(range(42000, 42100)), []

    def free_ports(n, host, avoid=()):
        probed.append(host)
        return [next(ports) for _ in range(n)]

    monkeypatch.setattr("meshserve.launcher.mesh.free_ports", free_ports)
    mesh = LocalMesh(
        MeshSettings(gateway_port=0, admin_port=0, gateway_http_port=0, run_dir=tmp_path / "run", **settings)
    )
    mesh.plan()
    return mesh, probed


def hosts_given(mesh: LocalMesh) -> dict[str, dict[str, str]]:
    """The listen addresses each child's environment gives it: {child: {setting: value}}."""
    given = {}
    for name, child in mesh.children.items():
        if name == "triton":
            continue
        prefix = f"MESHSERVE_{'GATEWAY' if name.startswith('gateway') else name.upper()}_"
        given[name] = {
            key[len(prefix) :].lower(): value
            for key, value in child.env.items()
            if key.startswith(prefix) and key.endswith("_HOST")
        }
    return given


def triton_addresses(mesh: LocalMesh) -> set[str]:
    argv = mesh.children["triton"].argv
    return {a.split("=", 1)[1] for a in argv if a.split("=", 1)[0].endswith("-address")}


def reported_hosts(mesh: LocalMesh) -> dict[str, str]:
    ep = mesh.endpoints
    grpc = {k: getattr(ep, k).rsplit(":", 1)[0] for k in ("gateway", "gateway_http", "admin", "feature", "cache",
                                                          "inference", "monitor", "triton_grpc")}  # fmt: skip
    urls = {"gateway_metrics": ep.gateway_metrics, "triton_metrics": ep.triton_metrics,
            **{f"{n}_metrics": u for n, u in ep.service_metrics.items()}}  # fmt: skip
    return grpc | {k: u.split("//", 1)[1].rsplit(":", 1)[0] for k, u in urls.items()}


def test_up_on_all_interfaces_gives_and_reports_loopback_for_all_but_the_gateway(monkeypatch, tmp_path):
    mesh, probed = planned(monkeypatch, tmp_path, host="0.0.0.0", gateways=2)
    private = {"host": "127.0.0.1", "metrics_host": "127.0.0.1"}
    gateway = {"host": "0.0.0.0", "admin_host": "127.0.0.1", "metrics_host": "127.0.0.1"}
    assert hosts_given(mesh) == {"feature": private, "cache": private, "inference": private, "monitor": private,
                                 "gateway": gateway, "gateway-2": gateway}  # fmt: skip
    assert triton_addresses(mesh) == {"127.0.0.1"}
    hosts = reported_hosts(mesh)
    assert {k for k, host in hosts.items() if host != "127.0.0.1"} == {"gateway", "gateway_http"}
    assert hosts["gateway"] == "0.0.0.0" and hosts["gateway_http"] == "0.0.0.0"
    # the gateway dials its dependencies where they listen
    env = mesh.children["gateway"].env
    for name in ("feature", "cache", "inference", "monitor"):
        assert env[f"MESHSERVE_GATEWAY_{name.upper()}_URL"] == getattr(mesh.endpoints, name)
        assert mesh.children["gateway-2"].env[f"MESHSERVE_GATEWAY_{name.upper()}_URL"] == getattr(
            mesh.endpoints, name
        )
    assert mesh.children["inference"].env["MESHSERVE_INFERENCE_TRITON_URL"] == mesh.endpoints.triton_grpc
    assert probed == ["0.0.0.0"]


def test_up_with_tls_lets_the_peer_checked_services_follow_the_host(monkeypatch, tmp_path):
    mesh, _ = planned(monkeypatch, tmp_path, host="0.0.0.0", tls=True)
    given = hosts_given(mesh)
    for name in ("feature", "cache", "inference", "monitor"):
        assert given[name] == {"host": "0.0.0.0", "metrics_host": "127.0.0.1"}
        env = mesh.children[name].env
        assert env[f"MESHSERVE_{name.upper()}_TLS_CLIENT_AUTH"] == "true"
        assert json.loads(env[f"MESHSERVE_{name.upper()}_TLS_ALLOWED_PEERS"])  # a peer check, never empty
    assert given["gateway"] == {"host": "0.0.0.0", "admin_host": "127.0.0.1", "metrics_host": "127.0.0.1"}
    assert triton_addresses(mesh) == {"127.0.0.1"}
    hosts = reported_hosts(mesh)
    assert {k for k, host in hosts.items() if host != "127.0.0.1"} == {
        "gateway", "gateway_http", "feature", "cache", "inference", "monitor"
    }  # fmt: skip


def test_the_default_mesh_listens_and_reports_loopback_only(monkeypatch, tmp_path):
    mesh, probed = planned(monkeypatch, tmp_path)
    assert set(reported_hosts(mesh).values()) == {"127.0.0.1"}
    assert {v for given in hosts_given(mesh).values() for v in given.values()} == {"127.0.0.1"}
    assert probed == ["127.0.0.1"]


def test_the_admin_api_follows_its_own_setting(monkeypatch, tmp_path):
    mesh, _ = planned(monkeypatch, tmp_path, host="0.0.0.0", admin_host="0.0.0.0")
    assert hosts_given(mesh)["gateway"]["admin_host"] == "0.0.0.0"
    assert mesh.endpoints.admin.startswith("0.0.0.0:")
