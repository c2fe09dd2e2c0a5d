"""Mutual-TLS plumbing shared by the backend (server) and gateway agents (clients).

The server requires a client certificate chained to our CA and identifies the
agent by its certificate's CommonName. The client verifies the server's chain
and host name normally and may additionally pin the server's public key (SPKI).

Peer certificates are only available after the TLS handshake: call
L{peer_agent_id}, L{peer_spki_pin} and L{verify_pins} from
C{IHandshakeListener.handshakeCompleted} or Autobahn's C{onConnect}/C{onOpen},
never from C{connectionMade}.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Callable, Iterable
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from zope.interface import implementer

from viworks.files import one_line, read_bytes
from viworks.pki import agent_id_of, spki_pin_of_certificate

__all__ = [
    "ReloadableTLS",
    "TLSConfigError",
    "client_tls_options",
    "enforce_pins",
    "load_pem_certificate",
    "load_pem_certificates",
    "load_pem_private_key",
    "parse_pin",
    "peer_agent_id",
    "peer_certificate",
    "peer_spki_pin",
    "server_context_factory",
    "verify_pins",
]

_PIN_PREFIX = "sha256/"


class TLSConfigError(Exception):
    """A TLS certificate or key file is missing or unusable."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        self.path = os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}")


def load_pem_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    """Load the first certificate of a PEM file; raise L{TLSConfigError} if unusable."""
    try:
        return x509.load_pem_x509_certificate(_read(path))
    except ValueError as e:
        raise TLSConfigError(path, f"not a PEM certificate ({one_line(e)})") from None


def load_pem_private_key(path: str | os.PathLike[str]) -> PrivateKeyTypes:
    """Load an unencrypted PEM private key; raise L{TLSConfigError} if unusable."""
    try:
        return serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        # TypeError: the key is encrypted (we never prompt for passwords).
        raise TLSConfigError(path, f"not an unencrypted PEM private key ({one_line(e)})") from None


def server_context_factory(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    client_ca_path: str | os.PathLike[str],
) -> ssl.CertificateOptions:
    """Server TLS options that require a client certificate issued by client_ca.

    C{trustRoot} alone makes Twisted require and verify the peer's certificate
    (combining it with C{verify}/C{requireCertificate} is a TypeError).
    """
    cert, key = _load_pair(cert_path, key_path)
    # Twisted's annotations name pyOpenSSL's types; it takes cryptography's too (and
    # converts them without warnings), which is what _load_pair returns.
    return ssl.CertificateOptions(
        privateKey=key,  # type: ignore[arg-type]
        certificate=cert,  # type: ignore[arg-type]
        trustRoot=_trust_root(client_ca_path),
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


def client_tls_options(
    hostname: str,
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    ca_path: str | os.PathLike[str],
) -> IOpenSSLClientConnectionCreator:
    """Client TLS options: present our certificate, trust only ca_path, check hostname.

    Build this once and reuse it across reconnects: rebuilding trust stores on
    every attempt leaks memory (twisted#12125).
    """
    cert, key = _load_pair(cert_path, key_path)
    # The client certificate goes in as cryptography objects through
    # extraCertificateOptions: optionsForClientTLS(clientCertificate=...) would
    # hand pyOpenSSL X509/PKey objects to OpenSSL, which pyOpenSSL 26 deprecates.
    return ssl.optionsForClientTLS(
        hostname,
        trustRoot=_trust_root(ca_path),
        extraCertificateOptions={
            "privateKey": key,
            "certificate": cert,
            "raiseMinimumTo": ssl.TLSVersion.TLSv1_2,
        },
    )


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLClientConnectionCreator)
class ReloadableTLS:
    """TLS options that can be swapped while listening or reconnecting (SIGHUP).

    ``build()`` makes the options (L{server_context_factory} or
    L{client_tls_options} with the configured paths); L{reload} calls it again
    and, only if that succeeded, uses the result for every LATER connection.
    Connections already established keep the material they were made with.
    On failure the exception propagates and the previous options stay in use.
    """

    def __init__(self, build: Callable[[], Any]) -> None:
        self.options = build()

    def reload(self, build: Callable[[], Any]) -> None:
        self.options = build()

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:  # noqa: N802
        options = self.options
        if IOpenSSLServerConnectionCreator.providedBy(options):
            return options.serverConnectionForTLS(tlsProtocol)
        return SSL.Connection(options.getContext(), None)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:  # noqa: N802
        return self.options.clientConnectionForTLS(tlsProtocol)


def peer_certificate(transport: Any) -> x509.Certificate | None:
    """The peer's leaf certificate, or None (no TLS, no certificate, or closed)."""
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    try:
        cert = get()
    except AttributeError:
        # TLSMemoryBIOProtocol drops its OpenSSL connection once closed.
        return None
    return None if cert is None else cert.to_cryptography()


def peer_agent_id(transport: Any) -> str | None:
    """The agent id (certificate CN) of the peer, or None without a certificate."""
    cert = peer_certificate(transport)
    return None if cert is None else agent_id_of(cert)


def peer_spki_pin(transport: Any) -> str | None:
    """The C{sha256/...} SPKI pin of the peer's certificate, or None without one."""
    cert = peer_certificate(transport)
    return None if cert is None else spki_pin_of_certificate(cert)


def parse_pin(pin: str) -> bytes:
    """Return the 32-byte digest of a C{"sha256/<base64>"} pin; ValueError if malformed."""
    if not isinstance(pin, str) or not pin.startswith(_PIN_PREFIX):
        raise ValueError(f"invalid SPKI pin {pin!r}: expected 'sha256/<base64 of 32 bytes>'")
    try:
        digest = base64.b64decode(pin[len(_PIN_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"invalid SPKI pin {pin!r}: the part after 'sha256/' is not base64"
        ) from None
    if len(digest) != hashlib.sha256().digest_size:
        raise ValueError(
            f"invalid SPKI pin {pin!r}: decodes to {len(digest)} bytes, a SHA-256 digest has 32"
        )
    return digest


def verify_pins(transport: Any, pins: Iterable[str]) -> bool:
    """True when C{pins} is empty or the peer's SPKI matches one of them.

    Pure check, no side effect; raises ValueError for a malformed pin.
    """
    expected = [parse_pin(p) for p in pins]
    if not expected:
        return True
    pin = peer_spki_pin(transport)
    if pin is None:
        return False
    actual = parse_pin(pin)
    # Compare against every pin without short-circuiting, in constant time.
    matched = False
    for digest in expected:
        matched |= hmac.compare_digest(actual, digest)
    return matched


def enforce_pins(transport: Any, pins: Iterable[str]) -> bool:
    """Like L{verify_pins}, but abort the connection on mismatch.

    Call it first thing in the client's C{handshakeCompleted}, before sending
    anything; returns whether the connection may proceed.
    """
    if verify_pins(transport, pins):
        return True
    transport.abortConnection()
    return False


# -- private helpers --------------------------------------------------------


def _read(path: str | os.PathLike[str]) -> bytes:
    return read_bytes(path, lambda reason: TLSConfigError(path, reason))


def _load_pair(
    cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]
) -> tuple[x509.Certificate, PrivateKeyTypes]:
    """Load a certificate and its key, failing now (not at the first handshake)
    if they do not belong together."""
    cert = load_pem_certificate(cert_path)
    key = load_pem_private_key(key_path)
    if key.public_key() != cert.public_key():
        raise TLSConfigError(
            key_path, f"private key does not match certificate {os.fspath(cert_path)}"
        )
    return cert, key


def load_pem_certificates(path: str | os.PathLike[str]) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (a CA rotation trusts old and new at once)."""
    try:
        return x509.load_pem_x509_certificates(_read(path))
    except ValueError as e:
        raise TLSConfigError(path, f"not a PEM certificate ({one_line(e)})") from None


def _trust_root(ca_path: str | os.PathLike[str]) -> Any:
    return ssl.trustRootFromCertificates(
        [
            ssl.Certificate(crypto.X509.from_cryptography(ca))
            for ca in load_pem_certificates(ca_path)
        ]
    )
