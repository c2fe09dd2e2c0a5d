"""The bus on Redis: pub/sub for messages, one Stream for events (``bus.Bus``).

txredisapi speaks the protocol (``RedisProtocol``, ``SubscriberProtocol``); each
connection is kept open by a ``ClientService`` of ours rather than txredisapi's own
pool, for three reasons: a command sent while the pool is disconnected waits in its
queue until Redis returns (unbounded, and the caller hangs), where the bus must
answer "not sent" at once; its ``ClientService`` logs a line for every retry, where
an outage must be logged once; and a blocking ``XREAD`` on a shared pooled connection
would stall every command behind it. So:

- **commands** (PUBLISH, the append script, XRANGE): one connection, pipelined;
- **subscriber**: one connection in subscribed mode; every channel with handlers is
  (re)subscribed after each reconnect, before the bus says ``connected``;
- **followers**: one connection each, looping on ``XREAD BLOCK``.

A connection counts only once it answered its handshake (AUTH, SELECT, PING, and the
subscriptions or the script load): a Redis that accepts TCP but does not answer
(stopped with SIGSTOP, overloaded) is down. Idle connections are pinged every
``ping_interval`` and every command has a reply timeout, so a silent Redis is found
within about ``ping_interval + reply_timeout``. Reconnection backs off with full
jitter between ``retry_initial`` and ``retry_max`` seconds, and is reset only by a
completed handshake.

Names: channels are ``<prefix>:<db>:<channel>`` (Redis pub/sub ignores the database
number, so two deployments on one Redis stay apart); the stream is the key
``<prefix>:events`` in database ``db``.

Appends run one Lua script (atomic, so ids and the order of entries agree across
replicas): it picks the entry id by ``bus.next_event_id`` from Redis's clock and the
stream's last entry, and stores the previous entry's id with each entry (``prev``):
a follower whose last id is not the next entry's ``prev`` knows entries were
trimmed, or lost with the stream. A replica whose append failed flags its next
stored entry (``lost``), so followers learn that an event is missing even though
the stream itself never had it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import txredisapi  # type: ignore[import-untyped]
from twisted.application.internet import ClientService
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredLock,
    succeed,
)
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from twisted.logger import Logger as TwistedLogger
from twisted.python.failure import Failure

from viworks.backend.cluster.bus import (
    DEFAULT_MAX_EVENTS,
    EPOCH_MS,
    SEQ_BITS,
    BusAddress,
    BusCounters,
    BusEvent,
    BusStatus,
    BusUnavailable,
    EventPage,
    Follower,
    Gap,
    GapReason,
    Handler,
    StatusCallbacks,
    Subscriptions,
    call_safely,
    check_limit,
    check_name,
    decode_message,
    encode_message,
    event_id_of,
    gap_before,
    page_gap,
    refuse_secrets,
    stream_id_of,
)
from viworks.logs import Logger

__all__ = ["APPEND_SCRIPT", "RedisBus"]

log = Logger()

#: KEYS[1] the stream; ARGV: max length, EPOCH_MS, SEQ_BITS, type, data, lost ("1" or "").
#: Ids as in ``bus.next_event_id``; Lua numbers are doubles, exact below 2**53 (ids are).
APPEND_SCRIPT = """
local t = redis.call('TIME')
local epoch = tonumber(ARGV[2])
local per_ms = 2 ^ tonumber(ARGV[3])
local now = math.max(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), epoch)
local prev = '0-0'
local last_id = 0
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if last then
  prev = last[1]
  local dash = string.find(prev, '-', 1, true)
  last_id = (tonumber(string.sub(prev, 1, dash - 1)) - epoch) * per_ms
    + tonumber(string.sub(prev, dash + 1))
end
local id = math.max((now - epoch) * per_ms, last_id + 1)
local entry = string.format('%d-%d', math.floor(id / per_ms) + epoch, id % per_ms)
local fields = {'prev', prev, 'type', ARGV[4], 'data', ARGV[5]}
if ARGV[6] == '1' then
  table.insert(fields, 'lost')
  table.insert(fields, '1')
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], entry, unpack(fields))
return entry
"""


class _QuietClientService(ClientService):
    """A ``ClientService`` without its "Scheduling retry N" line for every attempt: the
    bus logs an outage once, when its status changes."""

    _log = TwistedLogger(
        observer=FilteringLogObserver(
            globalLogPublisher, [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)]
        )
    )


class _LinkProtocol:
    """Tells its link when the connection is made and lost (mixed into txredisapi's)."""

    link: _Link

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[misc]
        self.link.made(self)

    def connectionLost(self, why: Failure) -> None:
        super().connectionLost(why)  # type: ignore[misc]
        self.link.lost(self, why)


class _CommandProtocol(_LinkProtocol, txredisapi.RedisProtocol):
    pass


class _SubscriberProtocol(_LinkProtocol, txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern: Any, channel: str, message: str) -> None:
        self.link.bus._message(channel, message)


class _LinkFactory(Factory):
    noisy = False  # no "Starting factory" line for every reconnect

    def __init__(self, link: _Link) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> Any:
        link = self.link
        # No password or dbid here: txredisapi would run AUTH/SELECT in its own way,
        # stopping the factory on failure; the link's handshake does it instead.
        protocol = link.protocol_class(
            charset="utf-8", replyTimeout=link.reply_timeout, convertNumbers=False
        )
        protocol.factory = self
        protocol.link = link
        protocol.callLater = link.bus.reactor.callLater
        protocol.lock = DeferredLock()  # serialises the subscriber's commands
        protocol.subscribed = set()
        return protocol


Handshake = Callable[[Any], Coroutine[Any, Any, None]]


class _Link:
    """One connection to Redis, kept open; ``protocol`` is set once its handshake is done."""

    def __init__(
        self,
        bus: RedisBus,
        name: str,
        protocol_class: type,
        handshake: Handshake,
        on_change: Callable[[], None],
        reply_timeout: float,
    ) -> None:
        self.bus = bus
        self.name = name
        self.protocol_class = protocol_class
        self.reply_timeout = reply_timeout
        self.protocol: Any = None
        self.reason: str | None = None  # why it is down (None: up, or not tried yet)
        self._handshake = handshake
        self._on_change = on_change
        self._failures = 0
        address = bus.address
        endpoint = HostnameEndpoint(
            bus.reactor, address.host, address.port, timeout=bus.connect_timeout
        )
        self._service = _QuietClientService(
            endpoint, _LinkFactory(self), retryPolicy=self._retry_delay, clock=bus.reactor
        )

    def start(self) -> None:
        self._service.startService()
        self._watch_attempts()

    def stop(self) -> Deferred[None]:
        return self._service.stopService()

    @property
    def running(self) -> bool:
        return bool(self._service.running)

    def _retry_delay(self, _attempt: int) -> float:
        # Counted here, not from ClientService's attempt number: that one restarts at
        # every TCP connection, and a Redis that accepts TCP then fails the handshake
        # must not be retried in a tight loop.
        bus = self.bus
        self._failures += 1
        ceiling = min(bus.retry_max, bus.retry_initial * 2 ** min(self._failures, 16))
        return bus.retry_initial + random.random() * (ceiling - bus.retry_initial)

    def _watch_attempts(self) -> None:
        """Learn why the next connection attempt fails, if it does (once per outage)."""

        def failed(failure: Failure) -> None:
            if not failure.check(CancelledError):  # CancelledError: stopped
                self._down(failure.getErrorMessage())

        self._service.whenConnected(failAfterFailures=1).addCallbacks(lambda _: None, failed)

    def made(self, protocol: Any) -> None:
        def ready(_: None) -> None:
            if protocol.connected:
                self._failures = 0
                self.protocol, self.reason = protocol, None
                self._on_change()

        def refused(failure: Failure) -> None:
            self._down(f"handshake failed: {failure.getErrorMessage()}")
            protocol.transport.abortConnection()

        Deferred.fromCoroutine(self._handshake(protocol)).addCallbacks(ready, refused)

    def lost(self, protocol: Any, why: Failure) -> None:
        if self.protocol is protocol:
            self.protocol = None
            self._down(self.reason or why.getErrorMessage())
        if self.running:
            self._watch_attempts()

    def _down(self, reason: str) -> None:
        self.reason = reason
        self._on_change()

    def abort(self, protocol: Any, reason: str) -> None:
        """Drop a connection that stopped answering (reconnects on its own)."""
        if self.protocol is protocol:
            self.reason = reason
        if protocol.transport is not None:
            protocol.transport.abortConnection()

    def ping(self) -> None:
        protocol = self.protocol
        if protocol is None:
            return

        async def ping() -> None:
            async with protocol.lock:
                await protocol.execute_command("PING")

        def silent(failure: Failure) -> None:
            self.abort(protocol, f"no answer to PING: {failure.getErrorMessage()}")

        Deferred.fromCoroutine(ping()).addErrback(silent)


@dataclass(frozen=True)
class _Entry:
    """A stream entry as read back: its ids, and its event (None if it was not ours)."""

    id: int
    prev: int
    lost: bool
    event: BusEvent | None


def _entries(reply: Any) -> list[_Entry]:
    """The entries of an XRANGE/XREAD reply (``[[id, [field, value, ...]], ...]``);
    entries that our script did not write are left out (they have no place in the
    chain of ``prev`` ids: followers see a gap if one replaced ours)."""
    entries = []
    for item in reply or ():
        try:
            stream_id, flat = item
            fields = dict(zip(flat[::2], flat[1::2], strict=False))
            entry_id, prev = event_id_of(stream_id), event_id_of(fields.get("prev", ""))
        except (ValueError, TypeError, AttributeError):
            continue
        data = decode_message(fields.get("data", ""))
        event_type = fields.get("type")
        event = None
        if data is not None and isinstance(event_type, str) and event_type:
            event = BusEvent(entry_id, event_type, data)
        entries.append(_Entry(entry_id, prev, fields.get("lost") == "1", event))
    return entries


class RedisBus:
    """``bus.Bus`` on Redis (see the module doc). ``reactor`` provides TCP and time."""

    def __init__(
        self,
        address: BusAddress,
        reactor: Any,
        *,
        prefix: str = "viworks",
        max_events: int = DEFAULT_MAX_EVENTS,
        reply_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        ping_interval: float = 2.0,
        retry_initial: float = 0.2,
        retry_max: float = 5.0,
        block: float = 2.0,
    ) -> None:
        self.address = address
        self.reactor = reactor
        self.counters = BusCounters()
        self.connect_timeout = connect_timeout
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.block = block
        self.stream = f"{check_name('prefix', prefix)}:events"
        self._channel_prefix = f"{prefix}:{address.db}:"
        self._max_events = max_events
        self._reply_timeout = reply_timeout
        self._status: BusStatus = "down"
        self._down_logged = False
        self._stopping = False
        self._lost_appends = False
        self._script: str | None = None  # SHA1 of APPEND_SCRIPT, loaded on each connection
        self._subscriptions = Subscriptions()
        self._statuses = StatusCallbacks(self.counters)
        self._followers: list[_StreamFollower] = []
        self._commands = _Link(
            self, "commands", _CommandProtocol, self._prepare_commands, self._changed,
            reply_timeout,
        )  # fmt: skip
        self._subscriber = _Link(
            self, "subscriber", _SubscriberProtocol, self._prepare_subscriber, self._changed,
            reply_timeout,
        )  # fmt: skip
        self._pings = LoopingCall(self._ping)
        self._pings.clock = reactor
        self._ping_interval = ping_interval

    # -- life and status -------------------------------------------------------------------

    @property
    def status(self) -> BusStatus:
        return self._status

    def start(self) -> Deferred[None]:
        log.info("bus: Redis at {address}, connecting", address=str(self.address))
        self._commands.start()
        self._subscriber.start()
        self._pings.start(self._ping_interval, now=False)
        return succeed(None)

    async def _stop(self) -> None:
        self._stopping = True
        if self._pings.running:
            self._pings.stop()
        for follower in list(self._followers):
            await follower.stop()
        await self._commands.stop()
        await self._subscriber.stop()
        log.info("bus: closed")

    def stop(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    def on_status(self, callback: Callable[[BusStatus], None]) -> Callable[[], None]:
        return self._statuses.add(callback)

    def _changed(self) -> None:
        """A link came up or went down: update the status; log each change once."""
        up = self._commands.protocol is not None and self._subscriber.protocol is not None
        status: BusStatus = "connected" if up else "down"
        if self._stopping:
            self._status = status
            return
        if status == "connected" and self._status != "connected":
            self.counters.connects += 1
            self._down_logged = False
            log.info("bus: connected to Redis at {address}", address=str(self.address))
        reason = self._commands.reason or self._subscriber.reason
        if status == "down" and not self._down_logged and reason is not None:
            # Once per outage, and not before the first attempt has had its answer.
            self._down_logged = True
            log.warn(
                "bus: Redis at {address} is down ({reason}); PostgreSQL carries on, reconnecting",
                address=str(self.address),
                reason=reason,
            )
        if status != self._status:
            self._status = status
            self._statuses.notify(status)

    def _ping(self) -> None:
        self._commands.ping()
        self._subscriber.ping()

    # -- handshakes ------------------------------------------------------------------------

    async def _hello(self, protocol: Any, select: bool) -> None:
        address = self.address
        if address.password is not None:
            user = [address.username] if address.username else []
            await protocol.execute_command("AUTH", *user, address.password)
        if select and address.db:
            await protocol.execute_command("SELECT", address.db)
        await protocol.execute_command("PING")

    async def _prepare_commands(self, protocol: Any) -> None:
        await self._hello(protocol, select=True)
        self._script = await protocol.execute_command("SCRIPT", "LOAD", APPEND_SCRIPT)

    async def _prepare_subscriber(self, protocol: Any) -> None:
        await self._hello(protocol, select=False)
        await self._sync_channels(protocol)

    async def _prepare_follower(self, protocol: Any) -> None:
        await self._hello(protocol, select=True)

    # -- pub/sub ---------------------------------------------------------------------------

    def _command(self, *args: Any) -> Deferred[Any] | None:
        """Send a command on the commands connection; ``None`` if it is down."""
        protocol = self._commands.protocol
        if protocol is None:
            return None
        try:
            return protocol.execute_command(*args)
        except txredisapi.ConnectionError:
            return None

    def publish(self, channel: str, message: Mapping[str, Any]) -> Deferred[int | None]:
        text = encode_message(message)
        sent = self._command("PUBLISH", self._channel_prefix + check_name("channel", channel), text)
        if sent is None:
            self.counters.failed += 1
            return succeed(None)

        def published(receivers: int) -> int:
            self.counters.published += 1
            return receivers

        def failed(failure: Failure) -> None:
            self.counters.failed += 1
            log.debug("bus: publish failed: {error}", error=failure.getErrorMessage())

        return sent.addCallbacks(published, failed)

    def subscribe(self, channel: str, handler: Handler) -> Callable[[], None]:
        check_name("channel", channel)
        if self._subscriptions.add(channel, handler):
            self._resync()

        def unsubscribe() -> None:
            if self._subscriptions.remove(channel, handler):
                self._resync()

        return unsubscribe

    def _resync(self) -> None:
        protocol = self._subscriber.protocol
        if protocol is None:
            return  # the next handshake subscribes to every channel

        def failed(failure: Failure) -> None:
            self._subscriber.abort(protocol, f"SUBSCRIBE failed: {failure.getErrorMessage()}")

        Deferred.fromCoroutine(self._sync_channels(protocol)).addErrback(failed)

    async def _sync_channels(self, protocol: Any) -> None:
        """(Un)subscribe ``protocol`` until it listens to exactly the channels with
        handlers: one channel per command, under the connection's lock, so that each
        reply goes to the command that asked for it."""
        async with protocol.lock:
            while True:
                wanted = set(self._subscriptions.channels)
                missing = wanted - protocol.subscribed
                extra = protocol.subscribed - wanted
                if not missing and not extra:
                    return
                for channel in missing:
                    await protocol.execute_command("SUBSCRIBE", self._channel_prefix + channel)
                    protocol.subscribed.add(channel)
                for channel in extra:
                    await protocol.execute_command("UNSUBSCRIBE", self._channel_prefix + channel)
                    protocol.subscribed.discard(channel)

    def _message(self, channel: str, text: str) -> None:
        if channel.startswith(self._channel_prefix):
            self._subscriptions.deliver(self.counters, channel[len(self._channel_prefix) :], text)

    # -- the event stream ------------------------------------------------------------------

    def append_event(self, type: str, data: Mapping[str, Any]) -> Deferred[int | None]:
        check_name("event type", type)
        refuse_secrets(data)
        text = encode_message(data)
        flagged = self._lost_appends
        lost = "1" if flagged else ""
        args = [1, self.stream, self._max_events, EPOCH_MS, SEQ_BITS, type, text, lost]
        sent = self._command("EVALSHA", self._script, *args)
        if sent is None:
            self._append_failed(None)
            return succeed(None)

        def retry_unloaded(failure: Failure) -> Deferred[Any] | Failure:
            # The script cache was flushed (SCRIPT FLUSH): send the script itself.
            if failure.check(txredisapi.ResponseError) and "NOSCRIPT" in str(failure.value):
                again = self._command("EVAL", APPEND_SCRIPT, *args)
                if again is not None:
                    return again
            return failure

        def stored(entry: str) -> int:
            if flagged:
                self._lost_appends = False
            self.counters.appended += 1
            return event_id_of(entry)

        return sent.addErrback(retry_unloaded).addCallbacks(stored, self._append_failed)

    def _append_failed(self, failure: Failure | None) -> None:
        self._lost_appends = True
        self.counters.failed += 1
        if failure is not None:
            log.debug("bus: append failed: {error}", error=failure.getErrorMessage())

    async def _read(self, after: int, limit: int) -> EventPage:
        start = stream_id_of(after + 1)
        entries = _entries(await self._query("XRANGE", self.stream, start, "+", "COUNT", limit))
        if entries:
            events = [entry.event for entry in entries if entry.event is not None]
            return EventPage(events, page_gap(after, entries[0].prev, entries[-1].id))
        last = _entries(await self._query("XREVRANGE", self.stream, "+", "-", "COUNT", 1))
        return EventPage([], page_gap(after, None, last[0].id if last else 0))

    async def _query(self, *args: Any) -> Any:
        sent = self._command(*args)
        if sent is None:
            raise BusUnavailable(f"the bus at {self.address} is down")
        try:
            return await sent
        except (txredisapi.ConnectionError, txredisapi.ResponseError) as e:
            raise BusUnavailable(f"the bus at {self.address} did not answer: {e}") from e

    def read_events(self, after: int, limit: int = 1000) -> Deferred[EventPage]:
        check_limit(limit)
        return Deferred.fromCoroutine(self._read(max(after, 0), limit))

    def follow(
        self,
        on_event: Callable[[BusEvent], None],
        on_gap: Callable[[Gap], None],
        after: int | None = None,
    ) -> Follower:
        follower = _StreamFollower(self, on_event, on_gap, after)
        self._followers.append(follower)
        follower.start()
        return follower

    def _forget(self, follower: _StreamFollower) -> None:
        if follower in self._followers:
            self._followers.remove(follower)

    def _follower_link(self, on_change: Callable[[], None]) -> _Link:
        # An XREAD BLOCK answers within ``block`` seconds: its timeout is on top of that.
        return _Link(
            self, "follower", _CommandProtocol, self._prepare_follower, on_change,
            self.block + self._reply_timeout,
        )  # fmt: skip


class _StreamFollower:
    """Reads the stream on a connection of its own and hands entries over in order."""

    def __init__(
        self,
        bus: RedisBus,
        on_event: Callable[[BusEvent], None],
        on_gap: Callable[[Gap], None],
        after: int | None,
    ) -> None:
        self._bus = bus
        self._on_event = on_event
        self._on_gap = on_gap
        self._position = after  # None: from the stream's end, once connected
        self._link = bus._follower_link(self._link_changed)
        self._reading: Deferred[None] | None = None
        self._down = False
        self._stopped = False

    @property
    def last_id(self) -> int:
        return self._position or 0

    def start(self) -> None:
        self._link.start()

    async def _stop(self) -> None:
        self._stopped = True
        self._bus._forget(self)
        await self._link.stop()
        if self._reading is not None:
            await self._reading

    def stop(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    def _link_changed(self) -> None:
        if self._stopped:
            return
        protocol = self._link.protocol
        if protocol is None:
            if not self._down:
                self._down = True
                self._gap("down")
        elif self._reading is None:
            self._down = False
            self._reading = Deferred.fromCoroutine(self._read(protocol))

    async def _read(self, protocol: Any) -> None:
        bus = self._bus
        block_ms = int(bus.block * 1000)
        try:
            if self._position is None:
                last = _entries(
                    await protocol.execute_command("XREVRANGE", bus.stream, "+", "-", "COUNT", 1)
                )
                self._position = last[0].id if last else 0
            while not self._stopped and self._link.protocol is protocol:
                reply = await protocol.execute_command(
                    "XREAD", "COUNT", 512, "BLOCK", block_ms, "STREAMS", bus.stream,
                    stream_id_of(self._position),
                )  # fmt: skip
                for entry in _entries(reply[0][1] if reply else ()):
                    self._deliver(entry)
        except Exception as e:
            if not self._stopped:
                self._link.abort(protocol, f"XREAD failed: {e}")
        finally:
            self._reading = None

    def _deliver(self, entry: _Entry) -> None:
        counters = self._bus.counters
        reason = gap_before(self.last_id, entry.prev, entry.lost)
        if reason is not None:
            self._gap(reason)
        self._position = entry.id
        if entry.event is None:
            counters.dropped += 1
            return
        counters.followed += 1
        call_safely(counters, "a follower", self._on_event, entry.event)

    def _gap(self, reason: GapReason) -> None:
        counters = self._bus.counters
        counters.gaps += 1
        call_safely(counters, "a follower", self._on_gap, Gap(self.last_id, reason))
