"""`meshserve up --host 0.0.0.0` (the README's way to move the gateway) binds only the gateway's client ports
beyond loopback: the feature, cache and inference services, Triton, the admin API and every /metrics stay on
127.0.0.1. The `up` table, endpoints.json and `meshserve status` report where each process really listens.
Proved from the listening sockets the mesh's processes hold (/proc/net/tcp{,6}); nothing connects beyond
loopback."""

from __future__ import annotations

import ipaddress
import json
import re

from meshserve.core.process import listeners, socket_inodes
from meshserve.launcher.endpoints_file import read_endpoints
from tests.e2e.meshserve_up import meshserve_up
from tests.e2e.test_status import cli_env, run_cli
from tests.helpers import descendants

ADDRESS = re.compile(r"(\d+\.\d+\.\d+\.\d+):(\d+)")


def canonical(address: str) -> str:
    """As a reported address says it: gRPC binds IPv6 sockets, dual-stack `::` for 0.0.0.0 (every interface)
    and `::ffff:127.0.0.1` for 127.0.0.1."""
    ip = ipaddress.ip_address(address)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return "0.0.0.0" if address == "::" else address


def held_listeners(pids: set[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket listening that one of `pids` holds, addresses canonical."""
    every = listeners()
    assert every is not None, "/proc/net/tcp is needed to see what listens"
    inodes = set().union(*(socket_inodes(pid) for pid in pids))
    return {(canonical(every[inode][0]), every[inode][1]) for inode in inodes if inode in every}


def loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


def reported(text: str) -> set[tuple[str, int]]:
    """Every host:port a text names (IPv4, as `up` and `status` print them)."""
    return {(host, int(port)) for host, port in ADDRESS.findall(text)}


def addresses_of(endpoints_json: dict) -> set[tuple[str, int]]:
    """Every address endpoints.json gives, its metrics URLs included."""
    return reported(json.dumps(endpoints_json))


async def test_up_on_all_interfaces_exposes_only_the_gateways_client_ports_and_reports_real_addresses(
    tmp_path,
):
    run_dir, printed = tmp_path / "run", []
    async with meshserve_up(run_dir, env={"COLUMNS": "200"}, args=("--host", "0.0.0.0"), output=printed) as (
        process,
        port,
    ):
        mesh = read_endpoints(run_dir)
        assert mesh is not None
        rest = int(mesh.gateway_http.rsplit(":", 1)[1])
        real = held_listeners(descendants(process.pid) | {process.pid})
        real_ports = {number for _, number in real}

        # beyond loopback: the gateway's gRPC and REST ports, nothing else (admin, metrics, services, Triton)
        assert {number for address, number in real if not loopback(address)} == {port, rest}
        assert {(a, n) for a, n in real if n in (port, rest)} == {("0.0.0.0", port), ("0.0.0.0", rest)}

        # what endpoints.json, the `up` table and `meshserve status` say is where each process listens
        published = json.loads((run_dir / "endpoints.json").read_text())
        in_file = addresses_of(published)
        in_table = reported("".join(printed))
        code, out, err = await run_cli("status", "-o", "json", env=cli_env(run_dir))
        assert code == 0, err
        status = json.loads(out)
        assert {p["name"]: p["health"] for p in status["processes"]} == dict.fromkeys(
            ("triton", "feature", "cache", "inference", "monitor", "gateway"), "SERVING"
        )
        in_status = reported(json.dumps({"processes": status["processes"], "endpoints": status["endpoints"]}))
        for source, addresses in (("endpoints.json", in_file), ("up", in_table), ("status", in_status)):
            assert addresses, source
            for host, number in addresses:
                assert number in real_ports, (
                    f"{source} names {host}:{number}, where nothing of the mesh listens"
                )
                assert {a for a, n in real if n == number} == {host}, f"{source}: {host}:{number}"
        assert in_table == in_file  # the table shows every address the file gives
        assert ("0.0.0.0", port) in in_file and ("0.0.0.0", rest) in in_file
        assert mesh.admin.startswith("127.0.0.1:") and mesh.triton_grpc.startswith("127.0.0.1:")
