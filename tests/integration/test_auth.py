"""Callers and permissions on a real gateway process (its own ports, in front of the session mesh's services) that
requires authentication: API keys (one revoked), JWTs signed by a test identity provider (a JWKS file), the admin
token; route rules, model control and the admin API needing role admin, denials audited, and no secret in any log.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from meshserve.admin.v1 import admin_pb2, admin_pb2_grpc
from meshserve.core.auth import ApiKeyStore, ensure_admin_token
from meshserve.core.channels import wait_until_serving
from meshserve.core.process import ChildProcess, free_ports
from meshserve.feature.v1 import feature_pb2
from meshserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tests.helpers import feature_vector, gateway_env, score_directly
from tests.unit.test_auth import AUDIENCE, ISSUER, SigningKey

ROUTES = """
default_auth: {roles: [scorer]}  # the models served under their own name
routes:
  fraud:
    timeout_ms: 5000
    cache: {enabled: false}
    auth: {roles: [scorer]}
    variants:
      - {name: stable, model: fraud, version: "1", weight: 100}
  open-fraud:
    timeout_ms: 5000
    cache: {enabled: false}
    variants:
      - {name: stable, model: fraud, version: "1", weight: 100}
"""
ROW = feature_vector("acct-00011", amount=90.0, merchant_category=4)


@dataclass
class Secured:
    grpc: str
    http: str
    admin: str
    keys: dict[str, str]  # name -> API key
    idp: SigningKey
    admin_token: str
    log: Path
    audit: Path

    def jwt(self, sub: str = "jwt-svc", roles: list[str] | None = None, **claims) -> str:
        return self.idp.token(sub, roles if roles is not None else ["scorer"], **claims)

    def secrets(self) -> list[str]:
        return [*self.keys.values(), self.admin_token, *ISSUED]


ISSUED: list[str] = []  # every JWT a test sent, for the log check at the end


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest_asyncio.fixture(scope="module")
async def secured(mesh, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth-gateway")
    (tmp / "routes.yaml").write_text(ROUTES)
    store = ApiKeyStore(tmp / "api-keys.json")
    keys = {"svc": store.create("svc", ["scorer"]), "alice": store.create("alice", ["analyst"]),
            "old": store.create("old", ["scorer"]), "ops": store.create("ops", ["admin"])}  # fmt: skip
    store.revoke("old")
    idp = SigningKey("ec")
    admin_token = ensure_admin_token(tmp / "admin-token")
    port, admin_port, http_port = free_ports(3)
    env = gateway_env(
        mesh, port, tmp, MESHSERVE_GATEWAY_ROUTES_PATH=str(tmp / "routes.yaml"),
        MESHSERVE_GATEWAY_ADMIN_PORT=str(admin_port), MESHSERVE_GATEWAY_HTTP_PORT=str(http_port),
        MESHSERVE_GATEWAY_LOG_LEVEL="DEBUG",  # access logs too: they must not carry a credential either
        MESHSERVE_GATEWAY_AUTH_REQUIRED="true", MESHSERVE_GATEWAY_AUTH_API_KEYS_FILE=str(store.path),
        MESHSERVE_GATEWAY_AUTH_JWKS=str(idp.write_jwks(tmp / "jwks.json")),
        MESHSERVE_GATEWAY_AUTH_JWT_ISSUER=ISSUER, MESHSERVE_GATEWAY_AUTH_JWT_AUDIENCE=AUDIENCE,
        MESHSERVE_GATEWAY_ADMIN_TOKEN_FILE=str(tmp / "admin-token"),
    )  # fmt: skip
    gateway = ChildProcess("gateway", [sys.executable, "-m", "gateway"], env, tmp / "gateway.log")
    await gateway.start()
    try:
        for target in (f"127.0.0.1:{port}", f"127.0.0.1:{admin_port}"):
            async with grpc.aio.insecure_channel(target) as channel:
                await wait_until_serving(channel, timeout_s=60)  # health needs no credential
        yield Secured(f"127.0.0.1:{port}", f"127.0.0.1:{http_port}", f"127.0.0.1:{admin_port}", keys, idp,
                      admin_token, tmp / "gateway.log", tmp / "audit.jsonl")  # fmt: skip
    finally:
        await gateway.stop(5)


@pytest_asyncio.fixture(scope="module")
async def channels(secured):
    async with (
        grpc.aio.insecure_channel(secured.grpc) as channel,
        grpc.aio.insecure_channel(secured.admin) as admin_channel,
    ):
        yield (
            gateway_pb2_grpc.PredictionServiceStub(channel),
            service_pb2_grpc.GRPCInferenceServiceStub(channel),
            admin_pb2_grpc.AdminServiceStub(admin_channel),
        )


def predict_request(route: str = "fraud") -> gateway_pb2.PredictRequest:
    instance = gateway_pb2.Instance(
        entity_key="acct-00011",
        features={"amount": feature_pb2.Value(double_value=90.0),
                  "merchant_category": feature_pb2.Value(int64_value=4)},
    )  # fmt: skip
    return gateway_pb2.PredictRequest(route=route, instances=[instance])


def infer_request(model: str = "fraud") -> service_pb2.ModelInferRequest:
    return service_pb2.ModelInferRequest(
        model_name=model,
        inputs=[
            service_pb2.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[1, 5])
        ],
        raw_input_contents=[ROW.tobytes()],
    )


async def refused(call, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    assert exc.value.code() == code, exc.value.details()
    return exc.value.details()


async def test_a_caller_without_a_credential_is_unauthenticated_and_health_still_answers(channels):
    predict, oip, _ = channels
    details = await refused(predict.Predict(predict_request(), timeout=10), grpc.StatusCode.UNAUTHENTICATED)
    assert "no credential" in details
    await refused(oip.ModelInfer(infer_request(), timeout=10), grpc.StatusCode.UNAUTHENTICATED)
    await refused(oip.ModelInfer(infer_request("open-fraud"), timeout=10), grpc.StatusCode.UNAUTHENTICATED)
    assert (await oip.ServerLive(service_pb2.ServerLiveRequest(), timeout=5)).live


async def test_a_scorer_key_scores_and_revoked_or_unknown_keys_are_refused(secured, channels, mesh):
    predict, oip, _ = channels
    reply = await predict.Predict(predict_request(), metadata=bearer(secured.keys["svc"]), timeout=10)
    expected = score_directly(mesh.endpoints.triton_grpc, ROW)[0]
    assert reply.predictions[0].variant == "stable"
    assert reply.predictions[0].score == pytest.approx(expected, rel=1e-5)
    details = await refused(
        oip.ModelInfer(infer_request(), metadata=bearer(secured.keys["old"]), timeout=10),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert details == "API key 'old' was revoked"
    details = await refused(
        predict.Predict(predict_request(), metadata=bearer("msk_" + "A" * 43), timeout=10),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert details == "unknown API key"
    # after each refusal a valid request still succeeds
    assert (await oip.ModelInfer(infer_request(), metadata=bearer(secured.keys["svc"]), timeout=10)).outputs


async def test_a_valid_caller_without_the_routes_role_is_denied_naming_it(secured, channels):
    predict, oip, _ = channels
    alice = bearer(secured.keys["alice"])
    details = await refused(predict.Predict(predict_request(), metadata=alice, timeout=10),
                            grpc.StatusCode.PERMISSION_DENIED)  # fmt: skip
    assert details == "principal 'alice' lacks a role that may call route 'fraud' (one of: scorer)"
    # a route without `auth`: any authenticated caller; a model under its own name: the table's default_auth
    assert (await oip.ModelInfer(infer_request("open-fraud"), metadata=alice, timeout=10)).outputs
    details = await refused(
        oip.ModelMetadata(service_pb2.ModelMetadataRequest(name="slow"), metadata=alice, timeout=10),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert "route 'slow' (one of: scorer)" in details


async def test_a_jwt_from_the_identity_provider_scores_and_expired_or_foreign_ones_are_refused(
    secured, channels
):
    predict, _, _ = channels
    token = secured.jwt()
    ISSUED.append(token)
    reply = await predict.Predict(predict_request(), metadata=bearer(token), timeout=10)
    assert reply.predictions[0].variant == "stable"
    now = int(time.time())
    expired = secured.jwt(exp=now - 120, iat=now - 900, nbf=now - 900)
    elsewhere = secured.jwt(aud="another-service")
    ISSUED.extend([expired, elsewhere])
    details = await refused(predict.Predict(predict_request(), metadata=bearer(expired), timeout=10),
                            grpc.StatusCode.UNAUTHENTICATED)  # fmt: skip
    assert details == "JWT has expired"
    details = await refused(predict.Predict(predict_request(), metadata=bearer(elsewhere), timeout=10),
                            grpc.StatusCode.UNAUTHENTICATED)  # fmt: skip
    assert details == "JWT audience is not this service"


async def test_tritonclient_grpc_scores_with_a_bearer_header(secured):
    def infer():
        client = triton_grpc.InferenceServerClient(secured.grpc)
        tensor = triton_grpc.InferInput("features", list(ROW.shape), "FP32")
        tensor.set_data_from_numpy(ROW)
        with pytest.raises(InferenceServerException, match="no credential"):
            client.infer("fraud", [tensor])
        return client.infer("fraud", [tensor], headers={"authorization": f"Bearer {secured.keys['svc']}"})

    result = await asyncio.to_thread(infer)
    assert result.as_numpy("score").shape == (1, 1)


async def test_tritonclient_http_scores_with_a_bearer_header_and_401_says_how_to_authenticate(secured):
    token = secured.jwt("rest-svc")
    ISSUED.append(token)

    def infer():
        client = triton_http.InferenceServerClient(secured.http)
        tensor = triton_http.InferInput("features", list(ROW.shape), "FP32")
        tensor.set_data_from_numpy(ROW)
        assert client.is_server_live()  # health needs no credential
        with pytest.raises(InferenceServerException, match="no credential"):
            client.infer("fraud", [tensor])
        return client.infer("fraud", [tensor], headers={"authorization": f"Bearer {token}"})

    result = await asyncio.to_thread(infer)
    assert result.as_numpy("score").shape == (1, 1)

    def bare_get(headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        request = urllib.request.Request(f"http://{secured.http}/v2/models/fraud", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return reply.status, dict(reply.headers)
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers)

    status, headers = await asyncio.to_thread(bare_get, {})
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    status, _ = await asyncio.to_thread(bare_get, {"authorization": f"Bearer {secured.keys['alice']}"})
    assert status == 403


async def test_model_control_through_the_gateway_needs_role_admin(secured, channels):
    _, oip, _ = channels
    load = service_pb2.RepositoryModelLoadRequest(model_name="no-such-model")
    details = await refused(oip.RepositoryModelLoad(load, metadata=bearer(secured.keys["svc"]), timeout=10),
                            grpc.StatusCode.PERMISSION_DENIED)  # fmt: skip
    assert details == "principal 'svc' lacks role 'admin', which RepositoryModelLoad needs"
    # with the role the call reaches Triton, which answers for the model it does not have
    with pytest.raises(grpc.aio.AioRpcError) as triton_said:
        await oip.RepositoryModelLoad(load, metadata=bearer(secured.keys["ops"]), timeout=30)
    assert triton_said.value.code() != grpc.StatusCode.PERMISSION_DENIED
    assert "no-such-model" in triton_said.value.details()


async def test_admin_actions_need_role_admin_and_every_one_is_audited_under_its_principal(secured, channels):
    _, _, admin = channels
    weights = admin_pb2.SetWeightsRequest(route="fraud", weights={"stable": 100})
    await refused(admin.SetWeights(weights, timeout=5), grpc.StatusCode.UNAUTHENTICATED)
    details = await refused(admin.SetWeights(weights, metadata=bearer(secured.keys["svc"]), timeout=5),
                            grpc.StatusCode.PERMISSION_DENIED)  # fmt: skip
    assert details == "principal 'svc' lacks role 'admin', which the admin API needs"
    await refused(admin.ListRoutes(admin_pb2.ListRoutesRequest(), metadata=bearer("wrong"), timeout=5),
                  grpc.StatusCode.UNAUTHENTICATED)  # fmt: skip
    ops_jwt = secured.jwt("ops-jwt", ["admin"])
    ISSUED.append(ops_jwt)
    for credential in (secured.admin_token, secured.keys["ops"], ops_jwt):
        await admin.SetWeights(weights, metadata=bearer(credential), timeout=5)
    entries = [json.loads(line) for line in secured.audit.read_text().splitlines()]
    denied = [(e["who"], e["method"], e["reason"]) for e in entries if e["action"] == "denied"]
    assert denied[-3:] == [
        ("anonymous", "/meshserve.admin.v1.AdminService/SetWeights",
         "no credential: send authorization: Bearer <API key or JWT>"),
        ("svc", "/meshserve.admin.v1.AdminService/SetWeights",
         "principal 'svc' lacks role 'admin', which the admin API needs"),
        ("anonymous", "/meshserve.admin.v1.AdminService/ListRoutes",
         "the bearer token is neither an API key nor a well-formed JWT"),
    ]  # fmt: skip
    changes = [e for e in entries if e["action"] == "set_weights"]
    assert [e["who"] for e in changes[-3:]] == ["admin-token", "ops", "ops-jwt"]
    assert all(e["peer"].startswith("ipv4:127.0.0.1:") for e in [*changes[-3:], *entries[-6:]])
    listed = await admin.GetAuditLog(
        admin_pb2.GetAuditLogRequest(limit=10), metadata=bearer(secured.admin_token)
    )
    assert any(e.action == "denied" and "SetWeights" in e.reason and "peer ipv4:127.0.0.1" in e.reason
               for e in listed.entries)  # fmt: skip


async def test_no_secret_reaches_the_gateways_log_or_the_audit_log(secured):
    assert len(ISSUED) >= 5  # the tests above sent their JWTs
    log, audit = secured.log.read_text(), secured.audit.read_text()
    assert '"msg": "rpc"' in log  # the access log was on, and wrote lines for these calls
    for secret in secured.secrets():
        assert secret not in log and secret not in audit
        assert secret[-16:] not in log and secret[-16:] not in audit  # nor a recognisable part of one


def test_every_secret_file_is_private(secured):
    for path in (secured.audit.parent / "api-keys.json", secured.audit.parent / "admin-token"):
        assert path.stat().st_mode & 0o077 == 0


async def test_a_jwks_url_is_fetched_and_its_keys_verify_tokens(tmp_path):
    """PyJWKClient against a real HTTP server (a thread of this process) serving the identity provider's JWKS."""
    import http.server
    import threading

    from meshserve.core.auth import AuthConfig, Authenticator
    from meshserve.core.errors import Unauthenticated

    idp = SigningKey("rsa", kid="url-key")
    document = json.dumps({"keys": [idp.jwk]}).encode()

    class Jwks(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
        auth = Authenticator(AuthConfig(required=True, jwks=url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE))
        principal = await auth.authenticate({"authorization": f"Bearer {idp.token('url-svc', ['scorer'])}"})
        assert (principal.name, principal.roles, principal.method) == ("url-svc", {"scorer"}, "jwt")
        stranger = SigningKey("rsa", kid="unknown-kid")
        with pytest.raises(Unauthenticated, match="signing key not found"):
            await auth.authenticate({"authorization": f"Bearer {stranger.token()}"})
    finally:
        server.shutdown()
        server.server_close()
