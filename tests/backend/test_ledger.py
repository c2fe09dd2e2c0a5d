"""The ledger's deadlines and redelivery rules, over a real SQLite store and a Clock."""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.backend.helpers import Backend, FakeSession, add_agent, result_fields, sqlite_store, wire
from tests.stack import poll
from viworks.backend.registry import SessionRegistry

SECRET_ARGS = {"username": "alice", "password": "s3cret-pw!"}


class LedgerTests(unittest.TestCase):
    async def _setUp(self):
        self.store = await sqlite_store(self)
        await add_agent(self.store)
        self.clock = Clock()
        self.clock.advance(5000)
        self.registry = SessionRegistry()
        self.backend = self.new_backend()
        self.ledger = self.backend.ledger

    def setUp(self):
        return Deferred.fromCoroutine(self._setUp())

    def new_backend(self, **backend_keys) -> Backend:
        """The command path over the test's store and registry (again: a restart)."""
        return wire(
            self, self.store, self.clock, registry=self.registry, lost_grace=3, **backend_keys
        )

    async def status(self, command_id: str) -> str:
        return (await self.store.get_command(command_id)).status

    async def settle(self, command_id: str, status: str) -> None:
        """Wait (bounded) until the store shows ``status``: sweeps run in the store's thread."""
        await poll(lambda: self.status(command_id), lambda s: s == status)

    def online(self) -> FakeSession:
        session = FakeSession("gw-1")
        self.registry.register(session)
        return session

    async def test_expires_at_deadline(self):
        """A queued command expires at its TTL deadline, wakes its waiters, and is never sent."""
        await self.backend.commands.start()
        command, created = await self.ledger.submit("gw-1", "ping", {}, ttl=10)
        self.assertTrue(created)
        waiter = self.backend.waiters.wait(command.command_id, 60)
        self.clock.advance(9)
        self.assertEqual(await self.status(command.command_id), "queued")
        self.clock.advance(1)
        await self.settle(command.command_id, "expired")
        finished = await waiter
        self.assertEqual(finished.error["code"], "EXPIRED")
        session = self.online()
        self.assertEqual(await self.backend.commands.dispatcher.deliver_pending(session), 0)
        self.assertEqual(session.commands(), [])

    async def test_deadlines_survive_restart(self):
        """A new ledger (backend restart) re-arms the deadline of commands already stored."""
        command, _ = await self.ledger.submit("gw-1", "ping", {}, ttl=30)
        self.backend.commands.stop()
        restarted = self.new_backend()
        await restarted.commands.start()
        self.clock.advance(30)
        await self.settle(command.command_id, "expired")

    async def running(self, session: FakeSession, timeout: float = 5) -> str:
        """A command gw-1 has acknowledged (it runs); its id."""
        command, _ = await self.ledger.submit("gw-1", "ping", {}, timeout=timeout)
        await self.ledger.on_ack(session, command.command_id)
        return command.command_id

    async def finished_audit(self, command_id: str) -> list[tuple[str, str, dict]]:
        """``(actor, outcome, detail)`` of the command's ``command.finished`` records."""
        await self.backend.audit.flush()
        return [
            (r.actor, r.outcome, json.loads(r.detail))
            for r in await self.store.audit_records()
            if r.action == "command.finished" and r.target == f"command:{command_id}"
        ]

    async def test_lost_after_timeout_and_grace(self):
        """A running command with no result becomes lost after timeout + grace."""
        await self.backend.commands.start()
        command_id = await self.running(self.online())
        self.assertEqual(await self.status(command_id), "running")
        self.clock.advance(7.9)
        self.assertEqual(await self.status(command_id), "running")
        self.clock.advance(0.1)
        await self.settle(command_id, "lost")

    async def test_late_result_replaces_lost(self):
        """The real outcome its own agent reports for a lost command replaces lost, once;
        the history and the audit log keep both. Another agent's result, the agent's own
        "lost" and a second result change nothing (each is acknowledged)."""
        await self.backend.commands.start()
        session = self.online()
        command_id = await self.running(session)
        self.clock.advance(8)
        await self.settle(command_id, "lost")
        statuses = []
        self.backend.hub.subscribe(lambda e: statuses.append(e.data.get("status")))

        stranger = FakeSession("gw-2")
        await self.ledger.on_result(stranger, result_fields(command_id))
        self.assertEqual([f.type for f in stranger.sent], ["error", "result_ack"])
        restarted = result_fields(command_id, status="lost", error={"code": "AGENT_RESTARTED"})
        await self.ledger.on_result(session, restarted)
        self.assertEqual(await self.status(command_id), "lost")

        self.clock.advance(100)  # e.g. the agent was away: it reports from its journal
        await self.ledger.on_result(session, result_fields(command_id, exit_code=0))
        command = await self.store.get_command(command_id)
        self.assertEqual((command.status, command.exit_code), ("succeeded", 0))
        self.assertIsNone(command.error)
        self.assertEqual(statuses, ["succeeded"])
        events = await self.store.command_events(command_id)
        self.assertEqual(
            [e.status for e in events], ["queued", "dispatched", "running", "lost", "succeeded"]
        )
        self.assertEqual(events[-1].detail, {"replaces": "lost", "lost_at": events[-2].at})
        self.assertEqual(events[-2].detail["code"], "LOST")

        await self.ledger.on_result(session, result_fields(command_id, status="failed"))
        self.assertEqual(await self.status(command_id), "succeeded")
        self.assertEqual([f.type for f in session.sent[-3:]], ["result_ack"] * 3)
        audited = await self.finished_audit(command_id)
        self.assertEqual(
            [(a, o) for a, o, _ in audited], [("system", "lost"), ("gw-1", "succeeded")]
        )
        self.assertEqual(audited[1][2]["replaces"], "lost")
        self.assertNotIn("replaces", audited[0][2])

    async def test_startup_grace_after_an_outage(self):
        """After an outage longer than timeout + lost_grace, a restarted ledger declares
        nothing lost during its startup_grace: an agent reconnecting meanwhile reports
        its real outcome (no lost in its history); what is still unreported then is lost."""
        await self.backend.commands.start()
        session = self.online()
        reported, silent = await self.running(session), await self.running(session)
        self.backend.commands.stop()
        self.registry.unregister(session)
        self.clock.advance(600)  # the outage: far beyond timeout (5) + lost_grace (3)

        restarted = self.new_backend(startup_grace=30)
        await restarted.commands.start()
        self.clock.advance(29.9)
        for command_id in (reported, silent):
            self.assertEqual(await self.status(command_id), "running")
        await restarted.ledger.on_result(self.online(), result_fields(reported))
        self.assertEqual(await self.status(reported), "succeeded")
        self.clock.advance(0.1)
        await self.settle(silent, "lost")
        history = [e.status for e in await self.store.command_events(reported)]
        self.assertEqual(history, ["queued", "dispatched", "running", "succeeded"])

    async def test_agent_reports_lost(self):
        """A lost result reported by the agent (it restarted mid-verb) is recorded as lost."""
        session = self.online()
        command, _ = await self.ledger.submit("gw-1", "ping", {})
        await self.ledger.on_ack(session, command.command_id)
        await self.ledger.on_result(session, result_fields(command.command_id, status="lost"))
        self.assertEqual(await self.status(command.command_id), "lost")

    async def test_unacknowledged_redelivered_in_order(self):
        """On reconnect, sent-but-unacknowledged commands go out again before queued ones."""
        first = self.online()
        sent, _ = await self.ledger.submit("gw-1", "ping", {})
        self.registry.unregister(first)
        queued, _ = await self.ledger.submit("gw-1", "ping", {})
        second = self.online()
        self.assertEqual(await self.backend.commands.dispatcher.deliver_pending(second), 2)
        self.assertEqual(
            [f["command_id"] for f in second.commands()],
            [sent.command_id, queued.command_id],
        )

    async def test_secrets_after_restart(self):
        """After a restart, a queued command with secrets fails; a sent one is redelivered
        marked redacted (the agent answers it from its journal or refuses it)."""
        session = self.online()
        dispatched, _ = await self.ledger.submit("gw-1", "create_panel_user", SECRET_ARGS)
        self.registry.unregister(session)
        queued, _ = await self.ledger.submit("gw-1", "create_panel_user", SECRET_ARGS)
        restarted = self.new_backend()
        session = self.online()
        await restarted.commands.dispatcher.deliver_pending(session)
        [frame] = session.commands()
        self.assertEqual(frame["command_id"], dispatched.command_id)
        self.assertTrue(frame.get("redacted"))
        self.assertEqual(frame["args"]["password"], "***")
        failed = await self.store.get_command(queued.command_id)
        self.assertEqual((failed.status, failed.error["code"]), ("failed", "SECRETS_UNAVAILABLE"))

    async def test_unknown_result_acknowledged(self):
        """A result for a command the backend does not know is refused but acknowledged."""
        session = self.online()
        await self.ledger.on_result(session, result_fields("nope"))
        self.assertEqual([f.type for f in session.sent], ["error", "result_ack"])

    async def test_history_recorded(self):
        """Each status a command takes is recorded with its time."""
        session = self.online()
        command, _ = await self.ledger.submit("gw-1", "ping", {})
        await self.ledger.on_ack(session, command.command_id)
        await self.ledger.on_result(session, result_fields(command.command_id))
        events = await self.store.command_events(command.command_id)
        self.assertEqual(
            [e.status for e in events], ["queued", "dispatched", "running", "succeeded"]
        )

    async def test_online_agent_gets_command_from_one_store_write(self):
        """For an online agent the command is stored dispatched (with its queued and
        dispatched events) and sent; if the session goes while the row is written, the
        next HELLO's delivery sends it, and it is never lost track of."""
        session = self.online()
        writes = self.store.batches.interactions
        command, _ = await self.ledger.submit("gw-1", "ping", {})
        # The agent's verbs (one read), then one write.
        self.assertEqual(self.store.batches.interactions - writes, 2)
        self.assertEqual(command.status, "dispatched")
        self.assertEqual([f["command_id"] for f in session.commands()], [command.command_id])
        events = await self.store.command_events(command.command_id)
        self.assertEqual([e.status for e in events], ["queued", "dispatched"])

        submitting = Deferred.fromCoroutine(self.ledger.submit("gw-1", "ping", {}))
        self.registry.unregister(session)
        gone, _ = await submitting
        self.assertEqual(gone.status, "dispatched")
        self.assertNotIn(gone.command_id, [f["command_id"] for f in session.commands()])
        back = self.online()
        self.assertEqual(await self.backend.commands.dispatcher.deliver_pending(back), 2)
        self.assertIn(gone.command_id, [f["command_id"] for f in back.commands()])

    async def test_another_agents_answers_do_not_use_up_the_owed_ones(self):
        """An ack or result naming another agent's command is refused and changes
        nothing: the owner's own ack and result are still expected (flood-exempt)."""
        self.online()
        command, _ = await self.ledger.submit("gw-1", "ping", {})
        command_id = command.command_id
        stranger = FakeSession("gw-2")
        await self.ledger.on_ack(stranger, command_id)
        await self.ledger.on_result(stranger, result_fields(command_id))
        self.assertTrue(self.ledger.expects("ack", command_id, "gw-1"))
        self.assertTrue(self.ledger.expects("result", command_id, "gw-1"))
        self.assertFalse(self.ledger.expects("result", command_id, "gw-2"))
        self.assertEqual((await self.store.get_command(command_id)).status, "dispatched")

    async def test_wait_final_covers_an_early_finish(self):
        """A command that finished before the wait began is returned at once, not after it."""
        session = self.online()
        command, _ = await self.ledger.submit("gw-1", "ping", {})
        await self.ledger.on_result(session, result_fields(command.command_id))
        finished = await self.backend.waiters.wait_final(command.command_id, 30)
        self.assertEqual(finished.status, "succeeded")
        self.assertEqual(self.clock.getDelayedCalls(), [])
