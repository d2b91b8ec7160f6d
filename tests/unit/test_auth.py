"""Callers and permissions without a network: credentials turned into principals (API keys, JWTs, the admin token,
client certificates), every refusal with its reason and never the secret, and the pure authorization policy."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from meshserve.core.auth import (
    ANONYMOUS,
    AccessRule,
    ApiKeyStore,
    AuthConfig,
    Authenticator,
    Principal,
    authorize,
    bearer_token,
    ensure_admin_token,
    require_role,
)
from meshserve.core.context import adopt_call, current_principal, set_principal
from meshserve.core.errors import PermissionDenied, Unauthenticated

ISSUER, AUDIENCE = "https://issuer.test", "meshserve"


class SigningKey:
    """A test identity provider: an EC P-256 (ES256) or RSA (RS256) key, its JWKS, and tokens it signs."""

    def __init__(self, kind: str = "ec", kid: str = "test-key") -> None:
        self.kid = kid
        if kind == "ec":
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.algorithm = "ES256"
            public = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.algorithm = "RS256"
            public = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk = {**public, "kid": kid, "use": "sig", "alg": self.algorithm}

    def write_jwks(self, path: Path, *others: SigningKey) -> Path:
        path.write_text(json.dumps({"keys": [self.jwk, *(o.jwk for o in others)]}))
        return path

    def token(self, sub: str = "alice", roles: list[str] | None = None, **claims) -> str:
        now = int(time.time())
        body = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + 300,
                "roles": roles if roles is not None else ["scorer"], **claims}  # fmt: skip
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.private, algorithm=self.algorithm, headers={"kid": self.kid})


def _hs256(body: dict, secret: bytes, kid: str) -> str:
    def part(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signed = (
        part(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        + b"."
        + part(json.dumps(body).encode())
    )
    return (signed + b"." + part(hmac.new(secret, signed, hashlib.sha256).digest())).decode()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture
def key() -> SigningKey:
    return SigningKey("ec")


@pytest.fixture
def jwt_auth(tmp_path, key) -> Authenticator:
    return Authenticator(
        AuthConfig(required=True, jwks=str(key.write_jwks(tmp_path / "jwks.json")), jwt_issuer=ISSUER,
                   jwt_audience=AUDIENCE, jwt_leeway_s=30)
    )  # fmt: skip


async def refused(auth: Authenticator, token: str | None, match: str) -> str:
    with pytest.raises(Unauthenticated, match=match) as exc:
        await auth.authenticate(bearer(token) if token else {})
    if token:
        assert token not in exc.value.message and token[-20:] not in exc.value.message
    return exc.value.message


# -- JWTs -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ec", "rsa"])
async def test_a_jwt_signed_by_a_key_of_the_jwks_is_its_subject_with_its_roles(tmp_path, kind):
    key = SigningKey(kind)
    auth = Authenticator(AuthConfig(jwks=str(key.write_jwks(tmp_path / "jwks.json")), jwt_issuer=ISSUER,
                                    jwt_audience=AUDIENCE))  # fmt: skip
    principal = await auth.authenticate(bearer(key.token("alice", ["scorer", "admin"])))
    assert principal == Principal("alice", frozenset({"scorer", "admin"}), "jwt")


async def test_an_expired_jwt_is_refused_but_clock_skew_within_the_leeway_is_not(jwt_auth, key):
    now = int(time.time())
    assert await refused(jwt_auth, key.token(exp=now - 120, nbf=now - 600, iat=now - 600), "expired")
    skewed = key.token(exp=now - 10, nbf=now - 600, iat=now - 600)  # 10 s late, 30 s leeway
    assert (await jwt_auth.authenticate(bearer(skewed))).name == "alice"


async def test_a_jwt_not_yet_valid_is_refused(jwt_auth, key):
    now = int(time.time())
    await refused(jwt_auth, key.token(nbf=now + 600, iat=now), "not valid yet")


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"iss": "https://someone-else.test"}, "issuer"),
        ({"aud": "another-service"}, "audience"),
        ({"iss": None}, "lacks the 'iss' claim"),
        ({"aud": None}, "lacks the 'aud' claim"),
        ({"sub": None}, "lacks the 'sub' claim"),
        ({"exp": None}, "lacks the 'exp' claim"),
    ],
)
async def test_a_jwt_for_another_issuer_or_audience_or_without_a_required_claim_is_refused(
    jwt_auth, key, claims, reason
):
    await refused(jwt_auth, key.token(**claims), reason)


async def test_a_jwt_signed_by_another_key_under_the_same_kid_does_not_verify(jwt_auth):
    impostor = SigningKey("ec", kid="test-key")
    await refused(jwt_auth, impostor.token(), "signature does not verify")
    await refused(jwt_auth, SigningKey("ec", kid="other").token(), "key 'other' is not in the JWKS")


async def test_symmetric_and_unsigned_jwts_are_refused(jwt_auth, key):
    body = {
        "sub": "mallory",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": int(time.time()) + 300,
        "roles": ["admin"],
    }
    # HS256 keyed with the public JWK's text: the classic algorithm-confusion forgery (made by hand: PyJWT
    # itself refuses to sign with a key that looks like a JWK)
    hs256 = _hs256(body, json.dumps(key.jwk).encode(), key.kid)
    assert "'HS256' is not accepted" in await refused(jwt_auth, hs256, "algorithm")
    unsigned = jwt.encode(body, None, algorithm="none")
    assert "'none' is not accepted" in await refused(jwt_auth, unsigned, "algorithm")
    await refused(jwt_auth, "not.a.jwt", "neither an API key nor a well-formed JWT")


async def test_the_jwks_file_is_reread_when_it_changes(tmp_path, key):
    path = key.write_jwks(tmp_path / "jwks.json")
    auth = Authenticator(AuthConfig(jwks=str(path), jwt_issuer=ISSUER, jwt_audience=AUDIENCE))
    rotated = SigningKey("rsa", kid="next")
    await refused(auth, rotated.token(), "not in the JWKS")
    key.write_jwks(path, rotated)
    assert (await auth.authenticate(bearer(rotated.token("bob")))).name == "bob"


async def test_roles_come_from_the_configured_claim_nested_or_space_separated(tmp_path, key):
    path = str(key.write_jwks(tmp_path / "jwks.json"))
    nested = Authenticator(AuthConfig(jwks=path, jwt_roles_claim="realm_access.roles"))
    token = key.token(roles=None, realm_access={"roles": ["scorer"]})
    assert (await nested.authenticate(bearer(token))).roles == {"scorer"}
    scoped = Authenticator(AuthConfig(jwks=path, jwt_roles_claim="scope"))
    assert (await scoped.authenticate(bearer(key.token(scope="scorer admin")))).roles == {"scorer", "admin"}


# -- API keys and the admin token -------------------------------------------------------------------------------
async def test_api_keys_are_stored_hashed_private_and_reread_when_the_file_changes(tmp_path):
    path = tmp_path / "keys.json"
    auth = Authenticator(AuthConfig(required=True, api_keys_file=path))
    store = ApiKeyStore(path)
    token = store.create("scorer-svc", ["scorer"])
    assert token.startswith("msk_") and token not in path.read_text()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert await auth.authenticate(bearer(token)) == Principal("scorer-svc", frozenset({"scorer"}), "api-key")
    store.revoke("scorer-svc")
    assert await refused(auth, token, "revoked") == "API key 'scorer-svc' was revoked"
    await refused(auth, "msk_" + "x" * 43, "unknown API key")
    again = store.create("scorer-svc", ["scorer", "admin"])  # a revoked name can be given a new key
    assert (await auth.authenticate(bearer(again))).roles == {"scorer", "admin"}
    await refused(auth, token, "unknown API key")  # the old key is gone with its hash
    with pytest.raises(ValueError, match="exists"):
        store.create("scorer-svc", [])


async def test_api_keys_and_jwts_are_refused_where_nothing_can_verify_them():
    auth = Authenticator(AuthConfig())
    await refused(auth, "msk_abc", "API keys are not accepted here")
    await refused(auth, "eyJhbGciOiJFUzI1NiJ9.e30.sig", "JWTs are not accepted here")


async def test_the_admin_token_is_kept_between_runs_and_holds_role_admin(tmp_path):
    path = tmp_path / "admin-token"
    token = ensure_admin_token(path)
    assert ensure_admin_token(path) == token and len(token) >= 43
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    auth = Authenticator(AuthConfig(admin_token_file=path))
    assert await auth.authenticate(bearer(token)) == Principal(
        "admin-token", frozenset({"admin"}), "admin-token"
    )
    await refused(auth, token + "x", "not a known API key or admin token")


async def test_missing_credentials_are_refused_only_where_required():
    required = Authenticator(AuthConfig(required=True))
    assert "no credential" in await refused(required, None, "no credential")
    assert await Authenticator(AuthConfig()).authenticate({}) is ANONYMOUS
    assert await required.authenticate({}, required=False) is ANONYMOUS  # the admin API's own choice


async def test_a_verified_client_certificate_is_a_principal_with_the_mapped_roles():
    auth = Authenticator(AuthConfig(required=True, mtls_roles={"admin": ["admin"]}))
    assert await auth.authenticate({}, "admin") == Principal("admin", frozenset({"admin"}), "mtls")
    assert await auth.authenticate({}, "client") == Principal("client", frozenset(), "mtls")


def test_only_the_bearer_scheme_is_read():
    assert bearer_token({}) is None
    assert bearer_token({"authorization": "bearer abc"}) == "abc"
    with pytest.raises(Unauthenticated, match="Bearer scheme") as exc:
        bearer_token({"authorization": "Basic c2VjcmV0"})
    assert "c2VjcmV0" not in exc.value.message
    with pytest.raises(Unauthenticated, match="no token"):
        bearer_token({"authorization": "Bearer "})


# -- authorization ----------------------------------------------------------------------------------------------
ALICE = Principal("alice", frozenset({"analyst"}), "api-key")


def test_a_valid_caller_without_the_routes_role_is_denied_naming_what_is_missing():
    rule = AccessRule(roles=frozenset({"scorer"}))
    with pytest.raises(PermissionDenied) as exc:
        authorize(ALICE, rule, "route 'fraud'")
    assert exc.value.message == "principal 'alice' lacks a role that may call route 'fraud' (one of: scorer)"
    authorize(Principal("svc", frozenset({"scorer"}), "jwt"), rule, "route 'fraud'")


def test_a_route_open_to_named_principals_admits_them_by_name():
    rule = AccessRule(principals=frozenset({"alice"}))
    authorize(ALICE, rule, "route 'fraud'")
    with pytest.raises(PermissionDenied, match="'bob' is not among the principals"):
        authorize(Principal("bob", frozenset(), "jwt"), rule, "route 'fraud'")


def test_an_unrestricted_route_admits_anyone_and_a_restricted_one_asks_the_anonymous_for_a_credential():
    authorize(ANONYMOUS, None, "route 'fraud'")
    authorize(ANONYMOUS, AccessRule(), "route 'fraud'")
    with pytest.raises(Unauthenticated, match="route 'fraud' needs a credential"):
        authorize(ANONYMOUS, AccessRule(roles=frozenset({"scorer"})), "route 'fraud'")


def test_admin_actions_need_role_admin():
    require_role(Principal("ops", frozenset({"admin"}), "jwt"), "admin", "SetWeights")
    with pytest.raises(
        PermissionDenied, match="principal 'alice' lacks role 'admin', which SetWeights needs"
    ):
        require_role(ALICE, "admin", "SetWeights")
    with pytest.raises(Unauthenticated, match="needs a credential with role 'admin'"):
        require_role(ANONYMOUS, "admin", "SetWeights")


def test_each_call_starts_anonymous_whatever_the_last_one_was():
    set_principal(ALICE)
    adopt_call([("x-request-id", "r1")])
    assert current_principal() is ANONYMOUS


def test_keys_cli_prints_a_key_once_lists_without_it_and_revokes(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from meshserve.cli.app import app

    monkeypatch.setenv("COLUMNS", "200")
    path = tmp_path / "keys.json"
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "svc", "--role", "scorer", "--file", str(path)])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()  # the key alone on stdout: `$(meshserve keys create ...)` is the key
    assert token.startswith("msk_") and ApiKeyStore(path).verify(token).name == "svc"
    listed = runner.invoke(app, ["keys", "list", "--file", str(path)])
    assert "svc" in listed.output and "scorer" in listed.output and token not in listed.output
    assert runner.invoke(app, ["keys", "revoke", "svc", "--file", str(path)]).exit_code == 0
    with pytest.raises(Unauthenticated, match="revoked"):
        ApiKeyStore(path).verify(token)
    missing = runner.invoke(app, ["keys", "revoke", "nobody", "--file", str(path)])
    assert missing.exit_code == 1 and "no key named 'nobody'" in missing.output
