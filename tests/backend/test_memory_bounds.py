"""What a hostile agent can make the backend keep: output, telemetry, events (issue 12).

The ledger and the hub are driven directly (real SQLite store, ``Clock``); the agent
session rules (telemetry size and spacing, the frame budget) over the in-memory
WebSocket harness of ``test_sessions``. The measured bounds against a real backend
process are in ``tests/test_hostile_flood.py``.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.backend import test_sessions
from tests.backend.helpers import FakeSession, add_agent, result_fields, sqlite_store, wire
from viworks import protocol
from viworks.backend.events import EventHub
from viworks.backend.ledger import CommandLedger
from viworks.backend.output_cap import OutputBudget, cap_text, utf8_size
from viworks.backend.registry import SessionRegistry

CAP = 1024


class OutputCapTests(unittest.TestCase):
    def test_cap_text_cuts_on_a_character(self):
        """Text is cut to at most the limit in bytes of UTF-8, never inside a character."""
        self.assertEqual(cap_text("abc", 3), ("abc", False))
        self.assertEqual(cap_text("abcd", 3), ("abc", True))
        self.assertEqual(cap_text("ééé", 5), ("éé", True))  # 2 bytes each: 6 > 5
        self.assertEqual(cap_text("a€", 3), ("a", True))  # € is 3 bytes
        self.assertEqual(cap_text("x", 0), ("", True))
        self.assertEqual(cap_text("", 0), ("", False))
        # A lone surrogate (valid in JSON) counts 3 bytes and does not break the cut.
        self.assertEqual(cap_text("\ud800\ud800", 4), ("\ud800", True))
        self.assertEqual(utf8_size("\ud800é"), 5)

    def test_budget_per_stream(self):
        """A budget keeps up to its limit of each stream and says when it first cuts one."""
        budget = OutputBudget("gw-1", 10)
        self.assertEqual(budget.take("stdout", "123456"), ("123456", False))
        self.assertEqual(budget.take("stdout", "789012"), ("7890", True))
        self.assertEqual(budget.take("stdout", "more"), ("", False))
        self.assertEqual(budget.take("stderr", "0123456789"), ("0123456789", False))
        self.assertEqual(budget.truncated, {"stdout"})


class LedgerOutputTests(unittest.TestCase):
    """Output frames: accepted only while the command runs on that agent, and capped."""

    async def _setUp(self):
        self.store = await sqlite_store(self)
        await add_agent(self.store)
        await add_agent(self.store, "gw-2")
        self.clock = Clock()
        self.clock.advance(5000)
        self.registry = SessionRegistry()
        self.ledger = self.new_ledger()

    def setUp(self):
        return Deferred.fromCoroutine(self._setUp())

    def new_ledger(self) -> CommandLedger:
        """The command path over the test's store and registry (again: a restart)."""
        backend = wire(self, self.store, self.clock, registry=self.registry, max_output_bytes=CAP)
        self.hub = backend.hub
        return backend.ledger

    def online(self, agent_id: str = "gw-1") -> FakeSession:
        session = FakeSession(agent_id)
        self.registry.register(session)
        return session

    async def output(self, session: FakeSession, command_id: str, data: str, **fields) -> None:
        seq = fields.pop("seq", len(await self.store.output_since(command_id, limit=100000)))
        await self.ledger.on_output(
            session,
            {"command_id": command_id, "seq": seq, "stream": "stdout", "data": data, **fields},
        )

    def refusals(self, session: FakeSession) -> list[str | None]:
        return [
            f.get("command_id")
            for f in session.sent
            if f.type == "error" and f["code"] == protocol.NOT_RUNNING
        ]

    async def stored(self, command_id: str) -> str:
        return (await self.store.output_text(command_id))[0]

    async def test_output_only_while_running_on_that_agent(self):
        """Output is stored for a dispatched or running command of the sending agent; for a
        queued, finished, unknown or another agent's command it is refused (NOT_RUNNING)
        and stored nowhere. Today's hole: an agent appended output to its finished command."""
        session, other = self.online(), self.online("gw-2")
        dispatched, _ = await self.ledger.submit("gw-1", "ping", {})
        running, _ = await self.ledger.submit("gw-1", "ping", {})
        finished, _ = await self.ledger.submit("gw-1", "ping", {})
        await self.ledger.on_ack(session, running.command_id)
        await self.ledger.on_ack(session, finished.command_id)
        await self.ledger.on_result(session, result_fields(finished.command_id))
        self.registry.unregister(session)
        queued, _ = await self.ledger.submit("gw-1", "ping", {})
        self.assertEqual(queued.status, "queued")
        events = []
        self.hub.subscribe(lambda e: e.type == "command.output" and events.append(e))

        # Between dispatch and ack the agent may already stream (it sends ack first, but a
        # redelivered command it runs already is never acked again).
        await self.output(session, dispatched.command_id, "early")
        await self.output(session, running.command_id, "live")
        for command in (queued, finished):
            await self.output(session, command.command_id, "x" * 100)
        await self.output(session, "no-such-command", "x")
        await self.output(other, running.command_id, "not yours")

        self.assertEqual(await self.stored(dispatched.command_id), "early")
        self.assertEqual(await self.stored(running.command_id), "live")
        for command in (queued, finished):
            self.assertEqual(await self.stored(command.command_id), "")
        self.assertEqual(
            self.refusals(session),
            [queued.command_id, finished.command_id, "no-such-command"],
        )
        self.assertEqual(self.refusals(other), [running.command_id])
        self.assertEqual([e.data["data"] for e in events], ["early", "live"])

    async def test_no_output_after_the_result(self):
        """Once the agent's result has arrived the command no longer runs there: later
        output is refused even before the result is recorded."""
        session = self.online()
        command, _ = await self.ledger.submit("gw-1", "ping", {})
        command_id = command.command_id
        await self.ledger.on_ack(session, command_id)
        result = Deferred.fromCoroutine(self.ledger.on_result(session, result_fields(command_id)))
        await self.output(session, command_id, "late", seq=0)
        await result
        self.assertEqual(self.refusals(session), [command_id])
        self.assertEqual(await self.stored(command_id), "")

    async def test_after_a_restart_the_store_decides(self):
        """A command made before a restart: output is accepted while the store says it runs
        on that agent, and what is stored already counts against the cap."""
        session = self.online()
        command, _ = await self.ledger.submit("gw-1", "ping", {})
        command_id = command.command_id
        await self.ledger.on_ack(session, command_id)
        await self.output(session, command_id, "a" * 1000)
        self.ledger = self.new_ledger()
        await self.output(session, command_id, "b" * 100)
        await self.output(self.online("gw-2"), command_id, "c")
        self.assertEqual(await self.stored(command_id), "a" * 1000 + "b" * (CAP - 1000))
        self.assertTrue((await self.store.get_command(command_id)).stdout_truncated)
        await self.ledger.on_result(session, result_fields(command_id))
        await self.output(session, command_id, "d")
        self.assertEqual(self.refusals(session), [command_id])

    async def test_stored_output_capped_per_stream(self):
        """Streamed output is kept up to max_output_bytes per stream; the cut sets the
        stream's truncation flag at once, and on the final command even when the agent's
        result says nothing was cut. A result's own stdout/stderr are capped too."""
        session = self.online()
        command, _ = await self.ledger.submit("gw-1", "ping", {})
        command_id = command.command_id
        await self.ledger.on_ack(session, command_id)
        for seq in range(5):
            await self.output(session, command_id, "o" * 400, seq=seq)
        await self.output(session, command_id, "e" * 500, seq=5, stream="stderr")
        stdout, stderr = await self.store.output_text(command_id)
        self.assertEqual((len(stdout), len(stderr)), (CAP, 500))
        row = await self.store.get_command(command_id)
        self.assertEqual((row.stdout_truncated, row.stderr_truncated), (True, False))
        self.assertNotIn(4, [c.seq for c in await self.store.output_since(command_id)])

        await self.ledger.on_result(
            session, result_fields(command_id, stdout="short", stderr="é" * CAP)
        )
        final = await self.store.get_command(command_id)
        self.assertEqual(final.stdout, "short")
        self.assertEqual(final.stderr, "é" * (CAP // 2))
        self.assertEqual((final.stdout_truncated, final.stderr_truncated), (True, True))


class EventHistoryTests(unittest.TestCase):
    def test_history_bounded_in_bytes(self):
        """The hub's history holds at most history_bytes of encoded events: 300 output
        chunks of 100 KiB leave the newest that fit, and a resume point before them
        reports a gap. Today only the count bounded it (300 MiB pinned by 300 chunks)."""
        hub = EventHub(history=10000, history_bytes=1 << 20)
        chunk = "x" * (100 << 10)
        for seq in range(300):
            hub.publish("command.output", {"command_id": "c1", "seq": seq, "data": chunk})
        kept = hub.since(0)
        self.assertLessEqual(hub.history_bytes, 1 << 20)
        self.assertEqual(hub.history_bytes, sum(e.size for e in kept))
        self.assertEqual(len(kept), 10)  # 10 x (100 KiB + a little JSON) fit in 1 MiB
        self.assertEqual([e.data["seq"] for e in kept], list(range(290, 300)))
        # An event is encoded once, as the SSE message every follower writes.
        self.assertTrue(kept[-1].sse.startswith(b"id: 300\nevent: command.output\ndata: {"))
        # Small events are still bounded by count.
        small = EventHub(history=3)
        for i in range(5):
            small.publish("agent.online", {"agent_id": f"gw-{i}"})
        self.assertEqual([e.id for e in small.since(0)], [3, 4, 5])


class SessionTelemetryTests(unittest.TestCase):
    """Telemetry and refused frames over a real AgentSession (the harness of
    ``test_sessions``, borrowed rather than inherited so its tests do not run twice)."""

    _setUp = test_sessions.AgentSessionTests._setUp
    session_factory = test_sessions.AgentSessionTests.session_factory
    connect = test_sessions.AgentSessionTests.connect
    flush = test_sessions.AgentSessionTests.flush
    until = test_sessions.AgentSessionTests.until
    store_until = test_sessions.AgentSessionTests.store_until
    welcomed = test_sessions.AgentSessionTests.welcomed
    _close_all = test_sessions.AgentSessionTests._close_all

    async def _setUpLimits(self) -> None:
        await self._setUp()
        # Room for a report over the 64 KiB cap (the harness allows 4 KiB messages).
        self.factory.setProtocolOptions(maxMessagePayloadSize=1 << 20, maxFramePayloadSize=1 << 20)

    def setUp(self) -> Deferred:
        return Deferred.fromCoroutine(self._setUpLimits())

    async def history(self) -> list:
        return await self.store.telemetry_history("gw-1", limit=100)

    async def test_telemetry_size_cap(self):
        """A report over 64 KiB (encoded) is refused with TOO_LARGE and not stored; one
        under the cap is stored."""
        client = await self.welcomed()
        client.send("telemetry", ts=1.0, metrics={"pad": "x" * protocol.MAX_TELEMETRY_BYTES})
        await self.until(lambda: "TOO_LARGE" in client.error_codes())
        client.send("telemetry", ts=2.0, metrics={"pad": "y" * 60000})
        stored = await self.store_until(self.history, bool)
        self.assertEqual([len(h.data["pad"]) for h in stored], [60000])
        self.assertTrue(client.live)

    async def test_telemetry_spacing(self):
        """Reports closer than telemetry_min_interval are refused (RATE_LIMITED), so an agent
        cannot churn the database with reports; the next one after the interval is stored."""
        self.factory.telemetry_min_interval = 5.0
        client = await self.welcomed()
        client.send("telemetry", ts=1.0, metrics={"n": 1})
        client.send("telemetry", ts=2.0, metrics={"n": 2})
        await self.until(lambda: "RATE_LIMITED" in client.error_codes())
        self.clock.advance(5)
        client.send("telemetry", ts=3.0, metrics={"n": 3})
        stored = await self.store_until(self.history, lambda h: len(h) == 2)
        self.assertEqual([h.data["n"] for h in stored], [3, 1])

    async def test_refused_output_takes_from_the_frame_budget(self):
        """Refused output frames count against the agent's frame budget like any frame:
        past the burst they are dropped (RATE_LIMITED) before any store work."""
        self.factory.frame_rate, self.factory.frame_burst = 1.0, 3.0
        client = await self.welcomed()
        for seq in range(5):
            client.send("output", command_id="finished-or-not", seq=seq, stream="stdout", data="x")
        await self.until(lambda: len(client.error_codes()) == 5)
        # The hello took one of the 3 tokens; refusals come after a store read.
        self.assertEqual(sorted(client.error_codes()), ["NOT_RUNNING"] * 2 + ["RATE_LIMITED"] * 3)
