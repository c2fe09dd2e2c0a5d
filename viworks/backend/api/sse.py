"""Server-Sent Events: one follower per streaming response, with flow control.

A client that stops reading must not make the backend buffer without end: the
follower is the response's push producer, and a client whose unsent data passes
``[api] sse_buffer_bytes`` is dropped (``Streams``).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime, ITCPTransport
from twisted.web.server import Request
from zope.interface import implementer

from viworks.backend.api.errors import ApiError
from viworks.backend.events import Event
from viworks.backend.metrics import Metrics
from viworks.logs import Logger

SSE_KEEPALIVE = 15.0
# [api] sse_buffer_bytes: unsent data an event stream may pile up before it is dropped.
SSE_BUFFER_BYTES = 1 << 20


@implementer(IPushProducer)
class Follower:
    """Events for one streaming response, with keep-alives while nothing happens.

    It is the response's push producer: the connection pauses it while its send
    buffer is full (the client stopped reading) and resumes it once the buffer has
    drained. Events keep arriving meanwhile; once the unsent data (events waiting
    here, plus what was written while paused) passes ``max_unsent`` bytes, the
    client is dropped: the connection is aborted and its buffer freed.
    """

    def __init__(
        self,
        clock: IReactorTime,
        request: Request,
        max_unsent: int,
        dropped: Callable[[Follower], None],
    ) -> None:
        self.clock = clock
        self.request = request
        self.max_unsent = max_unsent
        self._dropped = dropped
        self.gone = False
        self.stopping = False
        self.paused = False
        self._events: list[Event] = []
        self._queued = 0  # bytes of the events waiting here
        self._buffered = 0  # bytes written while the connection was paused
        self._wake: Deferred[None] | None = None
        request.notifyFinish().addBoth(self._closed)
        if request.channel is None:  # the client left already
            self.gone = True
        else:
            request.registerProducer(self, True)

    @property
    def unsent(self) -> int:
        return self._queued + self._buffered

    def _closed(self, _: object) -> None:
        self.gone = True
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.called:
            self._wake.callback(None)

    def push(self, event: Event) -> None:
        if self.gone:
            return
        self._events.append(event)
        self._queued += event.size
        self._check()
        self._poke()

    def write(self, data: bytes) -> None:
        """Write to the client (nothing once it is gone)."""
        if self.gone:
            return
        self.request.write(data)
        if self.paused:
            self._buffered += len(data)
            self._check()

    def _check(self) -> None:
        if self.unsent > self.max_unsent and not self.gone:
            self.gone = True
            self._dropped(self)
            ITCPTransport(self.request.channel.transport).abortConnection()

    def stop(self) -> None:
        """End the stream (the backend is stopping): the route returns and finishes it."""
        self.stopping = True
        self._poke()

    def release(self) -> None:
        """Detach from the response (the route is done with it)."""
        request = self.request
        if request.channel is not None:
            request.unregisterProducer()
        else:
            request.producer = None  # the connection is gone: nothing to unregister from
        if self.gone:
            # twisted.web and Klein leave a request in reference cycles that only the
            # garbage collector frees, and the request's (legacy) transport attribute
            # holds the connection's unsent data: let go of it now, not at the next full
            # collection (minutes away under runtime.tune_gc, never on an idle backend).
            request.transport = None

    # -- IPushProducer (called by the connection) ------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._buffered = 0
        self._poke()

    def stopProducing(self) -> None:
        self._closed(None)

    # -- what the routes await -----------------------------------------------------

    async def _sleep(self, seconds: float | None = None) -> bool:
        """Wait for a poke (or ``seconds``); True when the time ran out."""
        self._wake = Deferred()
        timer = None if seconds is None else self.clock.callLater(seconds, self._poke)
        await self._wake
        if timer is None:
            return False
        if timer.active():
            timer.cancel()
            return False
        return True

    async def writable(self) -> None:
        """Return once the client can take more (or is gone, or the stream stops)."""
        while self.paused and not self.gone and not self.stopping:
            await self._sleep()

    async def next_events(self, keepalive: float) -> list[Event]:
        """The events received so far, once the client can take them, waiting up to
        ``keepalive`` s for one (then a comment line keeps the connection alive)."""
        await self.writable()
        if not self._events and not self.gone and not self.stopping:
            if await self._sleep(keepalive) and not self.gone:
                self.write(b": keep-alive\n\n")
            await self.writable()
        events, self._events, self._queued = self._events, [], 0
        return events


class Streams:
    """The API's event streams: each response's ``Follower``; the ``GET /api/v1/events``
    ones end when the backend stops; a dropped one is counted and logged."""

    log = Logger()

    def __init__(self, clock: IReactorTime, metrics: Metrics, max_unsent: int) -> None:
        self.clock = clock
        self.metrics = metrics
        self.max_unsent = max_unsent
        #: The event streams open now (ended by ``stop``).
        self.open: set[Follower] = set()

    def follow(self, request: Request) -> Follower:
        """A follower for ``request``'s response (its headers say it is an event stream)."""
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")  # nginx: do not buffer the stream
        return Follower(self.clock, request, self.max_unsent, self._dropped)

    def stop(self) -> None:
        """End every open event stream (the backend is stopping)."""
        for follower in list(self.open):
            follower.stop()

    def _dropped(self, follower: Follower) -> None:
        self.metrics.sse_dropped.inc()
        self.log.warn(
            "event stream to {peer} dropped: the client stopped reading"
            " ({unsent} bytes unsent, [api] sse_buffer_bytes = {limit})",
            peer=_peer(follower.request),
            unsent=follower.unsent,
            limit=follower.max_unsent,
        )


def _peer(request: Request) -> str:
    address = request.getClientAddress()
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return str(address) if host is None else f"{host}:{port}"


def event_filter(raw: str | None) -> Callable[[str], bool]:
    """``?types=a,b,c.*``: exact event types, or prefixes ending in ``*``; None keeps all."""
    if raw is None:
        return lambda _: True
    names = [t.strip() for t in raw.split(",") if t.strip()]
    if not names:
        raise ApiError(
            "BAD_REQUEST", "types must list event types, e.g. types=agent.online", "types"
        )
    exact = frozenset(n for n in names if not n.endswith("*"))
    prefixes = tuple(n[:-1] for n in names if n.endswith("*"))
    return lambda event_type: event_type in exact or event_type.startswith(prefixes)
