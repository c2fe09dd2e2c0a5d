"""The bus between backend replicas: a small interface, and its single-process stand-in.

Two services, both best effort (PostgreSQL is the truth; a replica that misses a
message finds the same work by polling it):

- **pub/sub**: ``publish(channel, message)`` reaches every replica subscribed to
  ``channel`` right now, fire-and-forget. Messages are JSON objects. They may carry
  secrets (wrap each value in ``Secret``): pub/sub keeps no copy anywhere.
- **the event stream**: ``append_event(type, data)`` stores an event with a GLOBAL
  integer id, strictly increasing across replicas; ``read_events(after)`` and
  ``follow(...)`` give them back in id order, and say when some are missing (a
  *gap*: trimmed by the length cap, or lost while the bus was down). The ids are what
  SSE clients send back in ``Last-Event-ID``, so a client resumes on any replica.
  The stream is stored: ``append_event`` refuses any ``Secret``.

Event ids: ``(ms - EPOCH_MS) << SEQ_BITS | seq``, the stream entry ``ms-seq``; the
next id is ``max(last + 1, now_ms << SEQ_BITS)`` (``next_event_id``), so ids follow
the clock, survive a restart of the bus that lost its data (they keep growing with
time), and stay below 2**53 until 2093 (exact in JavaScript and in JSON doubles).

Implementations: ``NullBus`` (one process: status "off", everything local and
synchronous) and ``viworks.backend.cluster.redisbus.RedisBus``. ``open_bus(url)``
picks one from the ``[cluster] bus`` setting.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from viworks.logs import Logger

__all__ = [
    "DEFAULT_MAX_EVENTS",
    "EPOCH_MS",
    "SEQ_BITS",
    "Bus",
    "BusAddress",
    "BusCounters",
    "BusEvent",
    "BusStatus",
    "BusUnavailable",
    "EventPage",
    "Follower",
    "Gap",
    "NullBus",
    "Secret",
    "event_id",
    "event_id_of",
    "next_event_id",
    "open_bus",
    "parse_bus_url",
    "stream_id_of",
]

BusStatus = Literal["connected", "down", "off"]
GapReason = Literal["trimmed", "reset", "lost", "down"]
Handler = Callable[[dict[str, Any]], None]

#: 2024-01-01T00:00:00Z: event ids count milliseconds from here.
EPOCH_MS = 1_704_067_200_000
#: Ids per millisecond: 4,096 (more in one millisecond borrow the next one).
SEQ_BITS = 12
_SEQ_MASK = (1 << SEQ_BITS) - 1
#: Events the stream keeps (approximately) for followers that fall behind.
DEFAULT_MAX_EVENTS = 10_000
#: Channel names and event types: printable ASCII without spaces, bounded.
_NAME = re.compile(r"[!-~]{1,128}")

log = Logger()


class BusUnavailable(Exception):
    """The bus cannot answer a query now (it is down); PostgreSQL still can."""


class Secret(str):
    """A string that may cross the bus in memory (``publish``) but is never stored.

    ``append_event`` refuses data holding one, and its ``repr`` hides the value, so a
    secret argument routed to another replica cannot end in the stream or a log line.
    Values decoded from the bus are plain strings again.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('***')"


@dataclass(frozen=True)
class BusEvent:
    """One event of the stream with its global id."""

    id: int
    type: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Gap:
    """Events after ``after`` may be missing, and never will be delivered.

    ``reason``: ``trimmed`` (older than the stream's length cap), ``reset`` (the bus
    lost its stored stream, e.g. Redis restarted without persistence), ``lost`` (a
    replica could not append while the bus was unreachable for it), ``down`` (this
    follower lost the bus; it resumes from ``after`` when the bus is back).
    """

    after: int
    reason: GapReason


@dataclass(frozen=True)
class EventPage:
    """Events after some id, oldest first; ``gap`` when some after it are gone."""

    events: list[BusEvent]
    gap: bool


@dataclass
class BusCounters:
    """Running totals, for metrics (every field only grows)."""

    published: int = 0  # messages handed to the bus
    received: int = 0  # messages delivered to this replica's handlers
    failed: int = 0  # publishes and appends that did not make it (bus down, timeout)
    dropped: int = 0  # messages and entries that were not valid JSON objects
    handler_errors: int = 0  # exceptions raised by handlers and followers (logged)
    appended: int = 0  # events stored in the stream
    followed: int = 0  # events delivered to followers
    gaps: int = 0  # gaps reported to followers
    connects: int = 0  # transitions to "connected"


class Follower(Protocol):
    """A running ``follow``: stop it to stop the deliveries."""

    @property
    def last_id(self) -> int:
        """The id of the last event delivered (or the starting point)."""

    def stop(self) -> Deferred[None]:
        """Stop reading; fires when no more deliveries can happen."""


class Bus(Protocol):
    """What the backend needs from the bus between its replicas (see the module doc)."""

    @property
    def status(self) -> BusStatus:
        """``connected`` (messages flow), ``down`` (they don't: PostgreSQL carries on)
        or ``off`` (single process, no bus)."""

    @property
    def counters(self) -> BusCounters: ...

    def start(self) -> Deferred[None]:
        """Begin connecting; fires at once (a bus that is down does not stop a replica)."""

    def stop(self) -> Deferred[None]:
        """Close every connection and follower; fires when they are closed."""

    def on_status(self, callback: Callable[[BusStatus], None]) -> Callable[[], None]:
        """Call ``callback(status)`` on every change from now on; returns the remover."""

    def publish(self, channel: str, message: Mapping[str, Any]) -> Deferred[int | None]:
        """Send ``message`` (a JSON object) to the replicas subscribed to ``channel``.

        Fires with how many received it, or ``None`` when it could not be sent (the
        bus is down: counted in ``failed``, logged by status changes). Never fails:
        callers go on with their PostgreSQL path whatever happens here.
        """

    def subscribe(self, channel: str, handler: Handler) -> Callable[[], None]:
        """Call ``handler(message)`` for each message on ``channel``, across reconnects;
        returns the unsubscribe function. Each handler gets its own decoded copy."""

    def append_event(self, type: str, data: Mapping[str, Any]) -> Deferred[int | None]:
        """Store an event; fires with its global id, or ``None`` if it could not be
        stored (never fails). ``data`` must hold no ``Secret`` (``ValueError``)."""

    def read_events(self, after: int, limit: int = 1000) -> Deferred[EventPage]:
        """Up to ``limit`` stored events with ids above ``after``; fails with
        ``BusUnavailable`` while the bus is down."""

    def follow(
        self,
        on_event: Callable[[BusEvent], None],
        on_gap: Callable[[Gap], None],
        after: int | None = None,
    ) -> Follower:
        """Deliver every event with an id above ``after`` in id order to ``on_event``,
        calling ``on_gap`` first whenever some are missing (``after`` ``None``: from the
        stream's end when the follower starts reading, i.e. once its connection is up)."""


# -- event ids ------------------------------------------------------------------------------


def event_id(ms: int, seq: int) -> int:
    """The global id of stream entry ``ms-seq``."""
    return (ms - EPOCH_MS) << SEQ_BITS | seq


def next_event_id(last: int, now_ms: int) -> int:
    """The id after ``last`` at ``now_ms``: the clock's, or ``last + 1`` if that is not
    above ``last`` (a clock that went back, or 4,096 ids in one millisecond)."""
    return max(last + 1, event_id(max(now_ms, EPOCH_MS), 0))


def stream_id_of(event: int) -> str:
    """The stream entry id (``ms-seq``) of a global id; ``0-0`` for 0 (before any)."""
    if event <= 0:
        return "0-0"
    return f"{(event >> SEQ_BITS) + EPOCH_MS}-{event & _SEQ_MASK}"


def event_id_of(stream_id: str) -> int:
    """The global id of a stream entry id; ``ValueError`` if it is not one of ours."""
    ms_text, sep, seq_text = stream_id.partition("-")
    if not sep or not ms_text.isdigit() or not seq_text.isdigit():
        raise ValueError(f"not a stream id: {stream_id!r}")
    ms, seq = int(ms_text), int(seq_text)
    if ms == 0 and seq == 0:
        return 0
    if ms < EPOCH_MS or seq > _SEQ_MASK:
        raise ValueError(f"stream id {stream_id!r} was not assigned by a viworks backend")
    return event_id(ms, seq)


def gap_before(position: int, prev: int, lost: bool) -> GapReason | None:
    """Why events are missing between a follower at ``position`` and the next entry,
    which follows ``prev`` and may be flagged ``lost`` (``None``: nothing is missing)."""
    if position > 0 and prev != position:
        return "reset" if prev == 0 else "trimmed"
    return "lost" if lost else None


def page_gap(after: int, first_prev: int | None, last_id: int) -> bool:
    """Whether events after ``after`` are missing from a page read from a stream whose
    newest id is ``last_id``; ``first_prev`` is what the page's first event follows
    (``None``: the page is empty). ``after`` 0 asks for what is kept: never a gap."""
    if after <= 0:
        return False
    if first_prev is not None:
        return first_prev != after
    return last_id != after  # the stream does not know ``after``: it lost what we saw


# -- messages -------------------------------------------------------------------------------


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{kind} must be 1 to 128 printable ASCII characters, got {name!r}")
    return name


def check_limit(limit: int) -> None:
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a whole number of at least 1, got {limit!r}")


def encode_message(message: Mapping[str, Any]) -> str:
    """A message or event's JSON text (``TypeError`` if it is not a JSON object)."""
    if not isinstance(message, Mapping):
        raise TypeError(f"bus messages are JSON objects, got {type(message).__name__}")
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def decode_message(text: str | bytes) -> dict[str, Any] | None:
    """The JSON object in ``text``, or ``None`` if it is not one."""
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def refuse_secrets(data: Any) -> None:
    """``ValueError`` if a ``Secret`` is anywhere in ``data`` (the stream is stored)."""
    pending = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, Secret):
            raise ValueError("a Secret cannot be stored in the event stream")
        if isinstance(value, Mapping):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list | tuple):
            pending.extend(value)


def call_safely(counters: BusCounters, what: str, function: Callable[..., Any], *args: Any) -> None:
    """Run a handler or follower callback; an exception is logged and counted, not spread
    (one faulty handler must not stop the others, nor the bus)."""
    try:
        function(*args)
    except Exception:
        counters.handler_errors += 1
        log.failure("bus: {what} raised", what=what)


class Subscriptions:
    """Handlers per channel (shared by the implementations)."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {}

    def add(self, channel: str, handler: Handler) -> bool:
        """Add a handler; ``True`` if it is the channel's first."""
        handlers = self._handlers.setdefault(channel, [])
        handlers.append(handler)
        return len(handlers) == 1

    def remove(self, channel: str, handler: Handler) -> bool:
        """Remove a handler; ``True`` if the channel has none left."""
        handlers = self._handlers.get(channel)
        if handlers is None or handler not in handlers:
            return False
        handlers.remove(handler)
        if handlers:
            return False
        del self._handlers[channel]
        return True

    @property
    def channels(self) -> list[str]:
        return list(self._handlers)

    def deliver(self, counters: BusCounters, channel: str, text: str | bytes) -> None:
        """Decode ``text`` once per handler (each gets its own copy) and call them."""
        handlers = list(self._handlers.get(channel, ()))
        if not handlers:
            return
        message = decode_message(text)
        if message is None:
            counters.dropped += 1
            log.warn(
                "bus: dropped a message on {channel} that is not a JSON object ({size} bytes)",
                channel=channel,
                size=len(text),
            )
            return
        counters.received += 1
        for index, handler in enumerate(handlers):
            copy = message if index == 0 else decode_message(text)
            call_safely(counters, f"a handler of {channel}", handler, copy)


class StatusCallbacks:
    """``on_status`` callbacks (shared by the implementations)."""

    def __init__(self, counters: BusCounters) -> None:
        self._callbacks: list[Callable[[BusStatus], None]] = []
        self._counters = counters

    def add(self, callback: Callable[[BusStatus], None]) -> Callable[[], None]:
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    def notify(self, status: BusStatus) -> None:
        for callback in list(self._callbacks):
            call_safely(self._counters, "a status callback", callback, status)


# -- the single-process bus -----------------------------------------------------------------


@dataclass(frozen=True)
class _Stored:
    event: BusEvent
    prev: int


class NullBus:
    """The bus of a single backend process: status ``off``, everything local.

    ``publish`` calls this process's handlers synchronously; the event stream is a
    bounded in-memory history (``max_events``) with the same ids, pages and gaps as
    the shared one, and ``follow`` delivers synchronously from ``append_event``.
    """

    def __init__(self, clock: IReactorTime, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        self._clock = clock
        self.counters = BusCounters()
        self._subscriptions = Subscriptions()
        self._statuses = StatusCallbacks(self.counters)
        self._history: deque[_Stored] = deque(maxlen=max_events)
        self._last = 0
        self._followers: list[_LocalFollower] = []

    @property
    def status(self) -> BusStatus:
        return "off"

    def start(self) -> Deferred[None]:
        return succeed(None)

    def stop(self) -> Deferred[None]:
        for follower in list(self._followers):
            follower.stop()
        return succeed(None)

    def on_status(self, callback: Callable[[BusStatus], None]) -> Callable[[], None]:
        return self._statuses.add(callback)  # never called: "off" does not change

    def publish(self, channel: str, message: Mapping[str, Any]) -> Deferred[int | None]:
        text = encode_message(message)
        check_name("channel", channel)
        self.counters.published += 1
        receivers = 1 if channel in self._subscriptions.channels else 0
        self._subscriptions.deliver(self.counters, channel, text)
        return succeed(receivers)

    def subscribe(self, channel: str, handler: Handler) -> Callable[[], None]:
        check_name("channel", channel)
        self._subscriptions.add(channel, handler)

        def unsubscribe() -> None:
            self._subscriptions.remove(channel, handler)

        return unsubscribe

    def append_event(self, type: str, data: Mapping[str, Any]) -> Deferred[int | None]:
        check_name("event type", type)
        refuse_secrets(data)
        decoded = decode_message(encode_message(data))  # a copy, as the shared stream gives
        assert decoded is not None
        now_ms = int(self._clock.seconds() * 1000)
        stored = _Stored(BusEvent(next_event_id(self._last, now_ms), type, decoded), self._last)
        self._last = stored.event.id
        self._history.append(stored)
        self.counters.appended += 1
        for follower in list(self._followers):
            follower.deliver(stored)
        return succeed(stored.event.id)

    def read_events(self, after: int, limit: int = 1000) -> Deferred[EventPage]:
        check_limit(limit)
        return succeed(self._page(after, limit))

    def follow(
        self,
        on_event: Callable[[BusEvent], None],
        on_gap: Callable[[Gap], None],
        after: int | None = None,
    ) -> Follower:
        follower = _LocalFollower(self, on_event, on_gap, self._last if after is None else after)
        self._followers.append(follower)
        for stored in self._after(follower.last_id, len(self._history)):
            follower.deliver(stored)
        return follower

    def _after(self, after: int, limit: int) -> list[_Stored]:
        return [stored for stored in self._history if stored.event.id > after][:limit]

    def _page(self, after: int, limit: int) -> EventPage:
        stored = self._after(after, limit)
        first_prev = stored[0].prev if stored else None
        return EventPage([s.event for s in stored], page_gap(after, first_prev, self._last))

    def _forget(self, follower: _LocalFollower) -> None:
        if follower in self._followers:
            self._followers.remove(follower)


@dataclass
class _LocalFollower:
    bus: NullBus
    on_event: Callable[[BusEvent], None]
    on_gap: Callable[[Gap], None]
    last_id: int
    _stopped: bool = field(default=False)

    def deliver(self, stored: _Stored) -> None:
        if self._stopped:
            return
        counters = self.bus.counters
        reason = gap_before(self.last_id, stored.prev, lost=False)
        if reason is not None:
            counters.gaps += 1
            call_safely(counters, "a follower", self.on_gap, Gap(self.last_id, reason))
        self.last_id = stored.event.id
        counters.followed += 1
        call_safely(counters, "a follower", self.on_event, stored.event)

    def stop(self) -> Deferred[None]:
        self._stopped = True
        self.bus._forget(self)
        return succeed(None)


# -- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class BusAddress:
    """Where the bus is: ``redis://[[user]:password@]host[:port][/db]``."""

    scheme: str
    host: str
    port: int
    db: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        """The URL without its password (safe to log and to show in /health)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        credentials = "***@" if self.password is not None else ""
        return f"{self.scheme}://{credentials}{host}:{self.port}/{self.db}"


_SCHEMES = {"redis": 6379}


def parse_bus_url(url: str) -> BusAddress:
    """``[cluster] bus``: ``ValueError`` with a one-line reason if it is not usable."""
    expected = "must be redis://host:port/db (e.g. redis://127.0.0.1:6379/0)"
    if not isinstance(url, str) or not url:
        raise ValueError(f"{expected}, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"{expected}, got {url!r}: unknown scheme {parts.scheme!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"{expected}: no ?query or #fragment, got {url!r}")
    try:
        port = parts.port or _SCHEMES[parts.scheme]
    except ValueError:
        raise ValueError(f"{expected}: bad port in {url!r}") from None
    if not parts.hostname:
        raise ValueError(f"{expected}: no host in {url!r}")
    path = parts.path.lstrip("/")
    if path and not (path.isdigit() and len(path) <= 5):
        raise ValueError(f"{expected}: the database is a number, got {path!r}")
    return BusAddress(
        scheme=parts.scheme,
        host=parts.hostname,
        port=port,
        db=int(path or 0),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def open_bus(url: str | None, reactor: Any, **options: Any) -> Bus:
    """The bus for ``[cluster] bus``: ``NullBus`` when it is unset, else the engine its
    URL names (``options`` go to it: ``RedisBus``'s keyword arguments)."""
    if not url:
        return NullBus(reactor, **options)
    address = parse_bus_url(url)
    # Imported here: a single process never loads the Redis client.
    from viworks.backend.cluster.redisbus import RedisBus

    return RedisBus(address, reactor, **options)
