"""TLS for every meshserve hop: reading the certificate files, server and channel credentials, and who a verified
peer is.

A server's credentials are dynamic: gRPC asks `_CertificateFiles.fetch` before each new handshake, and it hands
over a new configuration only when a file's mtime changed, so a certificate rotated on disk is served to the next
connection without a restart (connections already open keep the one they were made with). A process's identity
is the first DNS SAN of its certificate (`meshserve certs` puts the process's name there).
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

log = logging.getLogger(__name__)

__all__ = [
    "ClientTls",
    "PeerGuard",
    "TlsSettings",
    "channel_options",
    "peer_guard",
    "peer_identity",
    "redis_options",
    "server_credentials",
    "server_ssl_context",
]

# Health is answered to any peer the handshake admitted: probes and supervisors ask it, and it tells nothing.
UNGUARDED_PREFIXES = ("/grpc.health.v1.Health/",)


class TlsSettings(Protocol):
    """The TLS fields of meshserve.core.settings.ServiceSettings (a protocol, so tests can pass anything)."""

    tls_cert_file: Path | None
    tls_key_file: Path | None
    tls_ca_file: Path | None
    tls_client_auth: bool
    tls_allowed_peers: list[str]


def requires_client_certificate(settings: TlsSettings) -> bool:
    """A peer check needs a verified certificate to check, so allowed peers imply client authentication."""
    return settings.tls_client_auth or bool(settings.tls_allowed_peers)


# -- servers ----------------------------------------------------------------------------------------------------
class _CertificateFiles:
    """The server's certificate, key and CA on disk, reread when one of them changes."""

    def __init__(self, cert: Path, key: Path, ca: Path | None) -> None:
        self.paths = (cert, key, ca)
        self._seen = self._stamp()
        self.initial = self._load()

    def _stamp(self) -> tuple[float | None, ...]:
        return tuple(p.stat().st_mtime_ns if p is not None else None for p in self.paths)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        cert, key, ca = (p.read_bytes() if p is not None else None for p in self.paths)
        _check_pair(cert, key, self.paths[0])  # type: ignore[arg-type]
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before a handshake: a new configuration when the files changed, else None (keep)."""
        try:
            stamp = self._stamp()
            if stamp == self._seen:
                return None
            config = self._load()
        except (OSError, ValueError) as exc:  # half-written during a rotation: keep serving the last good one
            log.warning("certificate files unreadable; keeping the current ones", extra={"reason": str(exc)})
            return None
        self._seen = stamp
        log.info("certificate reloaded", extra={"cert": str(self.paths[0])})
        return config


def _check_pair(cert: bytes, key: bytes, where: Path) -> None:
    """ValueError unless `key` is the private key of `cert`'s first certificate (a rotation caught between the two
    writes must not be served)."""
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    public = x509.load_pem_x509_certificate(cert).public_key()
    private = serialization.load_pem_private_key(key, password=None)
    if private.public_key().public_bytes(*spki) != public.public_bytes(*spki):
        raise ValueError(f"{where}: the key does not match the certificate")


def server_credentials(settings: TlsSettings) -> grpc.ServerCredentials | None:
    """TLS server credentials following the files on disk, or None (plaintext) without a certificate."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    files = _CertificateFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
    return grpc.dynamic_ssl_server_credentials(
        files.initial, files.fetch, require_client_authentication=requires_client_certificate(settings)
    )


# -- clients ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClientTls:
    """How this process dials its peers over TLS: the CA their certificates chain to, and its own certificate
    (presented when the peer asks, for mTLS)."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def from_settings(cls, settings: TlsSettings) -> ClientTls | None:
        """Outgoing hops use TLS when a CA is set; None means plaintext."""
        if settings.tls_ca_file is None:
            return None
        return cls(settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file)

    @classmethod
    def from_dir(cls, certs_dir: Path, name: str) -> ClientTls:
        """The CA and `name`'s certificate as `meshserve certs` wrote them into `certs_dir`."""
        return cls(certs_dir / "ca.pem", certs_dir / f"{name}.pem", certs_dir / f"{name}-key.pem")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=self.key_file.read_bytes() if self.key_file else None,
            certificate_chain=self.cert_file.read_bytes() if self.cert_file else None,
        )


def channel_options(server_name: str | None) -> list[tuple[str, str]]:
    """The name the server's certificate must carry, whatever address is dialled (`feature`, `triton`...)."""
    return [("grpc.ssl_target_name_override", server_name)] if server_name else []


# -- peers ------------------------------------------------------------------------------------------------------
def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def peer_identity(auth_context: Mapping[str, Sequence[bytes | str]]) -> str | None:
    """The first DNS SAN of the peer's verified certificate (its common name when it has no DNS SAN); None for a
    peer without one. gRPC lists DNS and IP SANs together, in certificate order."""
    if not auth_context.get("x509_pem_cert") and not auth_context.get("x509_common_name"):
        return None
    for name in auth_context.get("x509_subject_alternative_name", ()):
        text = _text(name)
        if text and not _is_ip(text):
            return text
    common = auth_context.get("x509_common_name", ())
    return _text(common[0]) if common else None


class _Context(Protocol):
    def auth_context(self) -> Mapping[str, Iterable[bytes]]: ...


PeerGuard = Callable[[_Context, str], None]


def peer_guard(allowed: Iterable[str], service: str = "this service") -> PeerGuard:
    """A call guard (HandlerRegistry's `guard(context, method)`): PermissionDenied unless the caller's verified
    certificate names one of `allowed`. Health checks pass (see UNGUARDED_PREFIXES)."""
    from meshserve.core.errors import PermissionDenied

    names = frozenset(allowed)

    def guard(context: _Context, method: str) -> None:
        if method.startswith(UNGUARDED_PREFIXES):
            return
        identity = peer_identity(context.auth_context())  # type: ignore[arg-type]
        if identity in names:
            return
        who = f"peer {identity!r}" if identity else "a peer without a client certificate"
        raise PermissionDenied(f"{who} may not call {service}")

    return guard


# -- non-gRPC servers (the gateway's REST port) -----------------------------------------------------------------
def _server_context(settings: TlsSettings) -> ssl.SSLContext:
    assert settings.tls_cert_file is not None and settings.tls_key_file is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.tls_ca_file is not None:
        context.load_verify_locations(settings.tls_ca_file)
    context.verify_mode = ssl.CERT_REQUIRED if requires_client_certificate(settings) else ssl.CERT_NONE
    return context


class _ReloadingContext:
    """The context of a server that is not gRPC, rebuilt from the files when they change: each handshake's
    ClientHello callback switches the connection to the current one (the handshake in progress then uses it)."""

    def __init__(self, settings: TlsSettings) -> None:
        self.settings = settings
        self.paths = (settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
        self.stamp = self._stamp()
        self.context = self._build()

    def _stamp(self) -> tuple[int | None, ...]:
        return tuple(p.stat().st_mtime_ns if p is not None else None for p in self.paths)

    def _build(self) -> ssl.SSLContext:
        context = _server_context(self.settings)
        context.sni_callback = self.on_hello
        return context

    def on_hello(self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        try:
            stamp = self._stamp()
            if stamp != self.stamp:
                cert, key = self.paths[0], self.paths[1]
                assert cert is not None and key is not None
                _check_pair(cert.read_bytes(), key.read_bytes(), cert)
                self.context, self.stamp = self._build(), stamp
                log.info("certificate reloaded", extra={"cert": str(cert)})
        except (OSError, ValueError, ssl.SSLError) as exc:
            log.warning("certificate files unreadable; keeping the current ones", extra={"reason": str(exc)})
        if connection.context is not self.context:
            connection.context = self.context


def server_ssl_context(settings: TlsSettings) -> ssl.SSLContext | None:
    """An ssl.SSLContext for a server that is not gRPC (verifying clients as the gRPC servers do), following the
    files on disk; None without a certificate."""
    if settings.tls_cert_file is None:
        return None
    return _ReloadingContext(settings).context


def redis_options(url: str, tls: ClientTls | None) -> dict[str, object]:
    """redis-py options for `url`: with a `rediss://` URL and `tls`, verify Redis against our CA (the name
    checked is the URL's host, e.g. `redis` or 127.0.0.1) and present our certificate. Otherwise none."""
    if tls is None or not url.startswith("rediss://"):
        return {}
    options: dict[str, object] = {"ssl_ca_certs": str(tls.ca_file), "ssl_check_hostname": True}
    if tls.cert_file is not None:
        options |= {"ssl_certfile": str(tls.cert_file), "ssl_keyfile": str(tls.key_file or "")}
    return options
