"""Who is this agent? The ``identify(transport, request)`` functions of the agent listeners.

``tls_identity`` serves the backend's own mutual-TLS listener (``ws_bind``): the
agent id is the CommonName of the client certificate the TLS handshake verified.

``ProxiedIdentity`` serves the listener for agents behind a TLS-terminating nginx
(``proxied_ws_bind``). nginx verified the client certificate against our CA
(``ssl_verify_client on``) and forwards it URL-escaped in ``X-SSL-Client-Cert``
with the verdict in ``X-SSL-Client-Verify``. Anybody can send such headers, so
they are believed ONLY when the TCP peer is one of ``trusted_proxies`` and the
verdict is ``SUCCESS``; as defence in depth the forwarded certificate must also
be issued by our CA and within its validity period. Anything else gives no
identity, and the session refuses the upgrade (403).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from viworks.logs import Logger
from viworks.pki import agent_id_of
from viworks.tls import load_pem_certificates, peer_agent_id

__all__ = [
    "CERT_HEADER",
    "VERIFY_HEADER",
    "ProxiedIdentity",
    "forwarded_certificate",
    "in_networks",
    "tls_identity",
]

# Autobahn lower-cases header names.
CERT_HEADER = "x-ssl-client-cert"
VERIFY_HEADER = "x-ssl-client-verify"

log = Logger()


def tls_identity(transport: Any, request: Any = None) -> str | None:
    """The agent id of the mutual-TLS peer (its certificate's CN), or None."""
    return peer_agent_id(transport)


def forwarded_certificate(request: Any) -> x509.Certificate | None:
    """The certificate in ``X-SSL-Client-Cert`` (nginx's ``$ssl_client_escaped_cert``).

    Parsing only: say nothing about whether it may be believed (see ``ProxiedIdentity``).
    """
    headers = getattr(request, "headers", None) or {}
    escaped = headers.get(CERT_HEADER)
    if not escaped:
        return None
    try:
        return x509.load_pem_x509_certificate(unquote(escaped).encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return None


def in_networks(host: str | None, networks: Iterable[Any]) -> bool:
    """Whether the address ``host`` is in one of ``networks`` (``ipaddress`` networks)."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    # An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d.
    mapped = getattr(address, "ipv4_mapped", None)
    return any(address in net or (mapped is not None and mapped in net) for net in networks)


def peer_host(transport: Any) -> str | None:
    peer = transport.getPeer() if transport is not None else None
    return getattr(peer, "host", None)


class ProxiedIdentity:
    """``identify`` for the proxied listener: forwarded headers from trusted proxies only."""

    def __init__(self, trusted_proxies: Iterable[str], client_ca: str) -> None:
        self.reload(trusted_proxies, client_ca)

    def reload(self, trusted_proxies: Iterable[str], client_ca: str) -> None:
        """Use new trusted addresses and CA (SIGHUP); raises, keeping the old, if unusable."""
        networks = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]
        cas = load_pem_certificates(client_ca)
        self.networks, self.cas = networks, cas

    def trusted(self, host: str | None) -> bool:
        return in_networks(host, self.networks)

    def __call__(self, transport: Any, request: Any) -> str | None:
        host = peer_host(transport)
        if not self.trusted(host):
            log.warn(
                "proxied listener: refused {host}: not in trusted_proxies; "
                "forwarded client-certificate headers ignored",
                host=host,
            )
            return None
        headers = getattr(request, "headers", None) or {}
        verdict = headers.get(VERIFY_HEADER)
        if verdict != "SUCCESS":
            log.warn(
                "proxied listener: refused a connection via {host}: client certificate "
                "verification {verdict!r}",
                host=host,
                verdict=verdict,
            )
            return None
        cert = forwarded_certificate(request)
        if cert is None:
            log.warn(
                "proxied listener: refused a connection via {host}: no usable {header} header",
                host=host,
                header=CERT_HEADER,
            )
            return None
        problem = self._check(cert)
        if problem is not None:
            log.warn(
                "proxied listener: refused a connection via {host}: forwarded certificate "
                "{problem}",
                host=host,
                problem=problem,
            )
            return None
        return agent_id_of(cert)

    def _check(self, cert: x509.Certificate) -> str | None:
        """Defence in depth: nginx verified it, but a misconfigured nginx must not open doors."""
        for ca in self.cas:
            try:
                cert.verify_directly_issued_by(ca)
                break
            except (ValueError, TypeError, InvalidSignature):
                continue
        else:
            return "is not issued by client_ca"
        now = datetime.datetime.now(datetime.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return "is outside its validity period"
        return None
