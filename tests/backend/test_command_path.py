"""The command path's seams, each room on its own: the event hub's delivery, the
dispatcher, the waiters and the outcome audit following ``command.status`` events,
the domain's error codes, and the composition root (``viworks.backend.tap``)."""

from __future__ import annotations

import gc
import json
import os
import re

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from tests.backend.helpers import FakeSession, add_agent, sqlite_store
from tests.stack import Stack, free_port
from viworks import protocol, signing
from viworks.backend.api.errors import STATUS
from viworks.backend.audit import AuditLog
from viworks.backend.commandevents import (
    COMMAND_STATUS,
    CommandChanged,
    CommandStatuses,
    OutcomeAudit,
    command_changed,
)
from viworks.backend.deadlines import Deadlines
from viworks.backend.dispatcher import Dispatcher
from viworks.backend.events import Event, EventHub
from viworks.backend.inflight import InFlightCommands
from viworks.backend.jobs import JobRunner
from viworks.backend.metrics import Metrics
from viworks.backend.model import JOB_STATUSES, Command, NewCommand
from viworks.backend.registry import SessionRegistry
from viworks.backend.secrecy import SecretParams
from viworks.backend.tap import build_backend
from viworks.backend.waiters import CommandWaiters

KEY = signing.generate_private_key()


#: A command gw-1 ran: dispatched at 100, finished at 101.
SUCCEEDED = Command(
    command_id="c1",
    agent_id="gw-1",
    verb="ping",
    args={},
    status="succeeded",
    timeout=30.0,
    exit_code=0,
    result=None,
    stdout="out",
    stderr="",
    error=None,
    stdout_truncated=False,
    stderr_truncated=False,
    created_at=99.0,
    dispatched_at=100.0,
    started_at=100.5,
    finished_at=101.0,
    expires_at=1099.0,
    cancel_requested_at=None,
)


def command(command_id: str = "c1", **fields: object) -> Command:
    """``SUCCEEDED`` with another id and fields."""
    return attrs.evolve(SUCCEEDED, command_id=command_id, **fields)


def new_command(command_id: str) -> NewCommand:
    """A command for gw-1 to create (queued)."""
    return NewCommand(
        command_id=command_id, agent_id="gw-1", verb="ping", created_at=999.0, timeout=30.0
    )


class Recipient:
    """All a dispatcher may use of a session: who, which protocol, a way to send."""

    def __init__(self, agent_protocol: int = protocol.HELLO_PROTOCOL) -> None:
        self.agent_id = "gw-1"
        self.agent_protocol = agent_protocol
        self.frames: list[protocol.Frame] = []

    def send_frame(self, payload: bytes) -> None:
        self.frames.append(protocol.decode(payload))


class HubTests(unittest.TestCase):
    """What every subscriber of the event hub can rely on."""

    def test_events_arrive_in_id_order_even_when_a_subscriber_publishes(self):
        """An event published by a subscriber reaches everyone after the one being
        delivered (as job.progress follows the command.status that caused it)."""
        hub = EventHub()
        hub.subscribe(lambda e: e.type == "a" and hub.publish("b", {}))
        seen: list[list[int]] = [[], []]
        hub.subscribe(lambda e: seen[0].append(e.id))
        hub.subscribe(lambda e: seen[1].append(e.id), last=True)
        hub.publish("a", {})
        self.assertEqual(seen, [[1, 2], [1, 2]])

    def test_last_subscribers_run_after_the_others(self):
        """A ``last`` subscriber (one that resumes waiting code) sees an event after
        every other subscriber, even those that subscribed after it."""
        hub = EventHub()
        order: list[str] = []
        hub.subscribe(lambda e: order.append("last"), last=True)
        hub.subscribe(lambda e: order.append("early"))
        hub.subscribe(lambda e: order.append("late"))
        hub.publish("x", {})
        self.assertEqual(order, ["early", "late", "last"])

    def test_a_failing_subscriber_does_not_stop_the_others(self):
        """A subscriber that raises is logged; the others still get the event."""
        hub = EventHub()
        seen: list[int] = []

        def broken(event: Event) -> None:
            raise RuntimeError("boom")

        hub.subscribe(broken)
        hub.subscribe(lambda e: seen.append(e.id))
        hub.publish("x", {})
        self.assertEqual(seen, [1])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_details_only_for_those_who_ask(self):
        """The in-process detail goes to subscribers that asked for details; followers
        and the history get the event without it (a final command holds its output)."""
        hub = EventHub()
        plain: list[Event] = []
        detailed: list[Event] = []
        hub.subscribe(plain.append)
        hub.subscribe(detailed.append, details=True)
        change = CommandChanged(command(stdout="x" * 1000))
        hub.publish(COMMAND_STATUS, change.wire(), change)
        self.assertIs(command_changed(detailed[0]), change)
        for event in (plain[0], hub.since(0)[0]):
            self.assertIsNone(command_changed(event))
            self.assertEqual(
                event.data,
                {"command_id": "c1", "agent_id": "gw-1", "verb": "ping", "status": "succeeded"},
            )
        self.assertEqual(plain[0].sse, detailed[0].sse)

    def test_unsubscribe(self):
        """After unsubscribing, a subscriber gets nothing more (either group)."""
        hub = EventHub()
        seen: list[int] = []
        for last in (False, True):
            hub.subscribe(lambda e: seen.append(e.id), last=last)()
        hub.publish("x", {})
        self.assertEqual(seen, [])


class FollowerTests(unittest.TestCase):
    """Waiters and the outcome audit learn of a command's end from the hub alone."""

    async def _setUp(self) -> None:
        self.store = await sqlite_store(self)
        self.clock = Clock()
        self.clock.advance(1000)
        self.hub = EventHub()

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._setUp())

    def finish(self, done: Command, replaces: str | None = None) -> None:
        """Publish a change the way the command path does."""
        CommandStatuses(self.store, self.hub, self.clock).changed(done, replaces)

    def test_waiter_woken_by_the_final_event(self):
        """A waiter fires with the command the final event carries (no store read),
        after every other subscriber had the event; a non-final event wakes nothing."""
        waiters = CommandWaiters(self.hub, self.store, self.clock)
        seen: list[str] = []
        self.hub.subscribe(lambda e: seen.append(e.data["status"]))
        got: list[tuple[Command | None, list[str]]] = []
        waiters.wait("c1", 30).addCallback(lambda c: got.append((c, list(seen))))
        self.finish(command(status="running"))
        self.assertEqual(got, [])
        done = command()
        self.finish(done)
        self.assertEqual(got, [(done, ["running", "succeeded"])])
        self.assertEqual(self.clock.getDelayedCalls(), [], "its timer went with it")

    async def test_waiter_reads_the_store_for_a_relayed_event(self):
        """An event with only its wire form (a relay from another process) wakes the
        waiter with the command read from the store."""
        await add_agent(self.store)
        stored = await self.store.create_command(
            new_command("c9"), dispatched_at=self.clock.seconds()
        )
        finished = await self.store.transition("c9", "failed", 1001.0, exit_code=3)
        waiters = CommandWaiters(self.hub, self.store, self.clock)
        d = waiters.wait(stored.command_id, 30)
        self.hub.publish(COMMAND_STATUS, CommandChanged(finished).wire())
        woken = await d
        self.assertEqual((woken.status, woken.exit_code), ("failed", 3))

    def test_waiter_times_out_and_stop_answers_none(self):
        """A waiter gets None after its time, or at once when the backend stops."""
        waiters = CommandWaiters(self.hub, self.store, self.clock)
        got: list[object] = []
        waiters.wait("c1", 5).addCallback(got.append)
        waiters.wait("c2", 60).addCallback(got.append)
        self.clock.advance(5)
        self.assertEqual(got, [None])
        waiters.stop()
        self.assertEqual(got, [None, None])
        self.finish(command("c2"))
        self.assertEqual(got, [None, None])

    async def test_outcomes_audited_from_events(self):
        """Each final change this process published is audited once as command.finished:
        by the agent when it reported, by "system" when the backend decided; a late
        result names what it replaced. Other events audit nothing."""
        audit_log = AuditLog(self.store, self.clock)
        OutcomeAudit(self.hub, audit_log)
        self.finish(command("c1", status="running"))
        self.finish(command("c1"))
        self.finish(command("c2", status="expired", dispatched_at=None, exit_code=None))
        self.finish(command("c3", status="lost", error={"code": "LOST"}))
        self.finish(command("c3", status="succeeded"), replaces="lost")
        self.hub.publish(COMMAND_STATUS, CommandChanged(command("c4")).wire())  # a relay
        self.hub.publish("agent.online", {"agent_id": "gw-1"})
        await audit_log.flush()
        rows = [r for r in await self.store.audit_records() if r.action == "command.finished"]
        self.assertEqual(
            [(r.target, r.actor, r.outcome) for r in rows],
            [
                ("command:c1", "gw-1", "succeeded"),
                ("command:c2", "system", "expired"),
                ("command:c3", "system", "lost"),
                ("command:c3", "gw-1", "succeeded"),
            ],
        )
        details = [json.loads(r.detail) for r in rows]
        self.assertEqual(
            details[0], {"agent_id": "gw-1", "verb": "ping", "exit_code": 0, "error": None}
        )
        self.assertEqual(details[2]["error"], "LOST")
        self.assertEqual(details[3]["replaces"], "lost")


class DispatcherTests(unittest.TestCase):
    """The dispatcher alone: what it puts on the wire, and delivery on HELLO."""

    async def _setUp(self) -> None:
        self.store = await sqlite_store(self)
        await add_agent(self.store)
        self.clock = Clock()
        self.clock.advance(1000)
        self.hub = EventHub()
        self.registry = SessionRegistry()
        self.statuses = CommandStatuses(self.store, self.hub, self.clock)
        self.deadlines = Deadlines(
            self.store, self.statuses, self.clock, lost_grace=5, startup_grace=0
        )
        self.addCleanup(self.deadlines.stop)
        self.inflight = InFlightCommands()
        self.dispatcher = Dispatcher(
            store=self.store,
            registry=self.registry,
            clock=self.clock,
            inflight=self.inflight,
            statuses=self.statuses,
            deadlines=self.deadlines,
            metrics=Metrics(),
            secrets=SecretParams(),
            signing_key=KEY,
        )

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._setUp())

    async def test_command_frame_signed_and_its_loss_watched(self):
        """A command goes out as a command frame with the in-memory args (the stored
        ones are redacted), signed for the agent's protocol; the deadlines then watch
        for its loss (timeout + lost_grace after sending)."""
        await self.deadlines.start()
        session = Recipient()
        stored = command(status="dispatched", args={"password": "***"})
        self.dispatcher.send(session, stored, {"password": "s3cret"}, 1000.0)
        [frame] = session.frames
        self.assertEqual(
            (frame.type, frame["command_id"], frame["args"], frame["timeout"]),
            ("command", "c1", {"password": "s3cret"}, 30.0),
        )
        envelope = signing.Verifier([KEY.public_key()]).check(
            frame.fields, agent_id="gw-1", now=self.clock.seconds()
        )
        self.assertEqual(envelope.timeout, 30.0)
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [1035.0])

    def test_cancel_frame_signed_or_not(self):
        """Cancels are signed with the key in use; without one they go out unsigned."""
        session = Recipient()
        self.dispatcher.send_cancel(session, "c1")
        self.dispatcher.set_signing_key(None)
        self.dispatcher.send_cancel(session, "c1")
        self.assertEqual([f.type for f in session.frames], ["cancel", "cancel"])
        self.assertIn("signature", session.frames[0].fields)
        self.assertNotIn("signature", session.frames[1].fields)

    async def test_deliver_pending_publishes_each_dispatch(self):
        """On HELLO the agent gets what waited for it, oldest first; each dispatch is
        recorded (compare-and-set) and published as a command.status event."""
        for command_id in ("q1", "q2"):
            await self.store.create_command(new_command(command_id))
        events: list[CommandChanged | None] = []
        self.hub.subscribe(lambda e: events.append(command_changed(e)), details=True)
        session = FakeSession("gw-1")
        self.registry.register(session)
        self.assertEqual(await self.dispatcher.deliver_pending(session), 2)
        self.assertEqual([f["command_id"] for f in session.commands()], ["q1", "q2"])
        self.assertEqual(
            [(c.command.command_id, c.command.status) for c in events if c is not None],
            [("q1", "dispatched"), ("q2", "dispatched")],
        )
        self.assertEqual(await self.dispatcher.deliver_pending(session), 2, "sent again")


class DomainErrorTests(unittest.TestCase):
    def test_every_code_raised_has_its_status(self):
        """Every code the backend's domain raises (``DomainError("CODE", ...)``) has an
        HTTP status in the API's table, as it had when the errors carried statuses."""
        backend = os.path.join(os.path.dirname(__file__), "..", "..", "viworks", "backend")
        raised: set[str] = set()
        for directory, _, files in os.walk(backend):
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(directory, name)) as f:
                        raised |= set(re.findall(r'DomainError\(\s*"([A-Z_]+)",', f.read()))
        # jobs.py: DomainError("JOB_" + status.upper(), ...) for a job action refused.
        raised |= {"JOB_" + status.upper() for status in JOB_STATUSES}
        self.assertGreater(len(raised), 10)
        self.assertEqual(raised - set(STATUS), set())
        self.assertEqual(
            {code: STATUS[code] for code in sorted(raised)},
            {
                "AGENT_NOT_FOUND": 404,
                "ALREADY_FINISHED": 409,
                "BAD_REQUEST": 400,
                "BAD_SELECTOR": 400,
                "COMMAND_NOT_FOUND": 404,
                "FORBIDDEN": 403,
                "IDEMPOTENCY_CONFLICT": 409,
                "INVALID_ARGS": 422,
                "JOB_CANCELLED": 409,
                "JOB_COMPLETED": 409,
                "JOB_NOT_FOUND": 404,
                "JOB_PAUSED": 409,
                "JOB_RUNNING": 409,
                "JOB_STOPPED": 409,
                "NO_TARGETS": 422,
                "UNKNOWN_VERB": 422,
            },
        )


class CompositionTests(unittest.TestCase):
    def test_one_of_each_shared(self):
        """build_backend makes one job runner, one hub, one audit log, one metrics and
        one admission budget, and hands the same ones to everything that uses them
        (the API used to make a second job runner, subscribed to the same events)."""
        stack = Stack(self)
        config = stack.backend_config(
            proxied_ws_bind=f"127.0.0.1:{free_port()}", trusted_proxies=["127.0.0.1"]
        )
        gc.collect()
        runners = sum(isinstance(o, JobRunner) for o in gc.get_objects())
        parts = build_backend(config, MemoryReactorClock()).parts
        gc.collect()
        self.assertEqual(sum(isinstance(o, JobRunner) for o in gc.get_objects()), runners + 1)
        commands, api, proxied = parts.commands, parts.api, parts.proxied_sessions
        assert proxied is not None
        self.assertIs(api.jobs, commands.jobs)
        self.assertIs(api.ledger, commands.ledger)
        self.assertIs(api.waiters, commands.waiters)
        for factory in (parts.sessions, proxied):
            self.assertIs(factory.ledger, commands.ledger)
            self.assertIs(factory.dispatcher, commands.dispatcher)
            self.assertIs(factory.secrets, commands.secrets)
            self.assertIs(factory.hub, parts.hub)
            self.assertIs(factory.audit, parts.audit)
            self.assertIs(factory.metrics, parts.metrics)
            self.assertIs(factory.admission, parts.sessions.admission)
        self.assertIs(api.hub, parts.hub)
        self.assertIs(api.audit, parts.audit)
        self.assertIs(api.metrics, parts.metrics)
        self.assertIs(api.auth_failures.audit, parts.audit)
        self.assertIs(commands.jobs.secrets, commands.secrets)
        self.assertEqual(parts.revocations.factories, [parts.sessions, proxied])
        self.assertTrue(attrs.has(type(parts)))
