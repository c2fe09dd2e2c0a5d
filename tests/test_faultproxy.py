"""The fault-injection TCP proxy, against a real loopback echo server.

Every wait is bounded (``eventually``/``stays`` poll with ``deferLater``), and every
test closes all sockets it opened, so trial's dirty-reactor check must pass.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.faultproxy import FaultProxy


async def eventually(predicate: Any, timeout: float = 5.0, step: float = 0.02) -> None:
    """Wait on the real reactor until ``predicate()`` holds, bounded in time."""
    for _ in range(int(timeout / step)):
        if predicate():
            return
        await deferLater(reactor, step, lambda: None)
    raise AssertionError(f"condition not reached within {timeout} s")


async def stays(predicate: Any, duration: float = 1.0, step: float = 0.02) -> None:
    """Check that ``predicate()`` keeps holding for ``duration`` seconds."""
    for _ in range(int(duration / step)):
        if not predicate():
            raise AssertionError("condition stopped holding")
        await deferLater(reactor, step, lambda: None)
    if not predicate():
        raise AssertionError("condition stopped holding")


class Peer(Protocol):
    """Records what it receives and whether/how its connection ended."""

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.received = b""
        self.open = False
        self.reason: Failure | None = None
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.open = True
        if self.greeting:
            self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    @property
    def closed(self) -> bool:
        return self.reason is not None

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.open = False
        self.reason = reason
        self.lost.callback(None)


class Echo(Peer):
    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.write(data)


class EchoFactory(Factory):
    def __init__(self) -> None:
        self.peers: list[Echo] = []

    def buildProtocol(self, addr: Any) -> Echo:
        peer = Echo()
        self.peers.append(peer)
        return peer

    @property
    def open_peers(self) -> list[Echo]:
        return [peer for peer in self.peers if peer.open]


class FaultProxyTests(unittest.TestCase):
    timeout = 30

    async def close_all(self, peers: list[Peer]) -> None:
        for peer in peers:
            if peer.open:
                peer.transport.abortConnection()
        await defer.gatherResults([peer.lost for peer in peers if peer.reason is None])

    async def start_echo(self) -> int:
        self.echo = EchoFactory()
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        listener = await endpoint.listen(self.echo)

        async def stop_echo() -> None:
            await listener.stopListening()
            await self.close_all(self.echo.peers)

        self.addCleanup(lambda: defer.ensureDeferred(stop_echo()))
        return listener.getHost().port

    async def start_proxy(self, target_port: int | None = None) -> FaultProxy:
        if target_port is None:
            target_port = await self.start_echo()
        proxy = FaultProxy(reactor, "127.0.0.1", target_port)
        self.port = await proxy.start()
        self.addCleanup(lambda: defer.ensureDeferred(proxy.stop()))
        return proxy

    async def connect(self, greeting: bytes = b"") -> Peer:
        peer = Peer(greeting)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=5)
        await connectProtocol(endpoint, peer)
        self.addCleanup(lambda: defer.ensureDeferred(self.close_all([peer])))
        return peer

    async def connected_client(self, proxy: FaultProxy) -> Peer:
        """A client whose link through the proxy has carried one round trip."""
        client = await self.connect(b"hello")
        await eventually(lambda: client.received == b"hello", timeout=5)
        return client

    async def test_forwarding(self):
        """Bytes sent at once (before the target is reached) go through and come back."""
        proxy = await self.start_proxy()
        self.assertEqual(proxy.mode, "forward")
        client = await self.connect(b"early bytes")
        await eventually(lambda: client.received == b"early bytes", timeout=5)
        client.transport.write(b" and more")
        await eventually(lambda: client.received == b"early bytes and more", timeout=5)
        self.assertEqual(proxy.connections, 1)
        self.assertEqual(proxy.bytes_forwarded, 2 * len(b"early bytes and more"))
        self.assertEqual(len(self.echo.open_peers), 1)

    async def test_clean_close_propagates(self):
        """A client that closes makes the proxy close its target side, and vice versa."""
        proxy = await self.start_proxy()
        client = await self.connected_client(proxy)
        client.transport.loseConnection()
        await eventually(lambda: not self.echo.open_peers, timeout=5)
        await eventually(lambda: proxy.connections == 0, timeout=5)

        client = await self.connected_client(proxy)
        self.echo.open_peers[0].transport.loseConnection()
        await eventually(lambda: client.closed, timeout=5)
        self.assertTrue(client.reason.check(ConnectionDone))
        await eventually(lambda: proxy.connections == 0, timeout=5)

    async def test_cut(self):
        """cut() resets both sides of every connection; new connections still forward."""
        proxy = await self.start_proxy()
        first = await self.connected_client(proxy)
        second = await self.connected_client(proxy)
        self.assertEqual(proxy.connections, 2)
        proxy.cut()
        self.assertEqual(proxy.connections, 0)
        await eventually(lambda: first.closed and second.closed, timeout=5)
        self.assertFalse(first.reason.check(ConnectionDone), "expected a reset, not a FIN")
        await eventually(lambda: not self.echo.open_peers, timeout=5)
        self.assertEqual(proxy.mode, "forward")
        third = await self.connected_client(proxy)
        self.assertTrue(third.open)

    async def test_stall_then_resume(self):
        """stall() holds data both ways without closing anything; resume() delivers it."""
        proxy = await self.start_proxy()
        client = await self.connected_client(proxy)
        forwarded = proxy.bytes_forwarded
        proxy.stall()
        self.assertEqual(proxy.mode, "stall")
        client.transport.write(b" stalled")
        late = await self.connect(b"late")  # a new connection during the stall is held too
        await stays(lambda: client.received == b"hello" and client.open, duration=0.5)
        self.assertEqual(late.received, b"")
        self.assertEqual(self.echo.peers[0].received, b"hello")
        self.assertEqual(proxy.bytes_forwarded, forwarded)
        self.assertEqual(proxy.connections, 2)
        proxy.resume()
        self.assertEqual(proxy.mode, "forward")
        await eventually(lambda: client.received == b"hello stalled", timeout=5)
        await eventually(lambda: late.received == b"late", timeout=5)

    async def test_stall_holds_close(self):
        """A close during a stall is delivered only after the held data, on resume()."""
        proxy = await self.start_proxy()
        client = await self.connected_client(proxy)
        proxy.stall()
        client.transport.write(b" bye")
        client.transport.loseConnection()
        await eventually(lambda: client.closed, timeout=5)
        await stays(lambda: len(self.echo.open_peers) == 1, duration=0.3)
        self.assertEqual(self.echo.peers[0].received, b"hello")
        proxy.resume()
        await eventually(lambda: not self.echo.open_peers, timeout=5)
        self.assertEqual(self.echo.peers[0].received, b"hello bye")

    async def test_blackhole(self):
        """blackhole() drops data both ways while every socket stays open (no FIN, no RST)."""
        proxy = await self.start_proxy()
        client = await self.connected_client(proxy)
        forwarded = proxy.bytes_forwarded
        proxy.blackhole()
        self.assertEqual(proxy.mode, "blackhole")
        client.transport.write(b"into the void")
        self.echo.peers[0].transport.write(b"from the target")
        newcomer = await self.connect(b"anyone there?")  # accepted, black-holed too
        await stays(
            lambda: client.open and newcomer.open and len(self.echo.open_peers) == 1,
            duration=1.2,
        )
        self.assertEqual(client.received, b"hello")
        self.assertEqual(newcomer.received, b"")
        self.assertEqual(self.echo.peers[0].received, b"hello")
        self.assertEqual(len(self.echo.peers), 1, "a black-holed connection reached the target")
        self.assertEqual(proxy.bytes_forwarded, forwarded)
        self.assertGreaterEqual(proxy.bytes_dropped, len(b"into the void" + b"anyone there?"))
        self.assertEqual(proxy.connections, 2)

    async def test_blackhole_swallows_closes(self):
        """A side closing a black-holed connection is not told to the other side."""
        proxy = await self.start_proxy()
        client = await self.connected_client(proxy)
        proxy.blackhole()
        self.echo.peers[0].transport.loseConnection()
        await eventually(lambda: not self.echo.open_peers, timeout=5)
        await stays(lambda: client.open, duration=0.5)
        self.assertEqual(proxy.connections, 1)

    async def test_restore_after_blackhole(self):
        """restore() forwards new connections; the black-holed ones stay dead."""
        proxy = await self.start_proxy()
        old = await self.connected_client(proxy)
        proxy.blackhole()
        proxy.restore()
        self.assertEqual(proxy.mode, "forward")
        fresh = await self.connected_client(proxy)
        fresh.transport.write(b" again")
        old.transport.write(b" again")
        await eventually(lambda: fresh.received == b"hello again", timeout=5)
        await stays(lambda: old.received == b"hello" and old.open, duration=0.3)

    async def test_refuse_and_restore(self):
        """refuse() resets new connections at once, keeps old ones; restore() undoes it."""
        proxy = await self.start_proxy()
        existing = await self.connected_client(proxy)
        proxy.refuse()
        self.assertEqual(proxy.mode, "refuse")
        refused = await self.connect(b"let me in")
        await eventually(lambda: refused.closed, timeout=5)
        self.assertFalse(refused.reason.check(ConnectionDone), "expected a reset, not a FIN")
        self.assertEqual(refused.received, b"")
        self.assertEqual(len(self.echo.peers), 1)
        existing.transport.write(b" still here")
        await eventually(lambda: existing.received == b"hello still here", timeout=5)
        proxy.restore()
        await self.connected_client(proxy)
        self.assertEqual(proxy.connections, 2)

    async def test_unreachable_target(self):
        """When the target refuses, the proxy resets the client's connection."""
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        listener = await endpoint.listen(Factory.forProtocol(Protocol))
        dead_port = listener.getHost().port
        await listener.stopListening()
        proxy = await self.start_proxy(dead_port)
        client = await self.connect(b"hello?")
        await eventually(lambda: client.closed, timeout=5)
        await eventually(lambda: proxy.connections == 0, timeout=5)

    async def test_stop_leaves_nothing_behind(self):
        """stop() stops listening and resets every connection, whatever its state."""
        proxy = await self.start_proxy()
        forwarded = await self.connected_client(proxy)
        proxy.blackhole()
        dark = await self.connect(b"x")
        proxy.stall()
        held = await self.connect(b"y")
        await eventually(lambda: proxy.connections == 3, timeout=5)
        await proxy.stop()
        self.assertEqual(proxy.connections, 0)
        await eventually(lambda: forwarded.closed and dark.closed and held.closed, timeout=5)
        await eventually(lambda: not self.echo.open_peers, timeout=5)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=5)
        with self.assertRaises(Exception):  # noqa: B017 (refused: any connect error)
            await connectProtocol(endpoint, Protocol())
        await proxy.stop()  # idempotent
