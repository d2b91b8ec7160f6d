"""TLS and mTLS on real servers with real certificates (`meshserve certs` in tmp dirs): a cache service of the
test's own for the handshake rules, and one whole local mesh with `tls=True` for every hop."""

from __future__ import annotations

import asyncio
import http.client
import shutil
import socket
import ssl
from pathlib import Path

import grpc
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc as triton_grpc
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshserve.cache.v1 import cache_pb2, cache_pb2_grpc
from meshserve.core.channels import open_channel, wait_until_serving
from meshserve.core.tls import ClientTls
from meshserve.feature.v1 import feature_pb2, feature_pb2_grpc
from meshserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from meshserve.launcher.certs import issue_certificates
from meshserve.launcher.mesh import REPO_ROOT, LocalMesh, MeshSettings
from services.cache.service import CacheService
from services.cache.settings import CacheSettings
from tests.helpers import running_redis, scrape

ROWS = np.array([[250.0, 3, 80.0, 2, 400], [4800.0, 7, 35.0, 19, 3]], dtype=np.float32)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    issue_certificates(directory, ["cache", "gateway", "feature", "admin"])
    return directory


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> Path:
    """Another CA's certificates, with the very same names."""
    directory = tmp_path_factory.mktemp("foreign")
    issue_certificates(directory, ["gateway", "cache"])
    return directory


@pytest_asyncio.fixture(scope="module")
async def cache(certs) -> str:
    """A cache service (in-memory store: no dependencies) serving mTLS, callable by `gateway` and `admin`."""
    service = CacheService(
        CacheSettings(
            port=0,
            tls_cert_file=certs / "cache.pem",
            tls_key_file=certs / "cache-key.pem",
            tls_ca_file=certs / "ca.pem",
            tls_client_auth=True,
            tls_allowed_peers=["gateway", "admin"],
        )
    )
    port = await service.start()
    target = f"127.0.0.1:{port}"
    async with open_channel(target, tls=ClientTls.from_dir(certs, "admin"), server_name="cache") as channel:
        await wait_until_serving(channel, timeout_s=10)
    yield target
    await service.stop(0)


async def _stats(
    target: str, tls: ClientTls | None, server_name: str | None = "cache"
) -> cache_pb2.StatsResponse:
    async with open_channel(target, tls=tls, server_name=server_name) as channel:
        return await cache_pb2_grpc.CacheServiceStub(channel).Stats(cache_pb2.StatsRequest(), timeout=5)


async def test_a_client_with_the_ca_and_an_allowed_certificate_is_answered(cache, certs):
    reply = await _stats(cache, ClientTls.from_dir(certs, "gateway"))
    assert reply.backend == "memory"


async def test_plaintext_to_a_tls_port_fails(cache):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _stats(cache, None)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_a_client_certificate_from_a_foreign_ca_is_refused(cache, certs, foreign):
    # it trusts our CA (so it would accept the server), but presents a certificate another CA signed
    tls = ClientTls(certs / "ca.pem", foreign / "gateway.pem", foreign / "gateway-key.pem")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _stats(cache, tls)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_a_client_without_a_certificate_is_refused(cache, certs):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _stats(cache, ClientTls(certs / "ca.pem"))
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_a_peer_whose_identity_is_not_allowed_gets_permission_denied(cache, certs):
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await _stats(cache, ClientTls.from_dir(certs, "feature"))
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert denied.value.details() == "peer 'feature' may not call cache"
    # health is answered all the same (probes), and an allowed peer still gets through
    async with open_channel(cache, tls=ClientTls.from_dir(certs, "feature"), server_name="cache") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert (await _stats(cache, ClientTls.from_dir(certs, "admin"))).backend == "memory"


async def test_the_client_refuses_a_server_whose_certificate_names_another_process(cache, certs):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _stats(cache, ClientTls.from_dir(certs, "gateway"), server_name="feature")
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_the_client_refuses_a_server_from_a_foreign_ca(cache, foreign):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _stats(cache, ClientTls.from_dir(foreign, "gateway"))
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


def _served_serial(target: str, tls: ClientTls) -> int:
    """The serial number of the certificate a new connection to `target` is handed."""
    context = ssl.create_default_context(cafile=str(tls.ca_file))
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    context.set_alpn_protocols(["h2"])
    host, port = target.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="cache") as conn:
            der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_a_certificate_rotated_on_disk_is_served_to_the_next_connection_without_restart(tmp_path):
    issue_certificates(tmp_path, ["cache", "gateway"])
    service = CacheService(
        CacheSettings(
            port=0,
            tls_cert_file=tmp_path / "cache.pem",
            tls_key_file=tmp_path / "cache-key.pem",
            tls_ca_file=tmp_path / "ca.pem",
            tls_client_auth=True,
        )
    )
    target = f"127.0.0.1:{await service.start()}"
    client = ClientTls.from_dir(tmp_path, "gateway")
    try:
        before = await asyncio.to_thread(_served_serial, target, client)
        assert before == x509.load_pem_x509_certificate((tmp_path / "cache.pem").read_bytes()).serial_number
        # rotate: a new certificate from the same CA, written where the old one was
        staging = tmp_path / "next"
        staging.mkdir()
        for name in ("ca.pem", "ca-key.pem"):
            shutil.copy(tmp_path / name, staging / name)
        issue_certificates(staging, ["cache"])
        shutil.copy(staging / "cache-key.pem", tmp_path / "cache-key.pem")
        shutil.copy(staging / "cache.pem", tmp_path / "cache.pem")
        rotated = x509.load_pem_x509_certificate((tmp_path / "cache.pem").read_bytes()).serial_number
        assert rotated != before
        assert await asyncio.to_thread(_served_serial, target, client) == rotated
        assert (await _stats(target, client)).backend == "memory"  # and gRPC clients verify it
    finally:
        await service.stop(0)


# -- a whole mesh with tls=True ---------------------------------------------------------------------------------
@pytest_asyncio.fixture(scope="module")
async def tls_mesh(tmp_path_factory) -> LocalMesh:
    settings = MeshSettings(
        gateway_port=0,
        admin_port=0,
        gateway_http_port=0,
        model_repositories=[REPO_ROOT / "model_repository"],
        run_dir=tmp_path_factory.mktemp("tls-mesh"),
        grace_s=2.0,
        shutdown_settle_s=0.1,
        tls=True,
    )
    mesh = LocalMesh(settings)
    await mesh.start()
    yield mesh
    await mesh.stop()
    assert {name: c.process.returncode for name, c in mesh.children.items()} == dict.fromkeys(
        mesh.children, 0
    )


def _infer_input() -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("features", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS)
    return tensor


def _triton_client(target: str, certs: Path, name: str = "client") -> triton_grpc.InferenceServerClient:
    return triton_grpc.InferenceServerClient(
        target,
        ssl=True,
        root_certificates=str(certs / "ca.pem"),
        private_key=str(certs / f"{name}-key.pem"),
        certificate_chain=str(certs / f"{name}.pem"),
    )


async def test_the_mesh_scores_model_infer_through_the_gateway_over_mtls(tls_mesh):
    certs = tls_mesh.settings.certs_dir
    assert {p.name for p in certs.glob("*.pem")} >= {"ca.pem", "gateway.pem", "triton.pem", "client-key.pem"}
    reply = _triton_client(tls_mesh.endpoints.gateway, certs).infer("fraud", [_infer_input()])
    version = reply.get_response().model_version  # the route's variant that served
    direct = _triton_client(tls_mesh.endpoints.triton_grpc, certs, "inference")  # Triton's own mTLS port
    expected = direct.infer("fraud", [_infer_input()], model_version=version).as_numpy("score")[:, 0]
    through_gateway = reply.as_numpy("score")[:, 0]
    np.testing.assert_allclose(through_gateway, expected, rtol=1e-6)


async def test_predict_crosses_every_hop_over_tls(tls_mesh):
    request = gateway_pb2.PredictRequest(
        route="fraud",
        instances=[
            gateway_pb2.Instance(
                entity_key="acct-00042",
                features={"amount": feature_pb2.Value(double_value=250), "merchant_category": feature_pb2.Value(int64_value=3)},
            )
        ],
    )  # fmt: skip
    async with open_channel(
        tls_mesh.endpoints.gateway, tls=tls_mesh.client_tls("client"), server_name="gateway"
    ) as ch:
        reply = await gateway_pb2_grpc.PredictionServiceStub(ch).Predict(request, timeout=10)
    assert len(reply.predictions) == 1 and 0 <= reply.predictions[0].score <= 1


async def test_internal_hops_refuse_plaintext_and_unlisted_peers(tls_mesh):
    ep = tls_mesh.endpoints
    for target in (ep.feature, ep.cache, ep.inference, ep.gateway, ep.admin):
        async with open_channel(target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE, target
    with pytest.raises(triton_grpc.InferenceServerException):
        triton_grpc.InferenceServerClient(ep.triton_grpc).is_server_ready(client_timeout=5)
    assert "--allow-http=false" in tls_mesh.children["triton"].argv  # Triton's HTTP API has no TLS: it is off
    assert "nv_inference_count" in "".join(scrape(ep.triton_metrics))  # its metrics are still there
    # the `client` certificate is good at the gateway, not at the services behind it
    async with open_channel(ep.feature, tls=tls_mesh.client_tls("client"), server_name="feature") as channel:
        request = feature_pb2.GetOnlineFeaturesRequest(entity="account", entity_keys=["acct-00042"])
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await feature_pb2_grpc.FeatureServiceStub(channel).GetOnlineFeatures(request, timeout=5)
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert denied.value.details() == "peer 'client' may not call feature"


def _https_get(address: str, path: str, tls: ClientTls | None) -> int:
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(tls.ca_file)) if tls else ssl.create_default_context()
    if tls and tls.cert_file:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=5)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


async def test_the_rest_port_serves_https_and_requires_a_client_certificate(tls_mesh):
    address, certs = tls_mesh.endpoints.gateway_http, tls_mesh.settings.certs_dir
    assert (
        await asyncio.to_thread(_https_get, address, "/v2/health/ready", tls_mesh.client_tls("client")) == 200
    )
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        await asyncio.to_thread(_https_get, address, "/v2/health/ready", ClientTls(certs / "ca.pem"))


async def test_every_metrics_port_of_ours_serves_https_only(tls_mesh):
    ca_only = ClientTls(
        tls_mesh.settings.certs_dir / "ca.pem"
    )  # read-only data: the CA is all a scraper needs
    urls = [tls_mesh.endpoints.gateway_metrics, *tls_mesh.endpoints.service_metrics.values()]
    for url in urls:
        assert url.startswith("https://"), url
        address = url.removeprefix("https://").removesuffix("/metrics")
        assert await asyncio.to_thread(_https_get, address, "/metrics", ca_only) == 200, url
        with pytest.raises((ConnectionError, OSError, http.client.HTTPException)):
            plain = http.client.HTTPConnection(*address.rsplit(":", 1), timeout=5)
            try:
                plain.request("GET", "/metrics")
                plain.getresponse().read()
            finally:
                plain.close()


# -- Redis over TLS ---------------------------------------------------------------------------------------------
@pytest_asyncio.fixture(scope="module")
async def tls_redis(tmp_path_factory, certs) -> str:
    """Debian's redis-server on a TLS-only port, requiring client certificates from our CA."""
    from meshserve.core.process import free_port
    from meshserve.core.tls import redis_options

    issue_certificates(certs, ["redis"])
    port = free_port()
    args = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(certs / "redis.pem"),
            "--tls-key-file", str(certs / "redis-key.pem"), "--tls-ca-cert-file", str(certs / "ca.pem"),
            "--tls-auth-clients", "yes"]  # fmt: skip
    url = f"rediss://127.0.0.1:{port}/0"
    options = redis_options(url, ClientTls.from_dir(certs, "admin"))
    async with running_redis(tmp_path_factory.mktemp("redis-tls"), args, url, options) as url:
        yield url


async def test_the_cache_service_uses_redis_over_mtls(tls_redis, certs):
    settings = CacheSettings(
        port=0,
        redis_url=tls_redis,
        tls_cert_file=certs / "cache.pem",
        tls_key_file=certs / "cache-key.pem",
        tls_ca_file=certs / "ca.pem",
    )
    service = CacheService(settings)
    target = f"127.0.0.1:{await service.start()}"
    try:
        tls = ClientTls(certs / "ca.pem")  # this cache serves TLS without asking for a client certificate
        async with open_channel(target, tls=tls, server_name="cache") as channel:
            await wait_until_serving(channel, timeout_s=10)  # NOT_SERVING until Redis answered over TLS
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            entry = cache_pb2.Entry(key="k", scopes=["s"], value=b"v")
            await stub.Set(cache_pb2.SetRequest(entries=[entry], ttl_ms=60_000), timeout=5)
            lookup = cache_pb2.Lookup(key="k", scopes=["s"])
            reply = await stub.Get(cache_pb2.GetRequest(lookups=[lookup]), timeout=5)
        assert [(e.key, e.value) for e in reply.hits] == [("k", b"v")]
        assert (await _stats(target, tls)).backend == "redis"
    finally:
        await service.stop(0)


async def test_redis_refuses_a_client_without_our_certificate(tls_redis, foreign):
    import redis.asyncio as aioredis

    from meshserve.core.tls import redis_options

    plain = aioredis.Redis.from_url(tls_redis.replace("rediss://", "redis://"), socket_timeout=2)
    foreign_tls = ClientTls(foreign / "ca.pem", foreign / "cache.pem", foreign / "cache-key.pem")
    strangers = aioredis.Redis.from_url(tls_redis, socket_timeout=2, **redis_options(tls_redis, foreign_tls))
    for client in (plain, strangers):
        with pytest.raises((aioredis.ConnectionError, aioredis.TimeoutError, OSError)):
            await client.ping()
        await client.aclose()


async def test_the_cli_reaches_a_tls_mesh_with_the_run_directorys_certificates(tls_mesh):
    import os
    import sys

    cli = Path(sys.executable).parent / "meshserve"
    env = {**os.environ, "MESHSERVE_RUN_DIR": str(tls_mesh.settings.run_dir)}
    argv = [str(cli), "predict", "fraud", "acct-00042", "amount=250", "merchant_category=3"]
    argv += ["--target", tls_mesh.endpoints.gateway]
    for extra, ok in (([], False), (["--tls"], True)):
        process = await asyncio.create_subprocess_exec(
            *argv, *extra, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output = (await asyncio.wait_for(process.communicate(), 60))[0].decode()
        assert (process.returncode == 0) is ok, output
        assert ("acct-00042" in output) is ok, output


async def test_a_rest_certificate_rotated_on_disk_is_served_to_the_next_connection(tmp_path):
    """The REST port's context (meshserve.core.tls.server_ssl_context) on a real asyncio TLS server."""
    from meshserve.core.settings import ServiceSettings
    from meshserve.core.tls import server_ssl_context

    issue_certificates(tmp_path, ["gateway", "client"])
    settings = ServiceSettings(
        tls_cert_file=tmp_path / "gateway.pem",
        tls_key_file=tmp_path / "gateway-key.pem",
        tls_ca_file=tmp_path / "ca.pem",
        tls_client_auth=True,
    )

    async def answer(reader, writer):
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_ssl_context(settings))
    port = server.sockets[0].getsockname()[1]
    client = ClientTls.from_dir(tmp_path, "client")

    async def served_serial() -> int:
        context = ssl.create_default_context(cafile=str(client.ca_file))
        context.load_cert_chain(str(client.cert_file), str(client.key_file))
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="gateway")
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return x509.load_der_x509_certificate(der).serial_number

    try:
        before = await served_serial()
        for name in ("gateway.pem", "gateway-key.pem"):
            (tmp_path / name).unlink()
        issue_certificates(tmp_path, ["gateway"])  # same CA, new certificate
        rotated = x509.load_pem_x509_certificate((tmp_path / "gateway.pem").read_bytes()).serial_number
        assert rotated != before and await served_serial() == rotated
    finally:
        server.close()
        await server.wait_closed()


async def test_the_control_store_speaks_mtls_to_redis(tls_redis, certs):
    from gateway.control.plane import ControlStoreUnavailable, open_store

    store = open_store(tls_redis, ClientTls.from_dir(certs, "gateway"))
    try:
        revision = await store.write(await store.revision(), {"table": {"routes": {}}}, [{"action": "tls"}])
        assert (await store.read()).revision == revision
    finally:
        await store.close()
    no_certificate = open_store(tls_redis, ClientTls(certs / "ca.pem"))  # Redis asks for a client certificate
    try:
        with pytest.raises(ControlStoreUnavailable):
            await no_certificate.revision()
    finally:
        await no_certificate.close()
