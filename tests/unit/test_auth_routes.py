"""Authorization where the gateway applies it, without a network: route rules from the routes file (validated,
swapped whole with the table), the REST frontend's 401/403, and model control needing role admin."""

from __future__ import annotations

import pytest
import yaml
from tritonclient.grpc import service_pb2

from gateway.api.http_api import HTTP_STATUS_FOR
from gateway.control.audit import AuditLog
from gateway.routing.live import LiveRoutes
from gateway.routing.routes import RoutesFileError, parse_routes
from gateway.serving.inference_api import InferenceApi
from meshserve.core.auth import ANONYMOUS, ApiKeyStore, AuthConfig, Authenticator, Principal
from meshserve.core.context import current_principal, set_principal
from meshserve.core.errors import ErrorCode, NotFound, PermissionDenied, Unauthenticated
from tests.unit.test_http_routes import FakeApi, call, rest_for

ROUTES = """
default_auth: {roles: [scorer]}
routes:
  fraud:
    auth: {roles: [scorer], principals: [auditor]}
    variants: [{name: stable, model: fraud, version: "1", weight: 100}]
  open:
    variants: [{name: stable, model: fraud, version: "1", weight: 100}]
"""
SCORER = Principal("svc", frozenset({"scorer"}), "api-key")
ALICE = Principal("alice", frozenset({"analyst"}), "jwt")


@pytest.fixture
def live(tmp_path) -> LiveRoutes:
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES)
    routes = LiveRoutes(
        parse_routes(yaml.safe_load(ROUTES), "test"), path, AuditLog(tmp_path / "audit.jsonl")
    )
    routes.follow_repository({"implicit-model"})
    return routes


def test_route_rules_and_the_table_default_come_from_the_routes_file(live):
    with pytest.raises(
        PermissionDenied, match=r"'alice' lacks a role that may call route 'fraud' \(one of: scorer\)"
    ):
        live.authorize("fraud", ALICE)
    live.authorize("fraud", SCORER)
    live.authorize("fraud", Principal("auditor", frozenset(), "mtls"))  # named in `principals`
    live.authorize("open", ALICE)  # no `auth`: any authenticated caller
    live.authorize("open", ANONYMOUS)  # ... and anyone where authentication is not required
    with pytest.raises(PermissionDenied, match="route 'implicit-model'"):
        live.authorize("implicit-model", ALICE)  # a model under its own name: the table's default_auth
    with pytest.raises(Unauthenticated, match="needs a credential"):
        live.authorize("implicit-model", ANONYMOUS)


def test_a_bad_auth_block_is_refused_with_its_field_path():
    with pytest.raises(RoutesFileError, match=r"routes\.fraud\.auth\.role: Extra inputs are not permitted"):
        parse_routes({"routes": {"fraud": {"auth": {"role": ["x"]},
                                           "variants": [{"name": "a", "model": "m", "weight": 1}]}}}, "f")  # fmt: skip
    with pytest.raises(RoutesFileError, match=r"default_auth\.roles\.0: Input should be a valid string"):
        parse_routes({"default_auth": {"roles": [3]}, "routes": {}}, "f")
    with pytest.raises(RoutesFileError, match="must not be empty"):
        parse_routes({"default_auth": {"roles": [" "]}}, "f")


async def test_admin_changes_keep_the_rules_and_a_reload_swaps_routes_and_rules_together(live):
    live.set_weights("fraud", {"stable": 50}, "ops")
    assert live.table.default_auth is not None
    with pytest.raises(PermissionDenied):
        live.authorize("fraud", ALICE)
    live.path.write_text(
        ROUTES.replace("default_auth: {roles: [scorer]}", "").replace("[scorer]", "[analyst]")
    )
    assert await live.reload("ops") == (True, "")
    live.authorize("fraud", ALICE)
    live.authorize("implicit-model", ANONYMOUS)
    live.path.write_text(ROUTES.replace("auth: {", "auth: {bogus: 1, "))
    applied, error = await live.reload("ops")
    assert not applied and "routes.fraud.auth.bogus" in error
    live.authorize("fraud", ALICE)  # the refused file changed nothing


async def test_an_unknown_route_lists_what_the_caller_may_call_and_the_open_inference_protocol_keeps_tritons_words(
    live,
):
    with pytest.raises(NotFound, match="^unknown route 'nope'; routes: open$"):
        live.get("nope", ALICE)  # Predict: the routes this caller may call
    with pytest.raises(NotFound, match="^unknown route 'nope'; routes: fraud, implicit-model, open$"):
        live.get("nope", SCORER)
    with pytest.raises(NotFound, match="^unknown route 'nope'; routes: fraud, implicit-model, open$"):
        live.get("nope")  # the admin API: every route

    class Repository:
        async def look_again(self) -> bool:
            return False

    api = InferenceApi(live, None, None, None, "test", repository=Repository())  # type: ignore[arg-type]
    set_principal(SCORER)
    with pytest.raises(NotFound, match="^Request for unknown model: 'nope' is not found$"):
        await api.model_metadata("nope", "")


# -- REST ---------------------------------------------------------------------------------------------------
class SeenApi(FakeApi):
    async def model_metadata(self, route, version):
        self.principal = current_principal()
        return await super().model_metadata(route, version)


def test_unauthenticated_and_permission_denied_have_their_http_statuses():
    assert HTTP_STATUS_FOR[ErrorCode.UNAUTHENTICATED] == 401
    assert HTTP_STATUS_FOR[ErrorCode.PERMISSION_DENIED] == 403


async def test_rest_callers_authenticate_from_their_headers_and_health_stays_open(tmp_path):
    store = ApiKeyStore(tmp_path / "keys.json")
    token = store.create("svc", ["scorer"])
    api = SeenApi()
    rest = rest_for(api)
    rest.authenticator = Authenticator(AuthConfig(required=True, api_keys_file=store.path))
    refused = await call(rest, "GET", "/v2/models/fraud")
    assert refused.status == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert "no credential" in refused.json()["error"]
    assert (await call(rest, "GET", "/v2/health/ready")).status == 200
    wrong = await call(rest, "GET", "/v2/models/fraud", headers={"authorization": "Bearer msk_wrong"})
    assert wrong.status == 401 and wrong.json() == {"error": "unknown API key"}
    ok = await call(rest, "GET", "/v2/models/fraud", headers={"authorization": f"Bearer {token}"})
    assert ok.status == 200 and api.principal == Principal("svc", frozenset({"scorer"}), "api-key")


async def test_a_known_caller_without_the_right_is_403():
    denied = PermissionDenied("principal 'alice' lacks a role that may call route 'fraud' (one of: scorer)")
    reply = await call(rest_for(FakeApi(denied)), "GET", "/v2/models/fraud")
    assert reply.status == 403 and "www-authenticate" not in reply.headers


# -- model control --------------------------------------------------------------------------------------------
class FakeRepository:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def control(self, method, request, time_left_s=None):
        self.calls.append(method)
        return None


def control_api(live: LiveRoutes, required: bool) -> tuple[InferenceApi, FakeRepository]:
    repository = FakeRepository()
    api = InferenceApi(live, None, None, None, "test", repository=repository, auth_required=required)  # type: ignore[arg-type]
    return api, repository


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("RepositoryModelLoad", service_pb2.RepositoryModelLoadRequest(model_name="fraud")),
        ("RepositoryModelUnload", service_pb2.RepositoryModelUnloadRequest(model_name="fraud")),
        ("LogSettings", service_pb2.LogSettingsRequest(
            settings={"log_info": service_pb2.LogSettingsRequest.SettingValue(bool_param=False)})),
        ("TraceSetting", service_pb2.TraceSettingRequest(
            settings={"trace_rate": service_pb2.TraceSettingRequest.SettingValue(value=["5"])})),
    ],
)  # fmt: skip
async def test_model_control_and_setting_changes_need_role_admin(live, method, request_):
    api, repository = control_api(live, required=True)
    set_principal(SCORER)
    with pytest.raises(PermissionDenied, match=f"principal 'svc' lacks role 'admin', which {method} needs"):
        await api.control(method, request_)
    set_principal(Principal("ops", frozenset({"admin"}), "jwt"))
    await api.control(method, request_)
    assert repository.calls == [method]


async def test_reading_settings_needs_no_admin_and_an_open_gateway_lets_anonymous_callers_control(live):
    api, repository = control_api(live, required=True)
    set_principal(SCORER)
    await api.control("LogSettings", service_pb2.LogSettingsRequest())
    await api.control("RepositoryIndex", service_pb2.RepositoryIndexRequest())
    open_api, _ = control_api(live, required=False)
    set_principal(ANONYMOUS)
    await open_api.control("RepositoryModelLoad", service_pb2.RepositoryModelLoadRequest(model_name="fraud"))
    set_principal(SCORER)  # a caller that did authenticate is judged by its roles
    with pytest.raises(PermissionDenied):
        await open_api.control(
            "RepositoryModelLoad", service_pb2.RepositoryModelLoadRequest(model_name="fraud")
        )
