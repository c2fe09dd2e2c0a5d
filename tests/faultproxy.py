"""A TCP fault-injection proxy for tests, running on the test's own reactor.

``FaultProxy`` listens on 127.0.0.1 and forwards every accepted connection to one
target, byte for byte (TLS passes through untouched).  While it runs, a test can
break the link the way networks break:

* ``cut()``       -- reset every current connection, both sides (RST); new ones forward.
* ``stall()``     -- keep every connection open but hold the data (both ways) until
  ``resume()``, which delivers it in order.  Closes are held too.
* ``blackhole()`` -- a half-open link: every socket stays open, every byte (and every
  FIN) is silently dropped, both ways.  New connections are accepted and black-holed
  as well; they never reach the target.
* ``refuse()``    -- new connections are reset at once; existing ones are untouched.
* ``restore()``   -- forward new connections again.  Black-holed connections stay
  dead (that is the point); held data is delivered.

No threads: everything runs on the reactor given to the constructor.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

MODES = ("forward", "stall", "blackhole", "refuse")

CONNECT_TIMEOUT = 10  # seconds, for the proxy's own outbound connection


def _reset(transport: Any) -> None:
    """Abort ``transport`` so the peer sees an RST (SO_LINGER 0), not a FIN."""
    try:
        transport.getHandle().setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
    except (OSError, AttributeError):
        pass
    transport.abortConnection()


class _Side(Protocol):
    """One socket of a proxied pair (``inbound`` from the client, ``outbound`` to target)."""

    def __init__(self, proxy: FaultProxy, name: str) -> None:
        self.proxy = proxy
        self.name = name
        self.pair: _Pair | None = None
        self.open = False
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.open = True
        self.proxy._live.add(self)
        if self.name == "inbound":
            self.proxy._accepted(self)

    def dataReceived(self, data: bytes) -> None:
        if self.pair is not None:
            self.pair.received(self, data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.open = False
        self.proxy._live.discard(self)
        if self.pair is not None:
            self.pair.side_lost(self, reason)
        self.lost.callback(None)


class _Pair:
    """A client connection and its connection to the target."""

    def __init__(self, proxy: FaultProxy, inbound: _Side, dead: bool) -> None:
        self.proxy = proxy
        self.inbound = inbound
        self.outbound: _Side | None = None
        self.connecting: defer.Deferred[Any] | None = None
        self.dead = dead  # black-holed: drop everything, propagate nothing
        self.torn_down = False  # the proxy reset it (cut/stop)
        # Data and closes waiting for the other side: keyed by the side that will send it.
        self.held: dict[str, list[bytes]] = {"inbound": [], "outbound": []}
        self.close_pending: dict[str, Failure | None] = {"inbound": None, "outbound": None}
        inbound.pair = self

    # -- setup -------------------------------------------------------------------------

    def connect_out(self) -> None:
        self.inbound.transport.pauseProducing()  # nothing is read until the target is up
        endpoint = TCP4ClientEndpoint(
            self.proxy.reactor,
            self.proxy.target_host,
            self.proxy.target_port,
            timeout=CONNECT_TIMEOUT,
        )
        side = _Side(self.proxy, "outbound")
        side.pair = self
        self.connecting = connectProtocol(endpoint, side)
        self.connecting.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, side: _Side) -> None:
        self.connecting = None
        self.outbound = side
        if self.torn_down or not self.inbound.open:
            _reset(side.transport)
            return
        self.inbound.transport.resumeProducing()
        self.flush()

    def _connect_failed(self, reason: Failure) -> None:
        self.connecting = None
        if self.inbound.open:
            _reset(self.inbound.transport)

    # -- data --------------------------------------------------------------------------

    def other(self, side: _Side) -> _Side | None:
        return self.outbound if side is self.inbound else self.inbound

    def received(self, side: _Side, data: bytes) -> None:
        if self.dead:
            self.proxy.bytes_dropped += len(data)
            return
        self.held[side.name].append(data)
        self.flush()

    def side_lost(self, side: _Side, reason: Failure) -> None:
        if self.connecting is not None and side is self.inbound:
            self.connecting.cancel()
        if not self.dead and not self.torn_down:
            self.close_pending[side.name] = reason
            self.flush()
        if not self.is_open():
            self.proxy._pairs.discard(self)

    def flush(self) -> None:
        """Deliver held data and closes, unless stalled, black-holed or not yet connected."""
        if self.dead:
            self.drop_held()
            return
        if self.proxy.mode == "stall" or self.outbound is None:
            return
        for side in (self.inbound, self.outbound):
            peer = self.other(side)
            chunks = self.held[side.name]
            self.held[side.name] = []
            if peer is not None and peer.open:
                for chunk in chunks:
                    peer.transport.write(chunk)
                    self.proxy.bytes_forwarded += len(chunk)
            reason = self.close_pending[side.name]
            self.close_pending[side.name] = None
            if reason is not None and peer is not None and peer.open:
                if reason.check(ConnectionDone):
                    peer.transport.loseConnection()
                else:
                    _reset(peer.transport)

    def drop_held(self) -> None:
        for name, chunks in self.held.items():
            self.proxy.bytes_dropped += sum(len(chunk) for chunk in chunks)
            self.held[name] = []
            self.close_pending[name] = None

    # -- teardown ----------------------------------------------------------------------

    def is_open(self) -> bool:
        if self.torn_down:
            return False
        return (
            self.inbound.open
            or self.connecting is not None
            or bool(self.outbound is not None and self.outbound.open)
        )

    def reset(self) -> None:
        self.torn_down = True
        self.proxy._pairs.discard(self)
        if self.connecting is not None:
            self.connecting.cancel()
        for side in (self.inbound, self.outbound):
            if side is not None and side.open:
                _reset(side.transport)


class _InboundFactory(Factory):
    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy

    def buildProtocol(self, addr: Any) -> _Side:
        return _Side(self.proxy, "inbound")


class FaultProxy:
    """Listens on 127.0.0.1:<port>, forwards each connection to target."""

    def __init__(self, reactor: Any, target_host: str, target_port: int) -> None:
        self.reactor = reactor
        self.target_host = target_host
        self.target_port = target_port
        self.port: int | None = None
        self.bytes_forwarded = 0  # delivered to the other side, both directions
        self.bytes_dropped = 0  # thrown away by the black hole
        self._mode = "forward"
        self._listener: Any = None
        self._pairs: set[_Pair] = set()
        self._live: set[_Side] = set()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> int:
        """Listen on an ephemeral loopback port and return it."""
        endpoint = TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        self._listener = await endpoint.listen(_InboundFactory(self))
        self.port = self._listener.getHost().port
        return self.port

    async def stop(self) -> None:
        """Stop listening, reset every connection (both sides) and wait until all are gone."""
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await defer.maybeDeferred(listener.stopListening)
        for pair in list(self._pairs):
            pair.reset()
        for side in list(self._live):
            if side.open:
                _reset(side.transport)
        waits = [side.lost for side in list(self._live)]
        if waits:
            await defer.gatherResults(waits)
        # Let any zero-delay calls from cancelled outbound connects run before we return.
        await deferLater(self.reactor, 0, lambda: None)

    # -- faults ------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"unknown mode {value!r}; expected one of {MODES}")
        if value == "blackhole":
            for pair in self._pairs:
                pair.dead = True
                pair.drop_held()
        self._mode = value
        if value != "stall":
            for pair in list(self._pairs):
                pair.flush()

    def cut(self) -> None:
        """Reset every current connection on both sides now; new connections still forward."""
        for pair in list(self._pairs):
            pair.reset()

    def stall(self) -> None:
        """Keep connections open but hold data (and closes) in both directions."""
        self.mode = "stall"

    def resume(self) -> None:
        """Deliver what was held and forward again."""
        self.mode = "forward"

    def blackhole(self) -> None:
        """Drop all data both ways on every connection, now and new; no FIN, no RST."""
        self.mode = "blackhole"

    def refuse(self) -> None:
        """Reset new connections at once; existing ones are untouched."""
        self.mode = "refuse"

    def restore(self) -> None:
        """Forward new connections again (black-holed ones stay dead; held data is delivered)."""
        self.mode = "forward"

    @property
    def connections(self) -> int:
        """Proxied connection pairs currently open (black-holed ones included)."""
        return sum(1 for pair in self._pairs if pair.is_open())

    # -- internals ---------------------------------------------------------------------

    def _accepted(self, side: _Side) -> None:
        if self._mode == "refuse" or self._listener is None:
            _reset(side.transport)
            return
        pair = _Pair(self, side, dead=self._mode == "blackhole")
        self._pairs.add(pair)
        if not pair.dead:
            pair.connect_out()
