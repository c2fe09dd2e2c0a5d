"""The agent <-> backend link over real mutual TLS on loopback (in one process).

These are the few tests that use real sockets; each waits with generous, bounded
timeouts and stops everything it started.
"""

from __future__ import annotations

import base64
import os

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.stack import Stack, eventually, poll, stays, tick_verb
from viworks import pki
from viworks.gateway.tap import build_gateway


class LinkTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.stack = Stack(self)
        self.outage: list[str] = []

        def observe(event):
            if event.get("log_namespace", "").startswith("viworks.gateway.outage"):
                self.outage.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    async def link_down_because(self, why: str) -> None:
        """Wait until the gateway's outage log gives ``why`` as the reason."""
        await eventually(lambda: any(why in line for line in self.outage))

    def online(self, agent_id="gw-1") -> bool:
        return self.stack.backend.parts.registry.get(agent_id) is not None

    async def run_verb(self, agent_id, verb, args=None, timeout=None):
        commands = self.stack.backend.parts.commands
        command, _ = await commands.ledger.submit(agent_id, verb, args or {}, timeout)
        finished = await commands.waiters.wait(command.command_id, 20)
        self.assertIsNotNone(finished, "the command did not finish in time")
        return finished

    async def test_hello_and_verb(self):
        """An agent with a good certificate says HELLO, shows online and runs a verb."""
        await self.stack.start_backend()
        gateway = self.stack.start_gateway()
        await eventually(self.online)
        agent = await self.stack.backend.parts.store.get_agent("gw-1")
        self.assertEqual(agent.site, "test")
        self.assertIn("ping", agent.verbs)
        self.assertIn("username", agent.verbs["create_panel_user"]["params"])
        command = await self.run_verb("gw-1", "ping")
        self.assertEqual(command.status, "succeeded")
        self.assertTrue(command.result["pong"])
        self.assertTrue(gateway.link.connected)

    async def test_queued_until_agent_returns(self):
        """A command submitted while the agent is away is delivered when it reconnects."""
        await self.stack.start_backend()
        gateway = self.stack.start_gateway()
        await eventually(self.online)
        await gateway.stopService()
        await eventually(lambda: not self.online())
        commands = self.stack.backend.parts.commands
        command, _ = await commands.ledger.submit("gw-1", "ping", {}, None)
        self.assertEqual(command.status, "queued")
        self.stack.start_gateway()
        finished = await commands.waiters.wait(command.command_id, 20)
        self.assertEqual(finished.status, "succeeded")

    async def test_reconnects_after_backend_restart(self):
        """When the backend restarts, the agent shows offline, then comes back by itself."""
        await self.stack.start_backend()
        self.stack.start_gateway()
        await eventually(self.online)
        await self.stack.stop_backend()
        await self.stack.start_backend()
        agent = await self.stack.backend.parts.store.get_agent("gw-1")
        self.assertEqual(agent.status, "offline")
        await eventually(self.online)
        command = await self.run_verb("gw-1", "ping")
        self.assertEqual(command.status, "succeeded")

    async def test_second_connection_replaces_first(self):
        """A second agent with the same id replaces the first; the registry never shows two."""
        await self.stack.start_backend()
        self.stack.start_gateway()
        await eventually(self.online)
        registry = self.stack.backend.parts.registry
        first = registry.get("gw-1")
        self.stack.start_gateway()
        await eventually(lambda: registry.get("gw-1") not in (None, first))
        agents = await self.stack.backend.parts.store.list_agents()
        self.assertEqual([a.agent_id for a in agents], ["gw-1"])

    async def test_identity_mismatch_refused(self):
        """A HELLO naming another agent than the certificate's is refused (close 4001).

        The gateway refuses to start with such a configuration (tests/test_startup.py),
        so the link's agent id is changed after the start-up check.
        """
        await self.stack.start_backend()
        gateway = build_gateway(self.stack.agent_config(agent_id="gw-1"), reactor)
        gateway.link.agent_id = "gw-2"
        gateway.startService()
        self.addCleanup(gateway.stopService)
        await stays(lambda: len(self.stack.backend.parts.registry) == 0)
        self.assertEqual(await self.stack.backend.parts.store.list_agents(), [])
        await self.link_down_because("code 4001 (hello refused: hello names 'gw-2'")

    async def test_foreign_ca_refused(self):
        """An agent whose certificate comes from another CA never gets a session."""
        await self.stack.start_backend()
        self.stack.start_gateway(ca="theirs")
        await stays(lambda: len(self.stack.backend.parts.registry) == 0)
        self.assertEqual(await self.stack.backend.parts.store.list_agents(), [])
        await self.link_down_because("the backend refused our certificate")

    async def test_untrusted_backend_refused(self):
        """An agent whose [tls] ca did not issue the backend's certificate never connects."""
        await self.stack.start_backend()
        self.stack.start_gateway(trust="theirs")
        await stays(lambda: len(self.stack.backend.parts.registry) == 0)
        await self.link_down_because("we do not trust the backend's certificate")

    async def test_unreachable_backend_reported(self):
        """No backend listening: the outage log says the connection was refused."""
        self.stack.start_gateway()
        await self.link_down_because(f"connection to localhost:{self.stack.ws_port} refused")

    async def test_refused_upgrade_reported(self):
        """An upgrade the backend refuses (wrong path: 404) is reported with its status."""
        await self.stack.start_backend()
        self.stack.start_gateway(backend_url=f"wss://localhost:{self.stack.ws_port}/nope")
        await self.link_down_because("the backend refused the WebSocket upgrade: HTTP 404")

    async def test_no_client_certificate_refused(self):
        """A TLS client without a certificate gets no WebSocket: the connection is dropped."""
        await self.stack.start_backend()
        with open(self.stack.pki["ours"] + "/ca.crt", "rb") as f:
            options = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(f.read()))
        received = []

        class Upgrade(Protocol):
            def connectionMade(self):
                self.transport.write(
                    b"GET /ws/agent HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n"
                )

            def dataReceived(self, data):
                received.append(data)

            def connectionLost(self, reason):
                received.append(None)

        endpoint = wrapClientTLS(
            options, TCP4ClientEndpoint(reactor, "127.0.0.1", self.stack.ws_port)
        )
        proto = await connectProtocol(endpoint, Upgrade())
        self.addCleanup(lambda: None in received or proto.transport.abortConnection())
        await eventually(lambda: None in received)
        self.assertEqual([r for r in received if r], [])

    async def test_pin_mismatch_refused(self):
        """An agent pinning another key refuses the backend and never says HELLO."""
        await self.stack.start_backend()
        wrong = "sha256/" + base64.b64encode(b"\x01" * 32).decode()
        self.stack.start_gateway(pins=(wrong,))
        await stays(lambda: len(self.stack.backend.parts.registry) == 0)
        await self.link_down_because("matches none of [tls] backend_spki_pins")

    async def test_pin_match_accepted(self):
        """An agent pinning the backend's real key connects."""
        await self.stack.start_backend()
        pin = pki.spki_pin(self.stack.pki["ours"] + "/server.crt")
        self.stack.start_gateway(pins=(pin,))
        await eventually(self.online)

    async def test_backend_hostname_verified(self):
        """An agent refuses a backend whose certificate does not match the URL's host name."""
        # The backend's certificate names localhost and 127.0.0.1, not 127.0.0.2.
        await self.stack.start_backend(ws_bind=f"127.0.0.2:{self.stack.ws_port}")
        self.stack.start_gateway(host="127.0.0.2")
        await stays(lambda: len(self.stack.backend.parts.registry) == 0)
        await self.link_down_because("the backend's certificate is not valid for 127.0.0.2")


class LiveOutputTests(unittest.TestCase):
    """Output streaming and cancellation through a real link, with a real subprocess verb."""

    timeout = 60

    async def start(self):
        self.stack = Stack(self)
        self.pids = os.path.join(self.stack.dir, "tick.pids")
        await self.stack.start_backend()
        self.stack.start_gateway(extra=tick_verb(self.pids))
        registry = self.stack.backend.parts.registry
        await eventually(lambda: registry.get("gw-1") is not None)
        return self.stack.backend.parts.commands

    async def test_output_streams_before_the_result(self):
        """Output chunks reach the backend while the verb runs, before its final status."""
        commands = await self.start()
        seen = []
        self.addCleanup(self.stack.backend.parts.hub.subscribe(lambda e: seen.append(e)))
        command, _ = await commands.ledger.submit("gw-1", "tick", {"count": 3, "interval": 0.3})
        finished = await commands.waiters.wait(command.command_id, 20)
        self.assertEqual(finished.status, "succeeded")
        mine = [e for e in seen if e.data.get("command_id") == command.command_id]
        outputs = [e for e in mine if e.type == "command.output"]
        self.assertGreaterEqual(len(outputs), 2, "output came in one piece, not streamed")
        self.assertEqual([e.data["seq"] for e in outputs], list(range(len(outputs))))
        self.assertEqual("".join(e.data["data"] for e in outputs), "tick 0\ntick 1\ntick 2\n")
        self.assertEqual(mine[-1].data["status"], "succeeded")
        stdout, _ = await self.stack.backend.parts.store.output_text(command.command_id)
        self.assertEqual(stdout, finished.stdout)

    async def test_cancel_kills_the_process_group(self):
        """Cancelling a running command stops it and its children; it ends cancelled."""
        commands = await self.start()
        command, _ = await commands.ledger.submit("gw-1", "tick", {"count": 200, "interval": 0.1})
        cid = command.command_id
        store = self.stack.backend.parts.store
        await poll(lambda: store.output_text(cid), lambda out: "tick 1" in out[0])
        await commands.ledger.cancel(cid)
        finished = await commands.waiters.wait(cid, 20)
        self.assertEqual(finished.status, "cancelled")
        with open(self.pids) as f:
            pids = [int(p) for p in f.read().split()]
        await eventually(lambda: not any(_alive(pid) for pid in pids))


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False
