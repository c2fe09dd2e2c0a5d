"""Tests for viworks.tls: option builders, pins, and real mutual-TLS loopback."""

from __future__ import annotations

import atexit
import base64
import os
import shutil
import tempfile
from dataclasses import dataclass

from OpenSSL import crypto
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from viworks import pki
from viworks.tls import (
    TLSConfigError,
    client_tls_options,
    enforce_pins,
    load_pem_certificate,
    load_pem_private_key,
    parse_pin,
    peer_agent_id,
    peer_spki_pin,
    server_context_factory,
    verify_pins,
)

TIMEOUT = 15  # seconds; generous for slow CI machines
PAYLOAD = b"hello over mutual TLS"
WRONG_PIN = "sha256/" + base64.b64encode(b"\0" * 32).decode()


@dataclass(frozen=True)
class _Certs:
    ca: str
    server: tuple[str, str]
    agent: tuple[str, str]
    foreign_ca: str
    foreign_server: tuple[str, str]
    foreign_agent: tuple[str, str]


_cache: list[_Certs] = []


def _certs() -> _Certs:
    """Generate the test PKI once per process: key generation is the slow part."""
    if not _cache:
        root = tempfile.mkdtemp(prefix="viworks-test-tls-")
        atexit.register(shutil.rmtree, root, True)
        ours, foreign = os.path.join(root, "ours"), os.path.join(root, "foreign")
        pki.init_ca(ours)
        pki.init_ca(foreign, common_name="Foreign CA")
        _cache.append(
            _Certs(
                ca=os.path.join(ours, "ca.crt"),
                server=pki.issue_server(ours, "localhost", ips=["127.0.0.1"]),
                agent=pki.issue_agent(ours, "gw-1"),
                foreign_ca=os.path.join(foreign, "ca.crt"),
                foreign_server=pki.issue_server(foreign, "localhost"),
                # Same agent id as ours: only the issuing CA differs.
                foreign_agent=pki.issue_agent(foreign, "gw-1"),
            )
        )
    return _cache[0]


@implementer(IHandshakeListener)
class _EchoServer(Protocol):
    """Echoes data and records the agent id seen after the handshake."""

    factory: _EchoFactory

    def connectionMade(self) -> None:
        self.lost: Deferred[None] = Deferred()
        self.factory.connections.append(self)

    def handshakeCompleted(self) -> None:
        self.factory.agent_ids.append(peer_agent_id(self.transport))

    def dataReceived(self, data: bytes) -> None:
        self.factory.received += data
        self.transport.write(data)

    def connectionLost(self, reason: Failure) -> None:
        self.lost.callback(None)


class _EchoFactory(Factory):
    protocol = _EchoServer

    def __init__(self) -> None:
        self.connections: list[_EchoServer] = []
        self.agent_ids: list[str | None] = []
        self.received = b""


@implementer(IHandshakeListener)
class _Client(Protocol):
    """Checks pins after the handshake, then sends PAYLOAD and awaits the echo."""

    def __init__(self, pins: list[str]) -> None:
        self.pins = pins
        self.received = b""
        self.handshake_pin: str | None = None
        self.pins_ok: bool | None = None
        self.done: Deferred[bytes] = Deferred()

    def handshakeCompleted(self) -> None:
        self.handshake_pin = peer_spki_pin(self.transport)
        self.pins_ok = verify_pins(self.transport, self.pins)
        if enforce_pins(self.transport, self.pins):
            self.transport.write(PAYLOAD)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.received == PAYLOAD:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.done.callback(self.received)


class LoopbackTests(unittest.TestCase):
    """Real TLS over 127.0.0.1 with certificates issued by viworks.pki."""

    def setUp(self) -> None:
        self.certs = _certs()

    async def _exchange(
        self,
        client_options: object,
        pins: list[str] | None = None,
        server: tuple[str, str] | None = None,
    ) -> tuple[_Client, _EchoFactory]:
        """Run one client connection against a fresh echo server; wait for both
        ends to close so the reactor is clean."""
        cert, key = server or self.certs.server
        factory = _EchoFactory()
        endpoint = SSL4ServerEndpoint(
            reactor,
            0,
            server_context_factory(cert, key, self.certs.ca),
            interface="127.0.0.1",
        )
        port = await endpoint.listen(factory)
        self.addCleanup(port.stopListening)
        self.addCleanup(self._close_all, factory)

        client = _Client(pins or [])
        connect = wrapClientTLS(
            client_options,
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, timeout=TIMEOUT),
        )
        try:
            await connect.connect(Factory.forProtocol(lambda: client))
        except Exception:
            # Failing before the wrapped protocol starts is a rejection too.
            return client, factory
        await client.done.addTimeout(TIMEOUT, reactor)
        return client, factory

    def _close_all(self, factory: _EchoFactory) -> Deferred[object]:
        for conn in factory.connections:
            if not conn.lost.called:
                conn.transport.abortConnection()
        return DeferredList([c.lost for c in factory.connections]).addTimeout(TIMEOUT, reactor)

    def _assert_rejected(self, client: _Client, factory: _EchoFactory) -> None:
        # With TLS 1.3 the client may believe its handshake succeeded before the
        # server rejects it, so check that nothing got through, not the error.
        self.assertEqual(client.received, b"")
        self.assertEqual(factory.received, b"")
        self.assertEqual(factory.agent_ids, [])

    async def test_good_agent(self) -> None:
        """An agent certificate from our CA connects; the server sees its id."""
        options = client_tls_options("localhost", *self.certs.agent, self.certs.ca)
        client, factory = await self._exchange(options)
        self.assertEqual(client.received, PAYLOAD)
        self.assertEqual(factory.agent_ids, ["gw-1"])

    async def test_options_reused(self) -> None:
        """One client options object serves several successive connections."""
        options = client_tls_options("localhost", *self.certs.agent, self.certs.ca)
        for _ in range(2):
            client, _ = await self._exchange(options)
            self.assertEqual(client.received, PAYLOAD)

    async def test_foreign_agent(self) -> None:
        """A client certificate from another CA is refused: no data flows."""
        cert, key = self.certs.foreign_agent
        options = client_tls_options("localhost", cert, key, self.certs.ca)
        self._assert_rejected(*await self._exchange(options))

    async def test_no_client_certificate(self) -> None:
        """A client presenting no certificate is refused: no data flows."""
        ca = ssl.Certificate(crypto.X509.from_cryptography(load_pem_certificate(self.certs.ca)))
        options = ssl.optionsForClientTLS(
            "localhost", trustRoot=ssl.trustRootFromCertificates([ca])
        )
        self._assert_rejected(*await self._exchange(options))

    async def test_untrusted_server(self) -> None:
        """The agent refuses a server whose certificate is from another CA."""
        options = client_tls_options("localhost", *self.certs.agent, self.certs.ca)
        client, factory = await self._exchange(options, server=self.certs.foreign_server)
        self._assert_rejected(client, factory)
        self.assertIsNone(client.pins_ok)  # handshakeCompleted never ran

    async def test_pin_match(self) -> None:
        """A matching server pin lets the connection proceed."""
        pin = pki.spki_pin(self.certs.server[0])
        options = client_tls_options("localhost", *self.certs.agent, self.certs.ca)
        client, _ = await self._exchange(options, pins=[WRONG_PIN, pin])
        self.assertTrue(client.pins_ok)
        self.assertEqual(client.handshake_pin, pin)
        self.assertEqual(client.received, PAYLOAD)

    async def test_pin_mismatch(self) -> None:
        """A server pin mismatch makes verify_pins False and aborts before sending."""
        options = client_tls_options("localhost", *self.certs.agent, self.certs.ca)
        client, factory = await self._exchange(options, pins=[WRONG_PIN])
        self.assertIs(client.pins_ok, False)
        self.assertEqual(client.received, b"")
        self.assertEqual(factory.received, b"")


class _FakeTransport:
    """Just enough of a TLS transport for the pin and identity helpers."""

    def __init__(self, cert_path: str | None) -> None:
        self.cert = (
            None
            if cert_path is None
            else crypto.X509.from_cryptography(load_pem_certificate(cert_path))
        )
        self.aborted = False

    def getPeerCertificate(self) -> crypto.X509 | None:
        return self.cert

    def abortConnection(self) -> None:
        self.aborted = True


class HelperTests(unittest.TestCase):
    """viworks.tls helpers that need no network."""

    def setUp(self) -> None:
        self.certs = _certs()
        self.pin = pki.spki_pin(self.certs.server[0])

    def test_parse_pin(self) -> None:
        """parse_pin returns the 32-byte digest of a well-formed pin."""
        self.assertEqual(parse_pin(WRONG_PIN), b"\0" * 32)
        self.assertEqual(len(parse_pin(self.pin)), 32)

    def test_parse_pin_malformed(self) -> None:
        """parse_pin rejects wrong prefixes, bad base64 and wrong lengths."""
        short = "sha256/" + base64.b64encode(b"\0" * 20).decode()
        for bad in ["", "sha1/AAAA", "sha256/", "sha256/not base64!", short]:
            e = self.assertRaises(ValueError, parse_pin, bad)
            self.assertIn("invalid SPKI pin", str(e))

    def test_verify_pins(self) -> None:
        """verify_pins: empty list passes; otherwise the peer's pin must be listed."""
        transport = _FakeTransport(self.certs.server[0])
        self.assertTrue(verify_pins(transport, []))
        self.assertTrue(verify_pins(transport, [self.pin]))
        self.assertFalse(verify_pins(transport, [WRONG_PIN]))
        self.assertFalse(transport.aborted)

    def test_verify_pins_no_certificate(self) -> None:
        """Without a peer certificate, only an empty pin list passes."""
        self.assertTrue(verify_pins(_FakeTransport(None), []))
        self.assertFalse(verify_pins(_FakeTransport(None), [self.pin]))
        self.assertFalse(verify_pins(object(), [self.pin]))

    def test_enforce_pins_aborts(self) -> None:
        """enforce_pins aborts the transport on mismatch only."""
        good, bad = _FakeTransport(self.certs.server[0]), _FakeTransport(self.certs.server[0])
        self.assertTrue(enforce_pins(good, [self.pin]))
        self.assertFalse(good.aborted)
        self.assertFalse(enforce_pins(bad, [WRONG_PIN]))
        self.assertTrue(bad.aborted)

    def test_peer_identity(self) -> None:
        """peer_agent_id/peer_spki_pin read the CN/pin, None without a certificate."""
        transport = _FakeTransport(self.certs.agent[0])
        self.assertEqual(peer_agent_id(transport), "gw-1")
        self.assertEqual(peer_spki_pin(transport), pki.spki_pin(self.certs.agent[0]))
        self.assertIsNone(peer_agent_id(_FakeTransport(None)))
        self.assertIsNone(peer_spki_pin(object()))

    def test_load_errors(self) -> None:
        """Missing files and bad PEM raise TLSConfigError naming the file."""
        missing = os.path.join(self.mktemp(), "nope.pem")
        e = self.assertRaises(TLSConfigError, load_pem_certificate, missing)
        self.assertEqual(e.path, missing)
        self.assertTrue(str(e).startswith(missing + ": cannot read"))
        key_path = self.certs.agent[1]
        e = self.assertRaises(TLSConfigError, load_pem_certificate, key_path)
        self.assertNotIn("\n", str(e))
        self.assertRaises(TLSConfigError, load_pem_private_key, self.certs.agent[0])

    def test_key_mismatch(self) -> None:
        """A certificate paired with another key is rejected when building options."""
        e = self.assertRaises(
            TLSConfigError,
            server_context_factory,
            self.certs.server[0],
            self.certs.agent[1],
            self.certs.ca,
        )
        self.assertEqual(e.path, self.certs.agent[1])
        self.assertRaises(
            TLSConfigError,
            client_tls_options,
            "localhost",
            self.certs.agent[0],
            self.certs.server[1],
            self.certs.ca,
        )
