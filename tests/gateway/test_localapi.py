"""The gateway's local API and the link's reconnect policy (no sockets)."""

from __future__ import annotations

import json

from treq.testing import StubTreq
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from viworks.gateway.localapi import GatewayAPI
from viworks.gateway.reconnect import ReconnectPolicy
from viworks.net import ConnectionLimit


class FakeLink:
    agent_id = "gw-1"
    connected = False
    session_id = None
    journal_problem = None


class LocalAPITests(unittest.TestCase):
    async def health(self, link) -> dict:
        clock = Clock()
        clock.advance(1_800_000_000)
        http = StubTreq(GatewayAPI(link, clock).resource())
        response = await http.get("http://gw/api/v1/health")
        self.assertEqual(response.code, 200)
        return json.loads(await response.content())

    async def test_disconnected(self):
        """Health says healthy and backend disconnected while there is no session."""
        body = await self.health(FakeLink())
        self.assertEqual((body["status"], body["backend"]), ("healthy", "disconnected"))
        self.assertEqual(body["timestamp"], "2027-01-15T08:00:00.000Z")

    async def test_connected(self):
        """Health says backend connected once the backend welcomed the agent."""
        link = FakeLink()
        link.connected, link.session_id = True, "s1"
        body = await self.health(link)
        self.assertEqual((body["backend"], body["session_id"]), ("connected", "s1"))


class ReconnectPolicyTests(unittest.TestCase):
    def test_window(self):
        """Delays stay within [initial, min(max, initial * 2**failures)] whatever the randomness."""
        for rand in (lambda: 0.0, lambda: 0.5, lambda: 0.999999):
            policy = ReconnectPolicy(1.0, 60.0, rand)
            for failures in range(40):
                delay = policy(0)
                self.assertGreaterEqual(delay, 1.0)
                self.assertLessEqual(delay, min(60.0, 2.0**failures))

    def test_full_jitter(self):
        """The delay is spread over the whole window, not fixed."""
        low, high = ReconnectPolicy(1.0, 60.0, lambda: 0.0), ReconnectPolicy(1.0, 60.0, lambda: 1.0)
        for _ in range(10):
            low(0), high(0)
        self.assertEqual((low(0), high(0)), (1.0, 60.0))

    def test_reset_only_on_welcome(self):
        """The failure count ignores ClientService's counter and resets only on succeeded()."""
        policy = ReconnectPolicy(1.0, 60.0, lambda: 1.0)
        for _ in range(6):
            policy(0)  # ClientService passes 0 after every TCP/TLS success
        self.assertEqual(policy(0), 60.0)
        policy.succeeded()
        self.assertEqual(policy(0), 1.0)

    def test_hint(self):
        """A retry-after hint raises the next delay once."""
        policy = ReconnectPolicy(1.0, 60.0, lambda: 0.0)
        policy.at_least(30.0)
        self.assertEqual(policy(0), 30.0)
        self.assertEqual(policy(0), 1.0)


class ConnectionLimitTests(unittest.TestCase):
    def test_refuses_beyond_limit(self):
        """Connections beyond the limit are refused; closing one makes room again."""
        limited = ConnectionLimit(Factory.forProtocol(Protocol), 2)

        def connect():
            proto = limited.buildProtocol(None)
            if proto is not None:
                proto.makeConnection(StringTransport())
            return proto

        first = connect()
        self.assertIsNotNone(first)
        self.assertIsNotNone(connect())
        self.assertIsNone(connect())
        first.connectionLost(None)
        self.assertIsNotNone(connect())
