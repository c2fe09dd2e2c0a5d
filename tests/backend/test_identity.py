"""Who an agent is, on each listener: its TLS certificate, or a trusted proxy's headers."""

from __future__ import annotations

import os
from types import SimpleNamespace
from urllib.parse import quote

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial import unittest

from tests.stack import shared_pki
from viworks.backend.identity import ProxiedIdentity, forwarded_certificate, tls_identity
from viworks.tls import TLSConfigError


class _Transport:
    def __init__(self, host: str, v6: bool = False) -> None:
        self.host = host
        self.v6 = v6

    def getPeer(self):  # noqa: N802
        if self.v6:
            return IPv6Address("TCP", self.host, 40000)
        return IPv4Address("TCP", self.host, 40000)


def _request(cert_pem: str | None, verify: str | None = "SUCCESS"):
    headers = {}
    if cert_pem is not None:
        headers["x-ssl-client-cert"] = quote(cert_pem, safe="")
    if verify is not None:
        headers["x-ssl-client-verify"] = verify
    return SimpleNamespace(headers=headers)


def _pem(ca: str, agent: str = "gw-1") -> str:
    with open(os.path.join(shared_pki()[ca], "agents", f"{agent}.crt")) as f:
        return f.read()


class ProxiedIdentityTests(unittest.TestCase):
    def setUp(self):
        self.ca = os.path.join(shared_pki()["ours"], "ca.crt")
        self.identify = ProxiedIdentity(["127.0.0.1", "10.1.0.0/16", "fd00::/8"], self.ca)

    def test_trusted_proxy_with_verified_certificate(self):
        """From a trusted address with SUCCESS, the agent is the forwarded certificate's CN."""
        for host in ("127.0.0.1", "10.1.200.3"):
            self.assertEqual(self.identify(_Transport(host), _request(_pem("ours"))), "gw-1")
        self.assertEqual(
            self.identify(_Transport("fd00::5", v6=True), _request(_pem("ours", "gw-2"))), "gw-2"
        )
        self.assertEqual(
            self.identify(_Transport("::ffff:127.0.0.1", v6=True), _request(_pem("ours"))), "gw-1"
        )

    def test_untrusted_address_ignored(self):
        """The same headers from any other address give no identity."""
        for host in ("127.0.0.2", "10.2.0.1", "192.0.2.1", "not-an-ip"):
            self.assertIsNone(self.identify(_Transport(host), _request(_pem("ours"))))

    def test_no_trusted_proxies_trusts_nobody(self):
        identify = ProxiedIdentity([], self.ca)
        self.assertIsNone(identify(_Transport("127.0.0.1"), _request(_pem("ours"))))

    def test_verdict_must_be_success(self):
        for verdict in (None, "NONE", "FAILED:certificate has expired", "success"):
            self.assertIsNone(
                self.identify(_Transport("127.0.0.1"), _request(_pem("ours"), verdict))
            )

    def test_certificate_must_come_from_our_ca(self):
        """Defence in depth: a proxy trusting another CA cannot bring its agents in."""
        self.assertIsNone(self.identify(_Transport("127.0.0.1"), _request(_pem("theirs"))))

    def test_garbage_certificate_header(self):
        for junk in ("", "not a certificate", "-----BEGIN CERTIFICATE-----\nAAAA\n", "\u00e9"):
            request = _request(None)
            request.headers["x-ssl-client-cert"] = junk
            self.assertIsNone(self.identify(_Transport("127.0.0.1"), request))
        self.assertIsNone(self.identify(_Transport("127.0.0.1"), _request(None)))
        self.assertIsNone(forwarded_certificate(SimpleNamespace(headers={})))

    def test_reload_keeps_old_on_error(self):
        """A bad CA path on reload raises and leaves the previous trust in place."""
        with self.assertRaises(TLSConfigError):
            self.identify.reload(["192.0.2.1"], "/nonexistent/ca.crt")
        self.assertEqual(self.identify(_Transport("127.0.0.1"), _request(_pem("ours"))), "gw-1")
        self.identify.reload(["192.0.2.1"], self.ca)
        self.assertIsNone(self.identify(_Transport("127.0.0.1"), _request(_pem("ours"))))

    def test_ca_bundle_during_a_rotation(self):
        """client_ca may hold old and new CA: certificates of either are accepted."""
        bundle = self.mktemp()
        with open(bundle, "w") as out:
            for ca in ("ours", "theirs"):
                with open(os.path.join(shared_pki()[ca], "ca.crt")) as f:
                    out.write(f.read())
        identify = ProxiedIdentity(["127.0.0.1"], bundle)
        for ca, agent in (("ours", "gw-1"), ("theirs", "gw-2")):
            self.assertEqual(identify(_Transport("127.0.0.1"), _request(_pem(ca, agent))), agent)

    def test_tls_identity_ignores_headers(self):
        """On the mutual-TLS listener, headers never name the agent."""
        transport = SimpleNamespace(getPeerCertificate=lambda: None)
        self.assertIsNone(tls_identity(transport, _request(_pem("ours"))))
