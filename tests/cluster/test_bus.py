"""The bus between replicas: its ids and URL, the single-process ``NullBus``, and
``RedisBus`` against a private redis-server (``tests.cluster.redis``) that the tests
stop, restart and pause. Two ``RedisBus`` instances in this process stand for two
replicas: they share nothing but Redis."""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from tests.cluster.redis import SKIP, RedisServer, start_redis
from tests.stack import eventually, stays
from viworks.backend.cluster.bus import (
    EPOCH_MS,
    BusEvent,
    BusUnavailable,
    Gap,
    NullBus,
    Secret,
    event_id,
    event_id_of,
    next_event_id,
    open_bus,
    parse_bus_url,
    stream_id_of,
)
from viworks.backend.cluster.redisbus import RedisBus

NOW_MS = 1_750_000_000_000  # 2025-06-15


class EventIdTests(unittest.TestCase):
    def test_stream_and_global_ids_convert_both_ways(self):
        """A stream entry id ``ms-seq`` and its global integer map one to one; 0 is
        "before any event" (``0-0``)."""
        for ms, seq in ((EPOCH_MS, 1), (NOW_MS, 0), (NOW_MS, 4095), (NOW_MS + 1, 7)):
            self.assertEqual(event_id_of(stream_id_of(event_id(ms, seq))), event_id(ms, seq))
            self.assertEqual(stream_id_of(event_id(ms, seq)), f"{ms}-{seq}")
        self.assertEqual(stream_id_of(0), "0-0")
        self.assertEqual(event_id_of("0-0"), 0)

    def test_ids_order_like_entries_and_stay_exact_in_javascript(self):
        """Global ids sort like stream entries (ms, then seq), and ids until 2090 are
        below 2**53, exact in JSON numbers and JavaScript."""
        self.assertLess(event_id(NOW_MS, 4095), event_id(NOW_MS + 1, 0))
        year_2090_ms = 3_786_912_000_000
        self.assertLess(event_id(year_2090_ms, 4095), 2**53)

    def test_foreign_stream_ids_refused(self):
        """Entry ids no viworks backend assigns (before the epoch, a sequence past
        4095, not ``ms-seq``) raise ValueError."""
        for bad in ("1-1", f"{NOW_MS}-4096", "abc", f"{NOW_MS}", "-1-2", ""):
            with self.assertRaises(ValueError, msg=bad):
                event_id_of(bad)

    def test_next_id_follows_the_clock_and_never_goes_back(self):
        """The next id is the clock's when it is ahead, else the last one plus one:
        a clock that goes back, or 4,096 ids in one millisecond, still give
        increasing ids."""
        first = next_event_id(0, NOW_MS)
        self.assertEqual(first, event_id(NOW_MS, 0))
        self.assertEqual(next_event_id(first, NOW_MS), first + 1)
        self.assertEqual(next_event_id(first, NOW_MS - 5000), first + 1)  # clock went back
        full = event_id(NOW_MS, 4095)
        self.assertEqual(next_event_id(full, NOW_MS), event_id(NOW_MS + 1, 0))
        self.assertEqual(next_event_id(first, NOW_MS + 3), event_id(NOW_MS + 3, 0))
        self.assertEqual(next_event_id(0, 0), 1)  # a clock before the epoch


class BusUrlTests(unittest.TestCase):
    def test_redis_urls(self):
        """``redis://host:port/db``; port 6379 and database 0 by default; user and
        password taken, and never shown by ``str``."""
        address = parse_bus_url("redis://127.0.0.1:6390/3")
        self.assertEqual((address.host, address.port, address.db), ("127.0.0.1", 6390, 3))
        address = parse_bus_url("redis://redis.example")
        self.assertEqual((address.port, address.db, address.password), (6379, 0, None))
        address = parse_bus_url("redis://bus:s%40cret@[::1]:7000/1")
        self.assertEqual(
            (address.host, address.username, address.password), ("::1", "bus", "s@cret")
        )
        self.assertEqual(str(address), "redis://***@[::1]:7000/1")
        self.assertNotIn("cret", repr(address))

    def test_bad_urls_say_what_is_expected(self):
        """Each unusable URL raises ValueError with a one-line reason quoting the
        expected form."""
        for url in (
            "", "nats://127.0.0.1:4222", "redis://", "redis://h:99999/0", "redis://h:6379/x",
            "redis://h:6379/0?timeout=1", "127.0.0.1:6379",
        ):  # fmt: skip
            with self.assertRaises(ValueError, msg=url) as raised:
                parse_bus_url(url)
            self.assertIn("redis://host:port/db", str(raised.exception))
            self.assertNotIn("\n", str(raised.exception))

    def test_open_bus_without_url_is_single_process(self):
        """No ``[cluster] bus``: the NullBus (status "off"); a redis:// URL: RedisBus."""
        self.assertIsInstance(open_bus(None, Clock()), NullBus)
        self.assertEqual(open_bus("", Clock()).status, "off")
        bus = open_bus("redis://127.0.0.1:1/0", reactor)
        self.assertIsInstance(bus, RedisBus)
        self.assertEqual(bus.status, "down")  # not started


class Recorder:
    """Collects what a bus hands over: messages, events, gaps and statuses."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.events: list[BusEvent] = []
        self.gaps: list[Gap] = []
        self.statuses: list[str] = []
        self.timeline: list[Any] = []  # events and gaps, in the order they came

    def message(self, message: dict) -> None:
        self.messages.append(message)

    def event(self, event: BusEvent) -> None:
        self.events.append(event)
        self.timeline.append(event)

    def gap(self, gap: Gap) -> None:
        self.gaps.append(gap)
        self.timeline.append(gap)

    def status(self, status: str) -> None:
        self.statuses.append(status)


class NullBusTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW_MS / 1000)
        self.bus = NullBus(self.clock, max_events=5)
        self.seen = Recorder()

    def test_status_is_off_and_start_stop_fire_at_once(self):
        """A single process has no bus: status "off", start and stop fire at once."""
        self.assertEqual(self.bus.status, "off")
        self.assertIsNone(self.successResultOf(self.bus.start()))
        self.assertIsNone(self.successResultOf(self.bus.stop()))

    def test_publish_delivers_synchronously_a_copy_to_each_handler(self):
        """publish calls this process's handlers before it returns, each with its own
        decoded copy (a handler that mutates its message changes nobody else's); other
        channels and removed handlers get nothing."""
        first: list[dict] = []

        def mutate(message: dict) -> None:
            first.append(message)
            message["n"] = 99

        self.bus.subscribe("replica.b", mutate)
        self.bus.subscribe("replica.b", self.seen.message)
        unsubscribe = self.bus.subscribe("replica.c", self.seen.message)
        unsubscribe()
        sent = {"n": 1, "args": {"a": [1, 2]}}
        self.assertEqual(self.successResultOf(self.bus.publish("replica.b", sent)), 1)
        self.assertEqual(self.seen.messages, [{"n": 1, "args": {"a": [1, 2]}}])
        self.assertEqual(sent["n"], 1)
        self.assertEqual(self.successResultOf(self.bus.publish("replica.c", {"x": 1})), 0)
        self.assertEqual(len(self.seen.messages), 1)
        self.assertEqual((self.bus.counters.published, self.bus.counters.received), (2, 1))

    def test_a_failing_handler_does_not_stop_the_others(self):
        """A handler that raises is logged and counted; the next handler still runs."""

        def broken(message: dict) -> None:
            raise RuntimeError("boom")

        self.bus.subscribe("ch", broken)
        self.bus.subscribe("ch", self.seen.message)
        self.successResultOf(self.bus.publish("ch", {"k": "v"}))
        self.assertEqual(self.seen.messages, [{"k": "v"}])
        self.assertEqual(self.bus.counters.handler_errors, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_bad_messages_and_names_refused(self):
        """Messages must be JSON objects, names short printable ASCII and page sizes
        positive: a caller bug raises at once (TypeError / ValueError)."""
        with self.assertRaises(TypeError):
            self.bus.publish("ch", ["not", "an", "object"])  # type: ignore[arg-type]
        with self.assertRaises(TypeError):
            self.bus.publish("ch", {"x": object()})
        with self.assertRaises(ValueError):
            self.bus.read_events(0, limit=0)
        for name in ("", "with space", "x" * 129, "é"):
            with self.assertRaises(ValueError):
                self.bus.publish(name, {})
            with self.assertRaises(ValueError):
                self.bus.append_event(name, {})

    def test_secrets_travel_in_messages_but_never_in_the_stream(self):
        """A ``Secret`` crosses publish as its plain value, is hidden in its repr, and
        append_event refuses data holding one, however deep."""
        self.bus.subscribe("ch", self.seen.message)
        self.successResultOf(self.bus.publish("ch", {"args": {"password": Secret("hunter2")}}))
        self.assertEqual(self.seen.messages, [{"args": {"password": "hunter2"}}])
        self.assertNotIn("hunter2", repr(Secret("hunter2")))
        with self.assertRaises(ValueError):
            self.bus.append_event("command", {"args": [{"password": Secret("hunter2")}]})
        self.assertEqual(self.successResultOf(self.bus.read_events(0)).events, [])

    def test_events_get_increasing_clock_ids_and_pages(self):
        """Appended events get ids from the clock, strictly increasing within one
        millisecond; read_events(after) returns those after ``after`` in order."""
        ids = [self.successResultOf(self.bus.append_event("t", {"i": i})) for i in range(3)]
        self.assertEqual(ids, [event_id(NOW_MS, 0), event_id(NOW_MS, 1), event_id(NOW_MS, 2)])
        self.clock.advance(0.010)
        ids.append(self.successResultOf(self.bus.append_event("t", {"i": 3})))
        self.assertEqual(ids[-1], event_id(NOW_MS + 10, 0))
        page = self.successResultOf(self.bus.read_events(ids[0]))
        self.assertEqual([e.data["i"] for e in page.events], [1, 2, 3])
        self.assertEqual([e.id for e in page.events], ids[1:])
        self.assertFalse(page.gap)
        up_to_date = self.successResultOf(self.bus.read_events(ids[-1]))
        self.assertEqual((up_to_date.events, up_to_date.gap), ([], False))

    def test_trimmed_history_is_a_gap(self):
        """Past ``max_events`` the oldest go: a reader after a forgotten id, or after an
        id this process never gave (before a restart), is told of a gap."""
        ids = [self.successResultOf(self.bus.append_event("t", {"i": i})) for i in range(8)]
        page = self.successResultOf(self.bus.read_events(ids[0]))
        self.assertTrue(page.gap)
        self.assertEqual([e.data["i"] for e in page.events], [3, 4, 5, 6, 7])
        self.assertFalse(self.successResultOf(self.bus.read_events(ids[2])).gap)
        self.assertTrue(self.successResultOf(self.bus.read_events(ids[-1] + 1000)).gap)
        self.assertFalse(self.successResultOf(self.bus.read_events(0)).gap)

    def test_follow_delivers_in_order_with_gaps(self):
        """follow() from an old id replays what is kept (a gap first if some is gone),
        then delivers each new event synchronously; after stop, nothing more."""
        ids = [self.successResultOf(self.bus.append_event("t", {"i": i})) for i in range(7)]
        follower = self.bus.follow(self.seen.event, self.seen.gap, after=ids[0])
        self.assertEqual(self.seen.gaps, [Gap(ids[0], "trimmed")])
        self.assertIsInstance(self.seen.timeline[0], Gap)
        self.assertEqual([e.data["i"] for e in self.seen.events], [2, 3, 4, 5, 6])
        self.successResultOf(self.bus.append_event("t", {"i": 7}))
        self.assertEqual(self.seen.events[-1].data, {"i": 7})
        self.assertEqual(follower.last_id, self.seen.events[-1].id)
        self.successResultOf(follower.stop())
        self.successResultOf(self.bus.append_event("t", {"i": 8}))
        self.assertEqual(len(self.seen.events), 6)

    def test_follower_from_a_previous_process(self):
        """A follower resuming after an id this process never gave (it restarted and
        lost its history) is told ``reset`` at the first new event."""
        self.bus.follow(self.seen.event, self.seen.gap, after=event_id(NOW_MS - 1000, 3))
        stored = self.successResultOf(self.bus.append_event("t", {}))
        self.assertEqual(self.seen.gaps, [Gap(event_id(NOW_MS - 1000, 3), "reset")])
        self.assertEqual([e.id for e in self.seen.events], [stored])

    def test_follow_from_now(self):
        """follow() without ``after`` delivers only events appended from then on."""
        self.successResultOf(self.bus.append_event("t", {"i": 0}))
        self.bus.follow(self.seen.event, self.seen.gap)
        self.successResultOf(self.bus.append_event("t", {"i": 1}))
        self.assertEqual([e.data for e in self.seen.events], [{"i": 1}])
        self.assertEqual(self.seen.gaps, [])


class RedisBusTestCase(unittest.TestCase):
    """A private redis-server and buses on it (fast retries: 0.05-0.3 s)."""

    timeout = 90
    skip = SKIP

    async def setUp(self):
        self.redis = await start_redis(self)

    def bus(self, **options: Any) -> RedisBus:
        options = {"retry_initial": 0.05, "retry_max": 0.3, "reply_timeout": 2.0, **options}
        bus = open_bus(self.redis.url(), reactor, **options)
        assert isinstance(bus, RedisBus)
        self.addCleanup(bus.stop)
        return bus

    async def connected(self, *buses: RedisBus) -> None:
        for bus in buses:
            bus.start()
        await eventually(lambda: all(bus.status == "connected" for bus in buses))

    async def restart_redis(self) -> None:
        await deferToThread(self.redis.stop)
        await deferToThread(self.redis.start)


class RedisPubSubTests(RedisBusTestCase):
    async def test_round_trip_between_two_replicas(self):
        """A message published by one replica reaches the handler another subscribed,
        decoded; publish fires with the number of receivers."""
        a, b = self.bus(), self.bus()
        seen = Recorder()
        b.subscribe("replica.b", seen.message)
        await self.connected(a, b)
        receivers = await a.publish("replica.b", {"command_id": "c1", "args": {"n": [1, "é"]}})
        self.assertEqual(receivers, 1)
        await eventually(lambda: seen.messages)
        self.assertEqual(seen.messages, [{"command_id": "c1", "args": {"n": [1, "é"]}}])
        self.assertEqual(await a.publish("nobody.listens", {}), 0)
        self.assertEqual((a.counters.published, b.counters.received), (2, 1))

    async def test_subscriptions_added_and_removed_while_connected(self):
        """Subscribing while connected takes effect (SUBSCRIBE sent); after the last
        handler of a channel goes, the replica no longer receives it."""
        a, b = self.bus(), self.bus()
        seen = Recorder()
        await self.connected(a, b)
        unsubscribe = b.subscribe("jobs", seen.message)
        await eventually(lambda: self.redis.cli("PUBSUB", "NUMSUB", "viworks:0:jobs").endswith("1"))
        self.assertEqual(await a.publish("jobs", {"job": 1}), 1)
        await eventually(lambda: seen.messages == [{"job": 1}])
        unsubscribe()
        await eventually(lambda: self.redis.cli("PUBSUB", "NUMSUB", "viworks:0:jobs").endswith("0"))
        self.assertEqual(await a.publish("jobs", {"job": 2}), 0)

    async def test_channels_of_databases_stay_apart(self):
        """Redis pub/sub ignores the database number; the bus does not: a replica on
        database 1 does not hear one on database 0."""
        a, b = self.bus(), RedisBus(parse_bus_url(self.redis.url(db=1)), reactor)
        self.addCleanup(b.stop)
        seen = Recorder()
        b.subscribe("replica.b", seen.message)
        await self.connected(a, b)
        self.assertEqual(await a.publish("replica.b", {"x": 1}), 0)

    async def test_resubscribes_after_redis_restarts(self):
        """Redis stops: both replicas go "down" (each status change reported once), a
        publish fires with None at once and is counted, never raised. Redis returns
        on the same port: both reconnect by themselves, the subscription is renewed,
        and messages flow again."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        a, b = self.bus(), self.bus()
        seen, statuses = Recorder(), Recorder()
        b.subscribe("replica.b", seen.message)
        b.on_status(statuses.status)
        await self.connected(a, b)
        self.assertEqual(statuses.statuses, ["connected"])

        await deferToThread(self.redis.stop)
        await eventually(lambda: a.status == b.status == "down")
        started = time.monotonic()
        self.assertIsNone(await a.publish("replica.b", {"during": "outage"}))
        self.assertLess(time.monotonic() - started, 0.5)
        self.assertEqual(a.counters.failed, 1)

        await deferToThread(self.redis.start)
        await eventually(lambda: a.status == b.status == "connected")
        self.assertEqual(statuses.statuses, ["connected", "down", "connected"])
        self.assertEqual(await a.publish("replica.b", {"after": "restart"}), 1)
        await eventually(lambda: seen.messages == [{"after": "restart"}])
        self.assertEqual(b.counters.connects, 2)
        # Logged once per change and per bus, whatever the number of retries meanwhile.
        lines = [e["log_format"] for e in logged if "bus: " in e.get("log_format", "")]
        self.assertEqual(sum("is down" in line for line in lines), 2)
        self.assertEqual(sum(line.startswith("bus: connected") for line in lines), 4)
        self.assertFalse([e for e in logged if "Scheduling retry" in e.get("log_format", "")])

    async def test_unreachable_at_start_then_connects(self):
        """A bus started while Redis is down stays "down" (the replica starts anyway)
        and connects as soon as Redis is there."""
        await deferToThread(self.redis.stop)
        bus = self.bus()
        seen = Recorder()
        bus.subscribe("ch", seen.message)
        bus.start()
        await stays(lambda: bus.status == "down", 1.0)
        await deferToThread(self.redis.start)
        await eventually(lambda: bus.status == "connected")
        self.assertEqual(await bus.publish("ch", {"ok": True}), 1)
        await eventually(lambda: seen.messages == [{"ok": True}])

    async def test_a_silent_redis_is_down(self):
        """A Redis that keeps its connections but stops answering (SIGSTOP) is found by
        the pings and reply timeouts: the bus goes "down", and "connected" again once
        Redis answers (SIGCONT)."""
        bus = self.bus(ping_interval=0.2, reply_timeout=0.5)
        await self.connected(bus)
        await deferToThread(self.redis.pause)
        try:
            await eventually(lambda: bus.status == "down", timeout=10)
            self.assertIsNone(await bus.publish("ch", {}))
        finally:
            await deferToThread(self.redis.resume)
        await eventually(lambda: bus.status == "connected", timeout=10)


class RedisStreamTests(RedisBusTestCase):
    async def test_ids_are_integers_increasing_across_replicas(self):
        """Appends from two replicas, interleaved, get integer ids increasing in the
        order Redis stored them, below 2**53; read_events returns them in that order
        with their data, and the stream entries are ``ms-seq`` of those ids."""
        a, b = self.bus(), self.bus()
        await self.connected(a, b)
        ids = []
        for i in range(40):
            ids.append(await (a if i % 2 else b).append_event("command.done", {"i": i}))
        self.assertTrue(all(isinstance(i, int) and 0 < i < 2**53 for i in ids))
        self.assertEqual(ids, sorted(set(ids)))
        page = await b.read_events(0)
        self.assertFalse(page.gap)
        self.assertEqual([(e.id, e.type, e.data["i"]) for e in page.events],
                         [(id_, "command.done", i) for i, id_ in enumerate(ids)])  # fmt: skip
        entries = self.redis.cli("XRANGE", "viworks:events", "-", "+").split()
        self.assertEqual(entries[0], stream_id_of(ids[0]))
        self.assertEqual(a.counters.appended + b.counters.appended, 40)

    async def test_sequence_overflow_and_clock_behind_the_stream(self):
        """When the stream's last entry is ahead of Redis's clock (a clock step back, or
        4,096 entries in one millisecond) the next id is still the next integer."""
        bus = self.bus()
        await self.connected(bus)
        ahead_ms = int(time.time() * 1000) + 60_000
        self.redis.cli(
            "XADD", "viworks:events", f"{ahead_ms}-4095", "prev", "0-0", "type", "t", "data", "{}"
        )
        self.assertEqual(await bus.append_event("t", {}), event_id(ahead_ms + 1, 0))
        self.assertEqual(await bus.append_event("t", {}), event_id(ahead_ms + 1, 1))

    async def test_script_flushed_from_redis(self):
        """After SCRIPT FLUSH the next append sends the script again and succeeds."""
        bus = self.bus()
        await self.connected(bus)
        first = await bus.append_event("t", {})
        self.redis.cli("SCRIPT", "FLUSH")
        self.assertGreater(await bus.append_event("t", {}), first)

    async def test_trimmed_stream_is_a_gap_for_readers_and_followers(self):
        """Past ``max_events`` (approximate: whole nodes of 100 go) the oldest entries
        are trimmed: read_events after a trimmed id says ``gap``; a follower starting
        there is told ``trimmed`` first, then gets the rest in order."""
        bus = self.bus(max_events=100)
        await self.connected(bus)
        ids = [await bus.append_event("t", {"i": i}) for i in range(450)]
        length = int(self.redis.cli("XLEN", "viworks:events"))
        self.assertLess(length, 450)
        page = await bus.read_events(ids[0], limit=1000)
        self.assertTrue(page.gap)
        self.assertEqual([e.id for e in page.events], ids[-length:])
        self.assertFalse((await bus.read_events(ids[-2])).gap)

        seen = Recorder()
        follower = bus.follow(seen.event, seen.gap, after=ids[0])
        await eventually(lambda: len(seen.events) == length)
        self.assertEqual(seen.timeline[0], Gap(ids[0], "trimmed"))
        self.assertEqual([e.id for e in seen.events], ids[-length:])
        self.assertEqual(seen.gaps, [Gap(ids[0], "trimmed")])
        await follower.stop()

    async def test_follow_live_in_order_across_replicas(self):
        """A follower on one replica gets every event appended by two replicas, once,
        in id order, without a gap; ``last_id`` is the last delivered."""
        a, b = self.bus(block=0.5), self.bus()
        await self.connected(a, b)
        seen = Recorder()
        start = await a.append_event("t", {"i": -1})
        follower = a.follow(seen.event, seen.gap, after=start)
        ids = [await (a if i % 3 else b).append_event("t", {"i": i}) for i in range(60)]
        await eventually(lambda: len(seen.events) == 60)
        self.assertEqual([e.id for e in seen.events], ids)
        self.assertEqual([e.data["i"] for e in seen.events], list(range(60)))
        self.assertEqual(seen.gaps, [])
        self.assertEqual(follower.last_id, ids[-1])
        await follower.stop()
        await b.append_event("t", {"i": 60})
        await stays(lambda: len(seen.events) == 60, 1.0)

    async def test_follower_reports_the_outage_and_the_lost_stream(self):
        """Redis restarts without its data: the follower reports ``down`` when it
        loses Redis, then ``reset`` at the first entry of the new stream, and
        carries on; ids keep growing over the restart."""
        bus = self.bus(block=0.5)
        await self.connected(bus)
        before = await bus.append_event("t", {"n": 1})
        seen = Recorder()
        bus.follow(seen.event, seen.gap, after=before)
        await self.restart_redis()
        await eventually(lambda: bus.status == "connected")
        await eventually(lambda: seen.gaps)
        self.assertEqual(seen.gaps, [Gap(before, "down")])
        after = await bus.append_event("t", {"n": 2})
        self.assertGreater(after, before)
        await eventually(lambda: seen.events)
        self.assertEqual(seen.gaps, [Gap(before, "down"), Gap(before, "reset")])
        self.assertEqual([e.id for e in seen.events], [after])

    async def test_an_append_that_failed_is_a_gap_for_followers(self):
        """A replica that could not append (Redis unreachable for it) flags its next
        stored event: other replicas' followers are told ``lost`` before it."""
        a, b = self.bus(), self.bus()
        await self.connected(b)
        first = await b.append_event("t", {"n": 1})
        seen = Recorder()
        b.follow(seen.event, seen.gap, after=first)
        self.assertIsNone(await a.append_event("t", {"n": "not stored"}))  # a: not connected
        self.assertEqual(a.counters.failed, 1)
        await self.connected(a)
        stored = await a.append_event("t", {"n": 2})
        await eventually(lambda: seen.events)
        self.assertEqual(seen.timeline, [Gap(first, "lost"), BusEvent(stored, "t", {"n": 2})])
        await a.append_event("t", {"n": 3})
        await eventually(lambda: len(seen.events) == 2)
        self.assertEqual(len(seen.gaps), 1)

    async def test_read_events_while_down(self):
        """read_events is a query: while the bus is down it fails with BusUnavailable
        (the caller falls back on what it has)."""
        bus = self.bus()
        with self.assertRaises(BusUnavailable):
            await bus.read_events(0)

    async def test_foreign_entries_are_skipped(self):
        """Entries another writer put in the stream (no ``prev``, bad JSON) are not
        delivered; the chain of ours around them still holds."""
        bus = self.bus()
        await self.connected(bus)
        first = await bus.append_event("t", {"n": 1})
        self.redis.cli("XADD", "viworks:events", "*", "junk", "1")
        second = await bus.append_event("t", {"n": 2})
        page = await bus.read_events(first)
        self.assertEqual([e.id for e in page.events], [second])
        self.assertTrue(page.gap)  # ours no longer follow each other: something came between


class RedisServerFixtureTests(unittest.TestCase):
    skip = SKIP
    timeout = 60

    async def test_private_server_is_stopped_by_pid(self):
        """The fixture's redis-server answers on its own port (never 6379) and is gone
        once stopped."""
        redis = await start_redis(self)
        self.assertNotEqual(redis.port, 6379)
        self.assertTrue(redis.ping())
        self.assertEqual(redis.cli("CONFIG", "GET", "save").split(), ["save"])
        await deferToThread(redis.stop)
        self.assertFalse(redis.ping())
        self.assertFalse(redis.running)
        self.assertIsInstance(redis, RedisServer)
