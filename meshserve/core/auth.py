"""Who is calling, and what they may do: credentials turned into a Principal, and pure authorization policy.

A call carries `authorization: Bearer <token>`: the admin token (the contents of `admin_token_file`), an API key
(tokens starting `msk_`, stored only as a SHA-256 hash in a JSON file reread when it changes) or a JWT (RS256 or
ES256 only, verified against a JWKS file or URL, issuer, audience, exp/nbf with a bounded leeway). Without a
token, a verified client certificate's identity is the principal (mTLS). Every refusal says what was wrong and
never repeats the credential. No gRPC here: callers pass the headers and the peer identity.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from meshserve.core.errors import PermissionDenied, Unauthenticated

__all__ = [
    "ADMIN_ROLE",
    "ANONYMOUS",
    "API_KEY_PREFIX",
    "AccessRule",
    "ApiKeyStore",
    "AuthConfig",
    "Authenticator",
    "JwtVerifier",
    "Principal",
    "authorize",
    "bearer_token",
    "ensure_admin_token",
    "require_role",
]

log = logging.getLogger(__name__)

ADMIN_ROLE = "admin"
API_KEY_PREFIX = "msk_"
ALGORITHMS = ("RS256", "ES256")  # asymmetric only: a verifier never holds a key that could sign
MAX_LEEWAY_S = 300.0


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller (or the anonymous one, where authentication is not required)."""

    name: str
    roles: frozenset[str]
    method: str  # "api-key", "jwt", "mtls", "admin-token" or "anonymous"

    @property
    def anonymous(self) -> bool:
        return self.method == "anonymous"


ANONYMOUS = Principal("anonymous", frozenset(), "anonymous")


# -- authorization (pure) -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AccessRule:
    """Who may call something: any of `roles`, or any of `principals` by name. Empty: any authenticated caller."""

    roles: frozenset[str] = frozenset()
    principals: frozenset[str] = frozenset()

    @property
    def restricts(self) -> bool:
        return bool(self.roles or self.principals)


def authorize(principal: Principal, rule: AccessRule | None, what: str) -> None:
    """Unauthenticated for an anonymous caller of something restricted; PermissionDenied naming what is missing
    for a caller outside the rule. `what` names the thing, e.g. "route 'fraud'"."""
    if rule is None or not rule.restricts:
        return
    if principal.anonymous:
        raise Unauthenticated(f"{what} needs a credential: send authorization: Bearer <API key or JWT>")
    if principal.name in rule.principals or principal.roles & rule.roles:
        return
    if rule.roles:
        raise PermissionDenied(
            f"principal {principal.name!r} lacks a role that may call {what} (one of: {', '.join(sorted(rule.roles))})"
        )
    raise PermissionDenied(f"principal {principal.name!r} is not among the principals that may call {what}")


def require_role(principal: Principal, role: str, what: str) -> None:
    """PermissionDenied (Unauthenticated for the anonymous caller) unless `principal` holds `role`."""
    if role in principal.roles:
        return
    if principal.anonymous:
        raise Unauthenticated(f"{what} needs a credential with role {role!r}")
    raise PermissionDenied(f"principal {principal.name!r} lacks role {role!r}, which {what} needs")


# -- credentials --------------------------------------------------------------------------------------------------
def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an `authorization: Bearer <token>` header; None without the header. Unauthenticated for a
    header of another scheme or without a token."""
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated("the authorization header must use the Bearer scheme")
    token = token.strip()
    if not token:
        raise Unauthenticated("the authorization header has no token after 'Bearer'")
    return token


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class _Reread:
    """A file's parsed contents, parsed again only when its size, mtime or inode changed (one stat per use)."""

    def __init__(self, path: Path, parse: Callable[[bytes], Any], missing: Any) -> None:
        self.path = path
        self.parse = parse
        self.missing = missing
        self._stamp: tuple[int, int, int] | None = None
        self._value: Any = missing

    def get(self) -> Any:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._value = None, self.missing
            return self._value
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            try:
                self._value = self.parse(self.path.read_bytes())
            except (OSError, ValueError) as exc:  # half-written: keep what was read last
                log.warning("credential file unreadable; keeping the last good one",
                            extra={"path": str(self.path), "reason": str(exc)})  # fmt: skip
                return self._value
            self._stamp = stamp
        return self._value


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    roles: tuple[str, ...]
    sha256: str
    created: str
    revoked: str = ""  # when it was revoked; a revoked key is kept so `keys list` shows it


def _parse_keys(data: bytes) -> dict[str, ApiKey]:
    document = json.loads(data or b"{}")
    keys = document.get("keys", {}) if isinstance(document, dict) else None
    if not isinstance(keys, dict):
        raise ValueError('expected {"keys": {name: {...}}}')
    return {
        name: ApiKey(name, tuple(k.get("roles", ())), k["sha256"], k.get("created", ""), k.get("revoked", ""))
        for name, k in keys.items()
    }


class ApiKeyStore:
    """API keys in a JSON file (0600) holding only each key's SHA-256: the gateway rereads it when it changes;
    `meshserve keys` writes it. A key is `msk_` + 32 random bytes (URL-safe base64): a hash of that much entropy
    needs no slow KDF."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._file = _Reread(path, _parse_keys, {})

    def keys(self) -> dict[str, ApiKey]:
        return self._file.get()

    def verify(self, token: str) -> Principal:
        presented = _digest(token)
        found = None
        for key in self.keys().values():  # every stored hash compared, in constant time, no early exit
            if hmac.compare_digest(presented, key.sha256):
                found = key
        if found is None:
            raise Unauthenticated("unknown API key")
        if found.revoked:
            raise Unauthenticated(f"API key {found.name!r} was revoked")
        return Principal(found.name, frozenset(found.roles), "api-key")

    # -- what `meshserve keys` does ---------------------------------------------------------------------------
    def create(self, name: str, roles: Iterable[str]) -> str:
        """A new key for `name` (replacing a revoked one); the key itself is returned once and never stored."""
        if not name or any(c.isspace() for c in name):
            raise ValueError("a key's name must be non-empty, without spaces")
        keys = dict(self.keys())
        if name in keys and not keys[name].revoked:
            raise ValueError(f"key {name!r} exists; revoke it first")
        token = API_KEY_PREFIX + secrets.token_urlsafe(32)
        keys[name] = ApiKey(name, tuple(sorted(set(roles))), _digest(token), self._now())
        self._write(keys)
        return token

    def revoke(self, name: str) -> ApiKey:
        keys = dict(self.keys())
        if name not in keys:
            raise KeyError(name)
        if not keys[name].revoked:
            k = keys[name]
            keys[name] = ApiKey(k.name, k.roles, k.sha256, k.created, self._now())
            self._write(keys)
        return keys[name]

    def _now(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))

    def _write(self, keys: dict[str, ApiKey]) -> None:
        document = {"keys": {n: {"roles": list(k.roles), "sha256": k.sha256, "created": k.created,
                                 **({"revoked": k.revoked} if k.revoked else {})} for n, k in sorted(keys.items())}}  # fmt: skip
        _write_private(self.path, json.dumps(document, indent=2) + "\n")


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (a reader sees the old or the new file, never half), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(temporary, path)


def ensure_admin_token(path: Path) -> str:
    """The admin token in `path`, created (32 random bytes, 0600) when there is none: kept between runs."""
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    _write_private(path, token + "\n")
    return token


class _AdminToken:
    def __init__(self, path: Path) -> None:
        self._file = _Reread(path, lambda data: data.decode().strip(), "")

    def matches(self, token: str) -> bool:
        expected = self._file.get()
        return bool(expected) and hmac.compare_digest(token.encode(), expected.encode())


def _jwks_from(data: bytes) -> jwt.PyJWKSet:
    try:
        return jwt.PyJWKSet.from_json(data.decode())
    except jwt.PyJWKError as exc:
        raise ValueError(f"not a usable JWKS: {exc}") from None


class JwtVerifier:
    """JWTs signed with RS256 or ES256 by a key of a JWKS (a file, reread when it changes, or a URL, fetched by
    PyJWKClient and cached)."""

    def __init__(
        self,
        jwks: str,
        issuer: str | None,
        audience: str | None,
        leeway_s: float = 30.0,
        roles_claim: str = "roles",
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.leeway_s = min(max(leeway_s, 0.0), MAX_LEEWAY_S)
        self.roles_claim = roles_claim
        self.remote = jwks.startswith(("https://", "http://"))
        self._client = jwt.PyJWKClient(jwks, cache_keys=True, lifespan=300) if self.remote else None
        self._file = None if self.remote else _Reread(Path(jwks), _jwks_from, None)

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise Unauthenticated("the bearer token is neither an API key nor a well-formed JWT") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise Unauthenticated(
                f"JWT algorithm {algorithm!r} is not accepted (only {', '.join(ALGORITHMS)})"
            )
        key = await self._key(token, header.get("kid"))
        required = ["exp", "sub", *(["iss"] if self.issuer else []), *(["aud"] if self.audience else [])]
        try:
            claims = jwt.decode(
                token, key, algorithms=[algorithm], audience=self.audience, issuer=self.issuer,
                leeway=self.leeway_s, options={"require": required, "verify_aud": self.audience is not None},
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("JWT has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("JWT is not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("JWT issuer is not the one this service accepts") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("JWT audience is not this service") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("JWT signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"JWT lacks the {exc.claim!r} claim") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"JWT refused: {type(exc).__name__}") from None
        return Principal(str(claims["sub"]), frozenset(self._roles(claims)), "jwt")

    async def _key(self, token: str, kid: str | None) -> Any:
        if self._client is not None:
            try:  # PyJWKClient fetches over urllib: off the event loop
                return (await asyncio.to_thread(self._client.get_signing_key_from_jwt, token)).key
            except jwt.PyJWKClientError as exc:
                raise Unauthenticated(
                    f"JWT signing key not found in the JWKS: {type(exc).__name__}"
                ) from None
        assert self._file is not None
        keys: jwt.PyJWKSet | None = self._file.get()
        if keys is None:
            raise Unauthenticated("JWTs cannot be verified: the JWKS file is missing or unreadable")
        candidates = [k for k in keys.keys if kid is None or k.key_id == kid]
        if kid is None and len(keys.keys) > 1:
            raise Unauthenticated("JWT names no key (kid) and the JWKS has several")
        if not candidates:
            raise Unauthenticated(f"JWT key {kid!r} is not in the JWKS")
        return candidates[0].key

    def _roles(self, claims: Mapping[str, Any]) -> list[str]:
        value: Any = claims
        for part in self.roles_claim.split("."):  # a nested claim, e.g. realm_access.roles
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, str):
            return value.split()  # a space-separated list, as OAuth's `scope`
        if isinstance(value, list):
            return [str(role) for role in value]
        return []


@dataclass(frozen=True)
class AuthConfig:
    """What an Authenticator verifies against (built from a process's settings)."""

    required: bool = False
    api_keys_file: Path | None = None
    jwks: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_s: float = 30.0
    jwt_roles_claim: str = "roles"
    mtls_roles: Mapping[str, Collection[str]] = field(default_factory=dict)
    admin_token_file: Path | None = None


class Authenticator:
    """A call's headers and verified peer identity in, its Principal out (or Unauthenticated)."""

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self.required = config.required
        self.api_keys = ApiKeyStore(config.api_keys_file) if config.api_keys_file else None
        self.jwt = (
            JwtVerifier(config.jwks, config.jwt_issuer, config.jwt_audience, config.jwt_leeway_s,
                        config.jwt_roles_claim)
            if config.jwks
            else None
        )  # fmt: skip
        self.admin_token = _AdminToken(config.admin_token_file) if config.admin_token_file else None

    @property
    def configured(self) -> bool:
        """Whether any credential can be verified at all."""
        return bool(self.api_keys or self.jwt or self.admin_token or self.config.mtls_roles)

    async def authenticate(
        self, headers: Mapping[str, str], peer: str | None = None, *, required: bool | None = None
    ) -> Principal:
        """The caller's principal: its bearer token's, else its certificate's, else (authentication not
        `required`) the anonymous one. A token presented is always checked, required or not."""
        token = bearer_token(headers)
        if token is not None:
            return await self._token(token)
        if peer is not None:
            return Principal(peer, frozenset(self.config.mtls_roles.get(peer, ())), "mtls")
        if self.required if required is None else required:
            raise Unauthenticated("no credential: send authorization: Bearer <API key or JWT>")
        return ANONYMOUS

    async def _token(self, token: str) -> Principal:
        if self.admin_token is not None and self.admin_token.matches(token):
            return Principal("admin-token", frozenset({ADMIN_ROLE}), "admin-token")
        if token.startswith(API_KEY_PREFIX):
            if self.api_keys is None:
                raise Unauthenticated("API keys are not accepted here (no key file is configured)")
            return self.api_keys.verify(token)
        if self.jwt is None:
            raise Unauthenticated("the bearer token is not a known API key or admin token, and JWTs are not "
                                  "accepted here (no JWKS is configured)")  # fmt: skip
        return await self.jwt.verify(token)
