"""Store tests, run against SQLite and (when reachable) PostgreSQL."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import stat
import threading
from typing import Any

import attrs
from twisted.internet import defer, reactor, task
from twisted.python.monkey import MonkeyPatcher
from twisted.trial import unittest

from viworks.backend import auditchain
from viworks.backend.model import (
    AgentCertificate,
    AgentSummary,
    Command,
    CommandEvent,
    Job,
    NewCommand,
    OutputChunk,
    TelemetryReport,
    Token,
)
from viworks.backend.store import (
    DuplicateToken,
    IdempotencyConflict,
    SchemaTooNew,
    SQLStore,
    StoreError,
    open_store,
)
from viworks.backend.store import schema as store_schema
from viworks.backend.store.batch import StoreClosed

POSTGRES_URL = os.environ.get("VIWORKS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

VERBS = {"ping": {"args": {}}, "exec": {"args": {"cmd": "string"}}}


def _command(command_id: str, agent_id: str = "gw1", **fields: Any) -> NewCommand:
    base: dict[str, Any] = {
        "command_id": command_id,
        "agent_id": agent_id,
        "verb": "ping",
        "args": {"count": 1},
        "timeout": 30.0,
        "created_at": 1000.0,
    }
    base.update(fields)
    return NewCommand(**base)


def started(coroutine: Any) -> defer.Deferred:
    """Start a store call now (a coroutine only runs once awaited)."""
    return defer.Deferred.fromCoroutine(coroutine)


class StoreTestsMixin:
    """Behaviour both engines must share. Subclasses provide ``make_store``."""

    def make_store(self) -> SQLStore:
        raise NotImplementedError

    async def open_store(self) -> SQLStore:
        store = self.make_store()
        self.addCleanup(store.close)
        await store.open()
        return store

    async def online(
        self, store: SQLStore, agent_id: str = "gw1", session_id: str = "s1", now: float = 100.0
    ) -> dict[str, Any]:
        return await store.upsert_agent_online(
            agent_id,
            version="1.2.3",
            site="paris",
            hostname=f"{agent_id}.example",
            protocol=1,
            verbs=VERBS,
            peer="10.0.0.1:5555",
            session_id=session_id,
            labels={"rack": "a1"},
            now=now,
        )

    # -- migrations ---------------------------------------------------------

    async def test_migrations_idempotent(self) -> None:
        """Opening an already-migrated database twice keeps the version and data."""
        store = await self.open_store()
        await self.online(store)
        self.assertEqual(await store.open(), store_schema.LATEST_VERSION)
        second = await self.open_store()
        self.assertEqual(await second.open(), store_schema.LATEST_VERSION)
        self.assertEqual([a.agent_id for a in await second.list_agents()], ["gw1"])

    async def test_concurrent_open(self) -> None:
        """Two stores migrating a fresh database at once both succeed (serialised)."""
        first, second = self.make_store(), self.make_store()
        self.addCleanup(first.close)
        self.addCleanup(second.close)
        versions = await defer.gatherResults(
            [defer.ensureDeferred(first.open()), defer.ensureDeferred(second.open())]
        )
        self.assertEqual(versions, [store_schema.LATEST_VERSION] * 2)
        rows = await first._run(first._select_txn, "SELECT version FROM schema_version", ())
        self.assertEqual(len(rows), store_schema.LATEST_VERSION)

    async def test_schema_too_new_refused(self) -> None:
        """A database migrated by a newer release is refused, not downgraded."""
        store = await self.open_store()
        await store._run(
            store._update_count_txn,
            "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
            (store_schema.LATEST_VERSION + 1, 0.0),
        )
        with self.assertRaises(SchemaTooNew):
            await store.open()

    async def test_migrate_from_v1(self) -> None:
        """A version-1 database with data is migrated in place to the latest version.

        The new columns get their defaults, existing commands get a history
        reconstructed from their timestamps, and the new API works on it.
        """
        # Version 1 is the first migration as shipped (migrations are never edited).
        patcher = MonkeyPatcher(
            (store_schema, "MIGRATIONS", store_schema.MIGRATIONS[:1]),
            (store_schema, "LATEST_VERSION", 1),
        )
        patcher.patch()
        self.addCleanup(patcher.restore)
        old = self.make_store()
        self.addCleanup(old.close)
        self.assertEqual(await old.open(), 1)
        await old._run(
            old._update_count_txn,
            "INSERT INTO agents (agent_id, status, session_id) VALUES ('gw1', 'online', 's1')",
            (),
        )
        insert = (
            "INSERT INTO commands (command_id, agent_id, verb, args, status, timeout,"
            " created_at, dispatched_at, started_at, finished_at)"
            " VALUES (?, 'gw1', 'ping', '{}', ?, 30.0, ?, ?, ?, ?)"
        )
        for row in (
            ("q", "queued", 1.0, None, None, None),
            ("d", "dispatched", 2.0, 3.0, None, None),
            ("r", "running", 3.0, 4.0, 5.0, None),
            ("s", "succeeded", 4.0, 5.0, 6.0, 7.0),
            ("x", "cancelled", 5.0, None, None, 6.0),
        ):
            await old._run(old._update_count_txn, insert, row)
        await old.close()
        patcher.restore()
        self.assertGreater(store_schema.LATEST_VERSION, 1)

        store = await self.open_store()
        self.assertEqual(await store.open(), store_schema.LATEST_VERSION)
        rows = await store._run(
            store._select_txn, "SELECT version FROM schema_version ORDER BY version", ()
        )
        self.assertEqual(
            [version for (version,) in rows], list(range(1, store_schema.LATEST_VERSION + 1))
        )
        self.assertEqual((await store.get_agent("gw1")).epoch, 0)
        self.assertEqual((await self.online(store)).epoch, 1)
        self.assertIsNone((await store.get_command("q")).expires_at)

        migrated = {"migrated": True}
        expected = {
            "q": [("queued", 1.0)],
            "d": [("queued", 2.0), ("dispatched", 3.0)],
            "r": [("queued", 3.0), ("dispatched", 4.0), ("running", 5.0)],
            "s": [("queued", 4.0), ("dispatched", 5.0), ("running", 6.0), ("succeeded", 7.0)],
            "x": [("queued", 5.0), ("cancelled", 6.0)],
        }
        for command_id, steps in expected.items():
            events = await store.command_events(command_id)
            self.assertEqual([(e.status, e.at) for e in events], steps, command_id)
            self.assertEqual([e.detail for e in events], [migrated] * len(steps))
        # The migrated commands take part in the new lifecycle.
        self.assertIsNone(await store.transition("s", "running", 8.0))
        running = await store.transition("d", "running", 8.0, started_at=8.0)
        self.assertEqual(running.status, "running")
        self.assertEqual((await store.command_events("d"))[-1].status, "running")
        created, fresh = await store.create_command_idempotent(
            _command("new", expires_at=50.0), token_name="ci", key="k", request_hash="h"
        )
        self.assertTrue(fresh)
        self.assertEqual(created.expires_at, 50.0)

    async def test_migrate_from_v2(self) -> None:
        """A version-2 database with data is migrated in place (version 3 and later).

        Existing commands get ``cancel_requested_at`` None and keep their
        history; output, telemetry and cancellation work on them.
        """
        patcher = MonkeyPatcher(
            (store_schema, "MIGRATIONS", store_schema.MIGRATIONS[:2]),
            (store_schema, "LATEST_VERSION", 2),
        )
        patcher.patch()
        self.addCleanup(patcher.restore)
        old = self.make_store()
        self.addCleanup(old.close)
        self.assertEqual(await old.open(), 2)
        # Version-2 columns only (upsert_agent_online writes later ones).
        await old._run(
            old._update_count_txn,
            "INSERT INTO agents (agent_id, status, session_id, epoch)"
            " VALUES ('gw1', 'online', 's1', 1)",
            (),
        )
        await old._run(
            old._update_count_txn,
            "INSERT INTO commands (command_id, agent_id, verb, args, status, timeout,"
            " created_at, dispatched_at, started_at)"
            " VALUES ('r', 'gw1', 'ping', '{}', 'running', 30.0, 1.0, 2.0, 3.0)",
            (),
        )
        await old._run(
            old._update_count_txn,
            "INSERT INTO command_events (command_id, status, at) VALUES ('r', 'running', 3.0)",
            (),
        )
        await old.close()
        patcher.restore()

        store = await self.open_store()
        self.assertEqual(await store.open(), store_schema.LATEST_VERSION)
        rows = await store._run(
            store._select_txn, "SELECT version FROM schema_version ORDER BY version", ()
        )
        self.assertEqual(
            [version for (version,) in rows], list(range(1, store_schema.LATEST_VERSION + 1))
        )
        command = await store.get_command("r")
        self.assertEqual(command.status, "running")
        self.assertIsNone(command.cancel_requested_at)
        self.assertEqual(await store.command_events("r"), [CommandEvent("running", 3.0, None)])
        self.assertEqual((await store.get_agent("gw1")).epoch, 1)
        self.assertEqual(await store.append_output("r", [(0, "stdout", "hi")], 4.0), 1)
        self.assertEqual(await store.output_text("r"), ("hi", ""))
        await store.record_telemetry("gw1", 5.0, {"load": 0.5})
        self.assertEqual(await store.latest_telemetry("gw1"), TelemetryReport(5.0, {"load": 0.5}))
        self.assertEqual((await store.request_cancel("r", 6.0)).cancel_requested_at, 6.0)
        self.assertEqual([c.command_id for c in await store.cancels_pending("gw1")], ["r"])

    # -- agents -------------------------------------------------------------

    async def test_upsert_agent_online(self) -> None:
        """A new agent is inserted online with decoded JSON; reconnect overwrites."""
        store = await self.open_store()
        agent = await self.online(store)
        self.assertEqual(agent.status, "online")
        self.assertEqual(agent.verbs, VERBS)
        self.assertEqual(agent.labels, {"rack": "a1"})
        self.assertEqual(agent.protocol, 1)
        self.assertEqual(agent.connected_at, 100.0)
        self.assertEqual(agent.last_seen, 100.0)
        self.assertEqual(agent.session_id, "s1")
        self.assertEqual(await store.get_agent("gw1"), agent)

        again = await store.upsert_agent_online(
            "gw1",
            version="2.0",
            site=None,
            hostname="h",
            protocol=2,
            verbs={},
            peer=None,
            session_id="s2",
            labels=None,
            now=200.0,
        )
        self.assertEqual(again.version, "2.0")
        self.assertEqual(again.session_id, "s2")
        self.assertEqual(again.connected_at, 200.0)
        self.assertEqual(again.labels, {})
        self.assertEqual(again.verbs, {})

    async def test_epoch_increments(self) -> None:
        """Every upsert_agent_online bumps the agent's epoch; other updates keep it."""
        store = await self.open_store()
        self.assertEqual((await self.online(store, session_id="s1")).epoch, 1)
        self.assertEqual((await self.online(store, session_id="s2")).epoch, 2)
        await store.touch_agent("gw1", 150.0)
        await store.mark_agent_offline("gw1", "s2", 160.0)
        await store.mark_all_agents_offline(170.0)
        self.assertEqual((await store.get_agent("gw1")).epoch, 2)
        # Reconnecting the same session id is still a new epoch.
        self.assertEqual((await self.online(store, session_id="s2")).epoch, 3)
        # Epochs are per agent.
        self.assertEqual((await self.online(store, "gw2")).epoch, 1)
        self.assertEqual([a.epoch for a in await store.list_agents()], [3, 1])

    async def test_get_unknown_agent(self) -> None:
        """get_agent returns None for an unknown id."""
        store = await self.open_store()
        self.assertIsNone(await store.get_agent("nope"))

    async def test_list_agents_ordered(self) -> None:
        """list_agents returns every agent ordered by agent_id."""
        store = await self.open_store()
        for agent_id in ("gw3", "gw1", "gw2"):
            await self.online(store, agent_id)
        self.assertEqual([a.agent_id for a in await store.list_agents()], ["gw1", "gw2", "gw3"])

    async def test_touch_agent(self) -> None:
        """touch_agent updates last_seen only, and reports unknown agents."""
        store = await self.open_store()
        await self.online(store)
        self.assertTrue(await store.touch_agent("gw1", 150.0))
        agent = await store.get_agent("gw1")
        self.assertEqual(agent.last_seen, 150.0)
        self.assertEqual(agent.connected_at, 100.0)
        self.assertFalse(await store.touch_agent("nope", 150.0))

    async def test_mark_offline_session_guard(self) -> None:
        """A late close of an old session cannot mark the newer session offline."""
        store = await self.open_store()
        await self.online(store, session_id="old")
        await self.online(store, session_id="new", now=110.0)
        self.assertFalse(await store.mark_agent_offline("gw1", "old", 120.0))
        self.assertEqual((await store.get_agent("gw1")).status, "online")

        self.assertTrue(await store.mark_agent_offline("gw1", "new", 130.0))
        agent = await store.get_agent("gw1")
        self.assertEqual(agent.status, "offline")
        self.assertEqual(agent.last_seen, 130.0)
        # A second close of the same session is a no-op.
        self.assertFalse(await store.mark_agent_offline("gw1", "new", 140.0))
        self.assertFalse(await store.mark_agent_offline("nope", "new", 140.0))

    async def test_mark_all_agents_offline(self) -> None:
        """mark_all_agents_offline sets every online agent offline, keeps last_seen."""
        store = await self.open_store()
        await self.online(store, "gw1", now=100.0)
        await self.online(store, "gw2", now=101.0)
        await self.online(store, "gw3", session_id="s3")
        await store.mark_agent_offline("gw3", "s3", 102.0)
        self.assertEqual(await store.mark_all_agents_offline(500.0), 2)
        agents = await store.list_agents()
        self.assertEqual({a.status for a in agents}, {"offline"})
        self.assertEqual([a.last_seen for a in agents], [100.0, 101.0, 102.0])

    # -- commands -----------------------------------------------------------

    async def advance(
        self, store: SQLStore, command_id: str, *statuses: str, at: float = 10.0
    ) -> None:
        """Walk a command through ``statuses`` (each must be allowed)."""
        for status in statuses:
            self.assertIsNotNone(await store.transition(command_id, status, at), status)

    async def test_create_and_get_command(self) -> None:
        """create_command stores JSON args and fills defaults; get_command reads it back."""
        store = await self.open_store()
        created = await store.create_command(_command("c1", expires_at=60.0))
        self.assertEqual(created.command_id, "c1")
        self.assertEqual(created.args, {"count": 1})
        self.assertEqual(created.status, "queued")
        self.assertEqual(created.expires_at, 60.0)
        self.assertIs(created.stdout_truncated, False)
        self.assertIs(created.stderr_truncated, False)
        self.assertIsNone(created.result)
        self.assertIsNone(created.error)
        self.assertIsNone(created.exit_code)
        self.assertIsNone(created.cancel_requested_at)
        self.assertFalse(hasattr(created, "seq"))
        self.assertEqual(await store.get_command("c1"), created)
        self.assertIsNone(await store.get_command("nope"))
        no_deadline = await store.create_command(_command("c2"))
        self.assertIsNone(no_deadline.expires_at)

    async def test_create_command_validates(self) -> None:
        """A command to create has no unknown field, lacks none and has no status: it is
        created queued (later statuses go through transition)."""
        store = await self.open_store()
        with self.assertRaises(TypeError):
            _command("c1", bogus=1)
        fields = attrs.asdict(_command("c1"))
        del fields["verb"]
        with self.assertRaises(TypeError):
            NewCommand(**fields)
        with self.assertRaises(TypeError):
            _command("c1", status="running")
        self.assertEqual((await store.create_command(_command("c1"))).status, "queued")

    async def test_list_commands_filters(self) -> None:
        """list_commands filters by agent and status, newest first, honours limit."""
        store = await self.open_store()
        await store.create_command(_command("a", "gw1", created_at=1.0))
        await store.create_command(_command("b", "gw2", created_at=2.0))
        await store.create_command(_command("c", "gw1", created_at=3.0))
        await self.advance(store, "c", "dispatched", "running")
        await store.create_command(_command("d", "gw1", created_at=4.0))

        def ids(rows: list[Command]) -> list[str]:
            return [r.command_id for r in rows]

        self.assertEqual(ids(await store.list_commands()), ["d", "c", "b", "a"])
        self.assertEqual(ids(await store.list_commands(agent_id="gw1")), ["d", "c", "a"])
        self.assertEqual(ids(await store.list_commands(status="queued")), ["d", "b", "a"])
        self.assertEqual(
            ids(await store.list_commands(agent_id="gw1", status="queued")), ["d", "a"]
        )
        self.assertEqual(ids(await store.list_commands(limit=2)), ["d", "c"])
        self.assertEqual(await store.list_commands(agent_id="nope"), [])

    async def test_commands_in_fifo(self) -> None:
        """commands_in is oldest first, insertion order breaking created_at ties."""
        store = await self.open_store()
        # Same timestamp (a test Clock) and ids that sort the other way round.
        for command_id in ("z", "y", "x"):
            await store.create_command(_command(command_id, created_at=5.0))
        await store.create_command(_command("early", created_at=1.0))
        await store.create_command(_command("done", created_at=0.5))
        await self.advance(store, "done", "dispatched", "succeeded")
        await store.create_command(_command("sent", created_at=0.7))
        await self.advance(store, "sent", "dispatched")
        await store.create_command(_command("other", "gw2", created_at=0.1))

        def ids(rows: list[Command]) -> list[str]:
            return [r.command_id for r in rows]

        self.assertEqual(ids(await store.commands_in("gw1", ("queued",))), ["early", "z", "y", "x"])
        self.assertEqual(
            ids(await store.commands_in("gw1", ("dispatched", "queued"))),
            ["sent", "early", "z", "y", "x"],
        )
        self.assertEqual(ids(await store.commands_in("gw1", ("running",))), [])
        self.assertEqual(
            ids(await store.list_commands(agent_id="gw1")),
            ["x", "y", "z", "early", "sent", "done"],
        )
        with self.assertRaises(TypeError):
            await store.commands_in("gw1", "queued")  # type: ignore[arg-type]
        with self.assertRaises(ValueError):
            await store.commands_in("gw1", ("bogus",))
        with self.assertRaises(ValueError):
            await store.commands_in("gw1", ())

    async def test_events_recorded(self) -> None:
        """create_command and every transition append an event, in order, with detail."""
        store = await self.open_store()
        await store.create_command(_command("c1", created_at=1.0))
        await store.transition("c1", "dispatched", 2.0, dispatched_at=2.0)
        await store.transition("c1", "dispatched", 3.0, detail={"redelivery": 1})
        await store.transition("c1", "running", 4.0, started_at=4.0)
        await store.transition("c1", "failed", 5.0, detail={"exit_code": 2}, exit_code=2)
        await store.create_command(_command("c2", created_at=1.5))
        self.assertEqual(
            await store.command_events("c1"),
            [
                CommandEvent("queued", 1.0, None),
                CommandEvent("dispatched", 2.0, None),
                CommandEvent("dispatched", 3.0, {"redelivery": 1}),
                CommandEvent("running", 4.0, None),
                CommandEvent("failed", 5.0, {"exit_code": 2}),
            ],
        )
        self.assertEqual(await store.command_events("c2"), [CommandEvent("queued", 1.5, None)])
        self.assertEqual(await store.command_events("nope"), [])

    async def test_transition_sets_fields(self) -> None:
        """transition sets columns with the status, encoding JSON and booleans."""
        store = await self.open_store()
        await store.create_command(_command("c1"))
        await self.advance(store, "c1", "dispatched")
        updated = await store.transition(
            "c1",
            "failed",
            1234.5,
            exit_code=2,
            result={"lines": [1, 2]},
            stdout="out",
            stdout_truncated=True,
            error={"code": "exit", "message": "exit status 2"},
            finished_at=1234.5,
        )
        self.assertEqual(updated.status, "failed")
        self.assertEqual(updated.exit_code, 2)
        self.assertEqual(updated.result, {"lines": [1, 2]})
        self.assertIs(updated.stdout_truncated, True)
        self.assertIs(updated.stderr_truncated, False)
        self.assertEqual(updated.error, {"code": "exit", "message": "exit status 2"})
        self.assertEqual(updated.finished_at, 1234.5)
        self.assertEqual(await store.get_command("c1"), updated)
        # Setting a JSON column to None stores NULL.
        await store.create_command(_command("c2"))
        await store.transition("c2", "dispatched", 1.0, error={"code": "x", "message": "y"})
        running = await store.transition("c2", "running", 2.0, error=None)
        self.assertIsNone(running.error)
        self.assertIsNone((await store.get_command("c2")).error)

    async def test_returned_times_are_floats(self) -> None:
        """Rows written with RETURNING report time columns as floats, like reads do.

        (SQLite's RETURNING skips REAL affinity: 10.0 would come back as 10.)
        """
        store = await self.open_store()
        agent = await self.online(store, now=100.0)
        self.assertIs(type(agent.connected_at), float)
        self.assertIs(type(agent.last_seen), float)
        created = await store.create_command(_command("c1", timeout=10.0, expires_at=2000.0))
        dispatched = await store.transition("c1", "dispatched", 5.0, dispatched_at=5.0)
        for command in (created, dispatched, await store.get_command("c1")):
            for key in ("timeout", "created_at", "expires_at"):
                self.assertIs(type(getattr(command, key)), float, key)
        self.assertIs(type(dispatched.dispatched_at), float)
        (lost,) = await store.lose_overdue(100.0, 1.0)
        self.assertIs(type(lost.finished_at), float)
        self.assertIs(type(lost.dispatched_at), float)

    async def test_transition_refuses_illegal_moves(self) -> None:
        """Moves the lifecycle forbids return None and write nothing (no fields, no event)."""
        store = await self.open_store()
        for command_id in ("q", "s", "l"):
            await store.create_command(_command(command_id))
        await self.advance(store, "s", "dispatched", "running", "succeeded")
        await self.advance(store, "l", "dispatched", "lost")
        before = {c: await store.get_command(c) for c in ("q", "s", "l")}
        events = {c: await store.command_events(c) for c in ("q", "s", "l")}

        for command_id, status in (
            ("s", "running"),
            ("s", "failed"),
            ("l", "succeeded"),
            ("l", "lost"),
            ("q", "running"),
            ("q", "succeeded"),
        ):
            self.assertIsNone(
                await store.transition(command_id, status, 99.0, stdout="x", exit_code=1),
                f"{command_id} -> {status}",
            )
        self.assertIsNone(await store.transition("nope", "dispatched", 99.0))
        for command_id in ("q", "s", "l"):
            self.assertEqual(await store.get_command(command_id), before[command_id])
            self.assertEqual(await store.command_events(command_id), events[command_id])

    async def test_transition_validates(self) -> None:
        """Unknown statuses or fields and impossible expectations are caller bugs."""
        store = await self.open_store()
        await store.create_command(_command("c1"))
        with self.assertRaises(ValueError):
            await store.transition("c1", "bogus", 1.0)
        with self.assertRaises(ValueError):
            await store.transition("c1", "queued", 1.0)  # nothing becomes queued
        with self.assertRaises(ValueError):
            await store.transition("c1", "dispatched", 1.0, bogus=1)
        with self.assertRaises(ValueError):
            await store.transition("c1", "dispatched", 1.0, created_at=2.0, bogus=1)
        # succeeded never comes from queued: asking for it is a bug, not a miss.
        with self.assertRaises(ValueError):
            await store.transition("c1", "succeeded", 1.0, expected=("queued",))
        with self.assertRaises(ValueError):
            await store.transition("c1", "dispatched", 1.0, expected=())
        with self.assertRaises(TypeError):
            await store.transition("c1", "dispatched", 1.0, expected="queued")
        self.assertEqual((await store.get_command("c1")).status, "queued")
        self.assertEqual(len(await store.command_events("c1")), 1)

    async def test_transition_expected_narrows(self) -> None:
        """expected restricts the allowed sources further; default is lifecycle.sources."""
        store = await self.open_store()
        await store.create_command(_command("c1"))
        await self.advance(store, "c1", "dispatched")
        # dispatched -> dispatched is allowed by the lifecycle, but not from queued only.
        self.assertIsNone(await store.transition("c1", "dispatched", 2.0, expected=("queued",)))
        self.assertEqual(len(await store.command_events("c1")), 2)
        again = await store.transition(
            "c1", "dispatched", 3.0, expected=("dispatched",), dispatched_at=3.0
        )
        self.assertEqual(again.dispatched_at, 3.0)
        # The default allows every source of running, including dispatched.
        running = await store.transition("c1", "running", 4.0)
        self.assertEqual(running.status, "running")
        self.assertIsNone(await store.transition("c1", "failed", 5.0, expected=("dispatched",)))
        self.assertEqual((await store.get_command("c1")).status, "running")

    async def test_transition_race(self) -> None:
        """Of many concurrent compare-and-sets from the same status, exactly one wins."""
        store = await self.open_store()
        await store.create_command(_command("c1"))
        results = await defer.gatherResults(
            [
                defer.ensureDeferred(
                    store.transition(
                        "c1", "dispatched", float(i), expected=("queued",), stdout=str(i)
                    )
                )
                for i in range(8)
            ]
        )
        winners = [r for r in results if r is not None]
        self.assertEqual(len(winners), 1)
        self.assertEqual(await store.get_command("c1"), winners[0])
        self.assertEqual(
            [e.status for e in await store.command_events("c1")], ["queued", "dispatched"]
        )

    # -- idempotency --------------------------------------------------------

    async def test_idempotent_create(self) -> None:
        """Same key and hash returns the first command; another token gets its own."""
        store = await self.open_store()
        first, created = await store.create_command_idempotent(
            _command("c1", expires_at=60.0), token_name="ci", key="k1", request_hash="h1"
        )
        self.assertTrue(created)
        self.assertEqual(first.command_id, "c1")
        self.assertEqual(first.expires_at, 60.0)
        self.assertEqual([e.status for e in await store.command_events("c1")], ["queued"])

        again, created = await store.create_command_idempotent(
            _command("c2"), token_name="ci", key="k1", request_hash="h1"
        )
        self.assertFalse(created)
        self.assertEqual(again, first)
        self.assertIsNone(await store.get_command("c2"))

        # The key is scoped to its token; a new key is a new command too.
        other, created = await store.create_command_idempotent(
            _command("c3"), token_name="admin", key="k1", request_hash="h1"
        )
        self.assertTrue(created)
        self.assertEqual(other.command_id, "c3")
        _, created = await store.create_command_idempotent(
            _command("c4"), token_name="ci", key="k2", request_hash="h1"
        )
        self.assertTrue(created)
        self.assertEqual(len(await store.list_commands()), 3)

    async def test_idempotency_conflict(self) -> None:
        """Reusing a key for a different request raises IdempotencyConflict, writes nothing."""
        store = await self.open_store()
        await store.create_command_idempotent(
            _command("c1"), token_name="ci", key="k1", request_hash="h1"
        )
        with self.assertRaises(IdempotencyConflict) as caught:
            await store.create_command_idempotent(
                _command("c2"), token_name="ci", key="k1", request_hash="h2"
            )
        self.assertEqual(caught.exception.command_id, "c1")
        self.assertIsInstance(caught.exception, StoreError)
        self.assertIsNone(await store.get_command("c2"))
        self.assertEqual(await store.command_events("c2"), [])
        # The original still answers its own request.
        same, created = await store.create_command_idempotent(
            _command("c3"), token_name="ci", key="k1", request_hash="h1"
        )
        self.assertFalse(created)
        self.assertEqual(same.command_id, "c1")

    async def test_idempotent_create_concurrent(self) -> None:
        """Concurrent requests with one key create one command; the others look it up."""
        store = await self.open_store()
        # A second store is a second pool (PostgreSQL: separate connections).
        other = await self.open_store()
        results = await defer.gatherResults(
            [
                defer.ensureDeferred(
                    s.create_command_idempotent(
                        _command(f"c{i}"), token_name="ci", key="k", request_hash="h"
                    )
                )
                for i, s in enumerate([store, other] * 4)
            ]
        )
        self.assertEqual(sum(created for _, created in results), 1)
        self.assertEqual(len({command.command_id for command, _ in results}), 1)
        self.assertEqual(len(await store.list_commands()), 1)

    async def test_idempotent_create_validates(self) -> None:
        """A refused call (arguments that are not JSON) leaves the key unused."""
        store = await self.open_store()
        with self.assertRaises(TypeError):
            await store.create_command_idempotent(
                _command("c1", args={"x": object()}), token_name="ci", key="k", request_hash="h"
            )
        _, created = await store.create_command_idempotent(
            _command("c1"), token_name="ci", key="k", request_hash="h"
        )
        self.assertTrue(created)

    # -- deadlines ----------------------------------------------------------

    async def test_expire_due(self) -> None:
        """Queued commands past expires_at expire with an error and an event; others stay."""
        store = await self.open_store()
        self.assertIsNone(await store.next_expiry())
        self.assertEqual(await store.expire_due(1000.0), [])
        await store.create_command(_command("late", created_at=2.0, expires_at=20.0))
        await store.create_command(_command("early", created_at=1.0, expires_at=10.0))
        await store.create_command(_command("later", expires_at=30.0))
        await store.create_command(_command("never"))
        await store.create_command(_command("sent", expires_at=5.0))
        await self.advance(store, "sent", "dispatched")
        self.assertEqual(await store.next_expiry(), 10.0)

        self.assertEqual(await store.expire_due(9.9), [])
        expired = await store.expire_due(20.0)
        self.assertEqual([c.command_id for c in expired], ["early", "late"])
        error = {"code": "EXPIRED", "message": "not delivered before its deadline"}
        for command in expired:
            self.assertEqual(command.status, "expired")
            self.assertEqual(command.finished_at, 20.0)
            self.assertEqual(command.error, error)
            self.assertEqual(await store.get_command(command.command_id), command)
            self.assertEqual(
                (await store.command_events(command.command_id))[-1],
                CommandEvent("expired", 20.0, error),
            )
        self.assertEqual(await store.next_expiry(), 30.0)
        self.assertEqual((await store.get_command("sent")).status, "dispatched")
        self.assertEqual(await store.expire_due(20.0), [])
        # Final means final: an expired command cannot be dispatched.
        self.assertIsNone(await store.transition("early", "dispatched", 21.0))

    async def test_lose_overdue(self) -> None:
        """In-flight commands past dispatched_at + timeout + grace become lost."""
        store = await self.open_store()
        self.assertIsNone(await store.next_loss_deadline())
        await store.create_command(_command("queued", timeout=1.0))
        for command_id, timeout, dispatched_at in (
            ("d", 30.0, 100.0),  # deadline 130
            ("r", 10.0, 110.0),  # deadline 120
            ("slow", 100.0, 100.0),  # deadline 200
        ):
            await store.create_command(_command(command_id, timeout=timeout))
            await store.transition(
                command_id, "dispatched", dispatched_at, dispatched_at=dispatched_at
            )
        await store.transition("r", "running", 111.0, started_at=111.0)
        await store.create_command(_command("done", timeout=1.0))
        await store.transition("done", "dispatched", 1.0, dispatched_at=1.0)
        await store.transition("done", "succeeded", 1.5)
        self.assertEqual(await store.next_loss_deadline(), 120.0)

        self.assertEqual(await store.lose_overdue(124.9, 5.0), [])
        lost = await store.lose_overdue(135.0, 5)
        self.assertEqual([c.command_id for c in lost], ["d", "r"])
        error = {
            "code": "LOST",
            "message": "no result within its timeout plus 5 s since dispatch",
        }
        for command in lost:
            self.assertEqual(command.status, "lost")
            self.assertEqual(command.finished_at, 135.0)
            self.assertEqual(command.error, error)
            self.assertEqual(await store.get_command(command.command_id), command)
            self.assertEqual(
                (await store.command_events(command.command_id))[-1],
                CommandEvent("lost", 135.0, error),
            )
        self.assertEqual(await store.next_loss_deadline(), 200.0)
        for command_id in ("queued", "slow", "done"):
            self.assertNotEqual((await store.get_command(command_id)).status, "lost")
        # Only a caller naming lost (its own agent's late result) changes a lost command,
        # once, into an outcome an agent reports; the history keeps both.
        self.assertIsNone(await store.transition("r", "succeeded", 140.0, exit_code=0))
        self.assertEqual((await store.get_command("r")).status, "lost")
        with self.assertRaises(ValueError):
            await store.transition("r", "dispatched", 140.0, expected=("lost",))
        late = await store.transition(
            "r", "succeeded", 141.0, expected=("lost",), detail={"replaces": "lost"}, exit_code=0
        )
        self.assertEqual((late.status, late.exit_code), ("succeeded", 0))
        self.assertEqual(
            [(e.status, e.at) for e in (await store.command_events("r"))[-2:]],
            [("lost", 135.0), ("succeeded", 141.0)],
        )
        self.assertIsNone(await store.transition("r", "failed", 142.0, expected=("lost",)))

    async def test_sweep_many(self) -> None:
        """A sweep larger than one event batch records one event per command."""
        store = await self.open_store()
        count = 1203
        await store._run(
            store._update_count_txn,
            "INSERT INTO commands (command_id, agent_id, verb, status, created_at, expires_at)"
            " VALUES " + ", ".join(["(?, 'gw1', 'ping', 'queued', ?, 1.0)"] * count),
            [v for i in range(count) for v in (f"c{i:04}", float(i))],
        )
        expired = await store.expire_due(2.0)
        self.assertEqual([c.command_id for c in expired], [f"c{i:04}" for i in range(count)])
        rows = await store._run(
            store._select_txn,
            "SELECT COUNT(*) AS n FROM command_events WHERE status = 'expired'",
            (),
        )
        self.assertEqual(rows, [(count,)])

    # -- cancellation -------------------------------------------------------

    async def test_request_cancel(self) -> None:
        """request_cancel marks a non-final command once; final or unknown give None.

        The status is left alone (the caller decides what cancelling means),
        and a second request keeps the first time.
        """
        store = await self.open_store()
        for command_id in ("q", "r", "s"):
            await store.create_command(_command(command_id))
        await self.advance(store, "r", "dispatched", "running")
        await self.advance(store, "s", "dispatched", "succeeded")
        events = await store.command_events("r")

        running = await store.request_cancel("r", 20.0)
        self.assertEqual(running.status, "running")
        self.assertEqual(running.cancel_requested_at, 20.0)
        self.assertIs(type(running.cancel_requested_at), float)
        self.assertEqual(await store.get_command("r"), running)
        self.assertEqual(await store.command_events("r"), events)
        again = await store.request_cancel("r", 30.0)
        self.assertEqual(again.cancel_requested_at, 20.0)

        queued = await store.request_cancel("q", 21.0)
        self.assertEqual(queued.status, "queued")
        self.assertEqual(queued.cancel_requested_at, 21.0)
        # A marked queued command can still be cancelled through the lifecycle.
        cancelled = await store.transition("q", "cancelled", 22.0, finished_at=22.0)
        self.assertEqual(cancelled.cancel_requested_at, 21.0)

        self.assertIsNone(await store.request_cancel("s", 23.0))
        self.assertIsNone((await store.get_command("s")).cancel_requested_at)
        self.assertIsNone(await store.request_cancel("q", 24.0))  # now final
        self.assertIsNone(await store.request_cancel("nope", 25.0))

    async def test_cancel_requested_at_internal(self) -> None:
        """cancel_requested_at is written only by request_cancel."""
        store = await self.open_store()
        with self.assertRaises(TypeError):
            _command("c1", cancel_requested_at=1.0)
        await store.create_command(_command("c2"))
        with self.assertRaises(ValueError):
            await store.transition("c2", "dispatched", 1.0, cancel_requested_at=1.0)

    async def test_cancels_pending(self) -> None:
        """cancels_pending lists the agent's in-flight commands with a cancel requested."""
        store = await self.open_store()
        await store.create_command(_command("r", created_at=3.0))
        await self.advance(store, "r", "dispatched", "running")
        await store.create_command(_command("d", created_at=2.0))
        await self.advance(store, "d", "dispatched")
        await store.create_command(_command("q", created_at=1.0))
        await store.create_command(_command("idle", created_at=0.5))
        await self.advance(store, "idle", "dispatched")
        await store.create_command(_command("other", "gw2", created_at=0.1))
        await self.advance(store, "other", "dispatched")
        self.assertEqual(await store.cancels_pending("gw1"), [])

        for command_id in ("r", "d", "q", "other"):
            self.assertIsNotNone(await store.request_cancel(command_id, 10.0))
        pending = await store.cancels_pending("gw1")
        self.assertEqual([c.command_id for c in pending], ["d", "r"])
        self.assertEqual(pending[0], await store.get_command("d"))
        self.assertEqual([c.command_id for c in await store.cancels_pending("gw2")], ["other"])
        # Once final (or lost), it is no longer pending.
        await store.transition("r", "cancelled", 11.0)
        self.assertEqual([c.command_id for c in await store.cancels_pending("gw1")], ["d"])
        self.assertEqual(await store.cancels_pending("nope"), [])

    # -- live output --------------------------------------------------------

    async def test_append_output_idempotent(self) -> None:
        """Redelivered chunks are ignored; the count is of new chunks only."""
        store = await self.open_store()
        await store.create_command(_command("c1"))
        self.assertEqual(
            await store.append_output("c1", [(0, "stdout", "a"), (1, "stderr", "b")], 1.0), 2
        )
        # A redelivery overlapping the stored chunks keeps the first version.
        self.assertEqual(
            await store.append_output("c1", [(1, "stderr", "B"), (2, "stdout", "c")], 2.0), 1
        )
        self.assertEqual(await store.append_output("c1", [(0, "stdout", "A")], 3.0), 0)
        # A seq repeated within one call counts once, first one kept.
        self.assertEqual(
            await store.append_output("c1", [(3, "stdout", "d"), (3, "stdout", "D")], 4.0), 1
        )
        self.assertEqual(await store.append_output("c1", [], 5.0), 0)
        self.assertEqual(
            await store.output_since("c1"),
            [
                OutputChunk(0, "stdout", "a", 1.0),
                OutputChunk(1, "stderr", "b", 1.0),
                OutputChunk(2, "stdout", "c", 2.0),
                OutputChunk(3, "stdout", "d", 4.0),
            ],
        )
        # Unknown commands store nothing.
        self.assertEqual(await store.append_output("nope", [(0, "stdout", "x")], 1.0), 0)
        self.assertEqual(await store.output_since("nope"), [])

    async def test_append_output_validates(self) -> None:
        """A bad chunk is a ValueError and nothing of the call is written."""
        store = await self.open_store()
        await store.create_command(_command("c1"))
        for bad in (
            (-1, "stdout", "x"),
            (0, "stdin", "x"),
            ("0", "stdout", "x"),
            (0, "stdout", b"x"),
        ):
            with self.assertRaises(ValueError, msg=repr(bad)):
                await store.append_output("c1", [(5, "stdout", "ok"), bad], 1.0)
        self.assertEqual(await store.output_since("c1"), [])

    async def test_output_since_ordered(self) -> None:
        """output_since returns chunks after a seq, by seq whatever the arrival order."""
        store = await self.open_store()
        await store.create_command(_command("c1"))
        await store.create_command(_command("c2"))
        await store.append_output("c1", [(5, "stdout", "f"), (2, "stdout", "c")], 1.0)
        await store.append_output("c1", [(0, "stdout", "a"), (10, "stderr", "k")], 2.0)
        await store.append_output("c2", [(1, "stdout", "other")], 2.0)

        def seqs(rows: list[OutputChunk]) -> list[int]:
            return [r.seq for r in rows]

        self.assertEqual(seqs(await store.output_since("c1")), [0, 2, 5, 10])
        self.assertEqual(seqs(await store.output_since("c1", 2)), [5, 10])
        self.assertEqual(seqs(await store.output_since("c1", after_seq=0, limit=2)), [2, 5])
        self.assertEqual(await store.output_since("c1", 10), [])
        self.assertEqual(seqs(await store.output_since("c2")), [1])
        (chunk,) = await store.output_since("c1", 5)
        self.assertIs(type(chunk.at), float)

    async def test_output_many(self) -> None:
        """A call with more chunks than one INSERT batch stores and counts them all."""
        store = await self.open_store()
        await store.create_command(_command("c1"))
        chunks = [(i, "stdout", f"{i};") for i in range(1203)]
        self.assertEqual(await store.append_output("c1", chunks[:700], 1.0), 700)
        self.assertEqual(await store.append_output("c1", chunks, 2.0), 503)
        stdout, stderr = await store.output_text("c1")
        self.assertEqual(stdout, "".join(data for _, _, data in chunks))
        self.assertEqual(stderr, "")

    async def test_output_text(self) -> None:
        """output_text joins each stream's chunks in seq order."""
        store = await self.open_store()
        await store.create_command(_command("c1"))
        self.assertEqual(await store.output_text("c1"), ("", ""))
        await store.append_output("c1", [(3, "stdout", "lo\n"), (1, "stderr", "warn ")], 1.0)
        await store.append_output("c1", [(0, "stdout", "hel"), (2, "stderr", "again\n")], 2.0)
        await store.append_output("c1", [(4, "stdout", "é")], 3.0)
        self.assertEqual(await store.output_text("c1"), ("hello\né", "warn again\n"))
        self.assertEqual(await store.output_text("nope"), ("", ""))

    # -- telemetry ----------------------------------------------------------

    async def test_telemetry_latest_and_history(self) -> None:
        """Reports come back newest first (by arrival), per agent, with since and limit."""
        store = await self.open_store()
        self.assertIsNone(await store.latest_telemetry("gw1"))
        self.assertEqual(await store.telemetry_history("gw1"), [])
        for i in range(5):
            await store.record_telemetry("gw1", 10.0 + i, {"load": i, "disk": {"/": 0.5}})
        await store.record_telemetry("gw2", 100.0, {"load": 9})
        # Arrival order wins over a clock that went backwards.
        await store.record_telemetry("gw1", 12.5, {"load": 5})

        latest = await store.latest_telemetry("gw1")
        self.assertEqual(latest, TelemetryReport(12.5, {"load": 5}))
        self.assertIs(type(latest.at), float)
        history = await store.telemetry_history("gw1")
        self.assertEqual([h.at for h in history], [12.5, 14.0, 13.0, 12.0, 11.0, 10.0])
        self.assertEqual(history[1].data, {"load": 4, "disk": {"/": 0.5}})
        self.assertEqual(
            [h.at for h in await store.telemetry_history("gw1", limit=2)], [12.5, 14.0]
        )
        # since is exclusive.
        self.assertEqual(
            [h.at for h in await store.telemetry_history("gw1", since=12.0)], [12.5, 14.0, 13.0]
        )
        self.assertEqual(
            [h.at for h in await store.telemetry_history("gw1", limit=1, since=12.0)], [12.5]
        )
        self.assertEqual(await store.telemetry_history("gw1", since=20.0), [])
        self.assertEqual(
            await store.telemetry_history("gw2"), [TelemetryReport(100.0, {"load": 9})]
        )

    async def test_telemetry_keep_bound(self) -> None:
        """record_telemetry keeps the agent's newest ``keep`` rows, other agents untouched."""
        store = await self.open_store()
        for i in range(3):
            await store.record_telemetry("gw2", float(i), {"n": i}, keep=2)
        for i in range(10):
            await store.record_telemetry("gw1", float(i), {"n": i}, keep=4)
        history = await store.telemetry_history("gw1", limit=100)
        self.assertEqual([h.data["n"] for h in history], [9, 8, 7, 6])
        self.assertEqual([h.data["n"] for h in await store.telemetry_history("gw2")], [2, 1])
        # A smaller keep trims at once; keep=1 leaves only the new report.
        await store.record_telemetry("gw1", 10.0, {"n": 10}, keep=1)
        self.assertEqual(await store.telemetry_history("gw1"), [TelemetryReport(10.0, {"n": 10})])
        rows = await store._run(store._select_txn, "SELECT COUNT(*) AS n FROM agent_telemetry", ())
        self.assertEqual(rows, [(3,)])
        for keep in (0, -1, 1.5, True):
            with self.assertRaises(ValueError):
                await store.record_telemetry("gw1", 11.0, {}, keep=keep)  # type: ignore[arg-type]
        with self.assertRaises(ValueError):
            await store.record_telemetry("gw1", 11.0, [1, 2])  # type: ignore[arg-type]
        self.assertEqual(len(await store.telemetry_history("gw1")), 1)

    async def test_telemetry_byte_budget(self) -> None:
        """max_bytes keeps the agent's newest reports that fit in that many bytes of stored
        JSON (always the newest), whatever their sizes; other agents are untouched."""
        store = await self.open_store()
        await store.record_telemetry("gw2", 1.0, {"pad": "y" * 500}, max_bytes=65536)
        budget = 30_000
        sizes = [100, 5000, 300, 20000, 50, 7000, 12000, 40000, 10, 900]
        stored: list[int] = []  # bytes of each report gw1 sent, oldest first
        for i, n in enumerate(sizes):
            report = {"n": i, "pad": "x" * n}
            stored.append(len(json.dumps(report, sort_keys=True, separators=(",", ":"))))
            await store.record_telemetry("gw1", float(i), report, max_bytes=budget)
            # Expected: the longest run of newest reports within the budget (at least one).
            expected, total = [], 0
            for j in range(i, -1, -1):
                if expected and total + stored[j] > budget:
                    break
                expected.append(j)
                total += stored[j]
            history = await store.telemetry_history("gw1", limit=100)
            self.assertEqual([h.data["n"] for h in history], expected, f"after report {i}")
        rows = await store._run(
            store._select_txn,
            "SELECT agent_id, SUM(bytes) AS total FROM agent_telemetry GROUP BY agent_id",
            (),
        )
        totals = {agent_id: int(total) for agent_id, total in rows}
        self.assertLessEqual(totals["gw1"], budget)
        self.assertEqual(totals["gw2"], len(json.dumps({"pad": "y" * 500}, separators=(",", ":"))))
        # keep and max_bytes together: whichever keeps fewer.
        for i in range(5):
            await store.record_telemetry("gw1", 20.0 + i, {"n": 20 + i}, keep=3, max_bytes=budget)
        self.assertEqual([h.data["n"] for h in await store.telemetry_history("gw1")], [24, 23, 22])
        for max_bytes in (0, -1, 1.5, True):
            with self.assertRaises(ValueError):
                await store.record_telemetry("gw1", 30.0, {}, max_bytes=max_bytes)  # type: ignore[arg-type]

    async def test_migrate_telemetry_sizes_from_v7(self) -> None:
        """Reports stored before the byte budget get their sizes and running totals, so the
        first report after the upgrade trims the history to the budget."""
        patcher = MonkeyPatcher(
            (store_schema, "MIGRATIONS", store_schema.MIGRATIONS[:7]),
            (store_schema, "LATEST_VERSION", 7),
        )
        patcher.patch()
        self.addCleanup(patcher.restore)
        old = self.make_store()
        self.addCleanup(old.close)
        self.assertEqual(await old.open(), 7)
        for i, agent_id in enumerate(["gw1", "gw2", "gw1", "gw1", "gw2"]):
            report = json.dumps({"n": i, "pad": "x" * 1000 * (i + 1)}, sort_keys=True)
            await old._run(
                old._update_count_txn,
                "INSERT INTO agent_telemetry (agent_id, at, data) VALUES (?, ?, ?)",
                (agent_id, float(i), report),
            )
        await old.close()
        patcher.restore()

        store = await self.open_store()
        rows = await store._run(
            store._select_txn,
            "SELECT agent_id, bytes, bytes_before, LENGTH(data) AS length FROM agent_telemetry"
            " ORDER BY seq",
            (),
        )
        self.assertEqual([size for _, size, _, _ in rows], [length for _, _, _, length in rows])
        gw1 = [(size, before) for agent_id, size, before, _ in rows if agent_id == "gw1"]
        self.assertEqual(
            [before for _, before in gw1],
            [0, gw1[0][0], gw1[0][0] + gw1[1][0]],
        )
        # The new report and gw1's newest old one (4,000 bytes and a bit) fit, the next not.
        await store.record_telemetry("gw1", 9.0, {"n": 9}, max_bytes=5000)
        self.assertEqual([h.data["n"] for h in await store.telemetry_history("gw1")], [9, 3])
        self.assertEqual(len(await store.telemetry_history("gw2")), 2)

    async def test_mark_output_truncated(self) -> None:
        """The backend's cut of a stream shows in the command's truncation flag."""
        store = await self.open_store()
        await store.create_command(_command("c1"))
        await store.mark_output_truncated("c1", "stderr")
        command = await store.get_command("c1")
        self.assertEqual((command.stdout_truncated, command.stderr_truncated), (False, True))
        with self.assertRaises(ValueError):
            await store.mark_output_truncated("c1", "stdin")

    # -- tokens -------------------------------------------------------------

    async def test_tokens(self) -> None:
        """Tokens are found by hash, listed by name without hashes."""
        store = await self.open_store()
        self.assertEqual(
            await store.create_token("ci", "aa" * 32, 10.0),
            Token("ci", 10.0, "operator", None, None, None, None),
        )
        await store.create_token("admin", "bb" * 32, 11.0)
        self.assertEqual(await store.token_name_for_hash("aa" * 32), "ci")
        self.assertEqual(await store.token_name_for_hash("bb" * 32), "admin")
        self.assertIsNone(await store.token_name_for_hash("cc" * 32))
        unlimited = {
            "role": "operator",
            "verbs": None,
            "sites": None,
            "expires_at": None,
            "revoked_at": None,
        }
        self.assertEqual(
            await store.list_tokens(),
            [
                Token(name="admin", created_at=11.0, **unlimited),
                Token(name="ci", created_at=10.0, **unlimited),
            ],
        )

    async def test_duplicate_token(self) -> None:
        """A duplicate name (or hash) raises DuplicateToken and keeps the original."""
        store = await self.open_store()
        await store.create_token("ci", "aa" * 32, 10.0)
        with self.assertRaises(DuplicateToken):
            await store.create_token("ci", "bb" * 32, 11.0)
        with self.assertRaises(DuplicateToken):
            await store.create_token("other", "aa" * 32, 11.0)
        # The pool still works after the failed transaction was rolled back.
        self.assertEqual(await store.token_name_for_hash("aa" * 32), "ci")
        self.assertIsNone(await store.token_name_for_hash("bb" * 32))
        self.assertEqual([t.name for t in await store.list_tokens()], ["ci"])

    async def test_token_roles_scopes_expiry_revocation(self) -> None:
        """Tokens carry a role, verb/site lists, an expiry; revoking one stamps it once."""
        store = await self.open_store()
        await store.create_token(
            "ops", "aa" * 32, 10.0, role="operator", verbs=["ping"], sites=["paris"]
        )
        await store.create_token("boss", "bb" * 32, 11.0, role="admin", expires_at=99.5)
        await store.create_token("eyes", "cc" * 32, 12.0, role="viewer")
        with self.assertRaises(ValueError):
            await store.create_token("bad", "dd" * 32, 13.0, role="root")
        ops = await store.token_for_hash("aa" * 32)
        self.assertEqual(
            ops,
            Token(
                name="ops",
                created_at=10.0,
                role="operator",
                verbs=["ping"],
                sites=["paris"],
                expires_at=None,
                revoked_at=None,
            ),
        )
        self.assertEqual((await store.token_for_hash("bb" * 32)).expires_at, 99.5)
        self.assertEqual(
            [(t.name, t.role) for t in await store.list_tokens()],
            [("boss", "admin"), ("eyes", "viewer"), ("ops", "operator")],
        )
        for token in await store.list_tokens():
            self.assertFalse(hasattr(token, "token_hash"))
        self.assertTrue(await store.revoke_token("ops", 20.0))
        self.assertFalse(await store.revoke_token("ops", 21.0))
        self.assertFalse(await store.revoke_token("nobody", 21.0))
        self.assertEqual((await store.token_for_hash("aa" * 32)).revoked_at, 20.0)

    async def test_certificate_serial_and_revocations(self) -> None:
        """The agent row keeps its certificate serial; revocations are polled by seq."""
        store = await self.open_store()
        self.assertIsNone((await self.online(store)).cert_serial)
        agent = await store.upsert_agent_online(
            "gw2",
            version="1",
            site="s",
            hostname="h",
            protocol=1,
            verbs={},
            peer=None,
            session_id="s2",
            labels={},
            now=1.0,
            cert_serial="1f2e",
        )
        self.assertEqual(agent.cert_serial, "1f2e")
        self.assertEqual(await store.revocations_since(0), [])
        self.assertTrue(await store.revoke_certificate("1f2e", "gw2", 5.0, "lost laptop"))
        self.assertFalse(await store.revoke_certificate("1f2e", "gw2", 6.0))
        self.assertTrue(await store.revoke_certificate("aa", "gw1", 7.0))
        first, second = await store.revocations_since(0)
        self.assertEqual(
            {k: getattr(first, k) for k in ("serial", "agent_id", "revoked_at", "reason")},
            {"serial": "1f2e", "agent_id": "gw2", "revoked_at": 5.0, "reason": "lost laptop"},
        )
        self.assertEqual(await store.revocations_since(first.seq), [second])
        self.assertEqual(await store.revocations_since(second.seq), [])
        self.assertTrue(await store.is_certificate_revoked("1f2e"))
        self.assertFalse(await store.is_certificate_revoked("1f2f"))

    async def test_agent_certificates(self) -> None:
        """Every certificate an agent id connected with is kept (first and last seen),
        found by agent or by serial; version 8 takes in each agent's last known serial."""
        patcher = MonkeyPatcher(
            (store_schema, "MIGRATIONS", store_schema.MIGRATIONS[:7]),
            (store_schema, "LATEST_VERSION", 7),
        )
        patcher.patch()
        self.addCleanup(patcher.restore)
        old = self.make_store()
        self.addCleanup(old.close)
        self.assertEqual(await old.open(), 7)
        # Written as version 7 wrote it (today's upsert sets columns added later).
        await old._run(
            old._update_count_txn,
            "INSERT INTO agents (agent_id, status, connected_at, last_seen, cert_serial)"
            " VALUES (?, 'online', ?, ?, ?)",
            ("gw1", 3.0, 3.0, "a1"),
        )
        await old.close()
        patcher.restore()

        store = await self.open_store()
        self.assertEqual(await store.open(), store_schema.LATEST_VERSION)
        await store.record_certificate("gw1", "b2", 10.0)
        await store.record_certificate("gw1", "b2", 12.0)
        await store.record_certificate("gw2", "c3", 11.0)
        self.assertEqual(
            await store.agent_certificates(agent_id="gw1"),
            [
                AgentCertificate("gw1", "a1", 3.0, 3.0),
                AgentCertificate("gw1", "b2", 10.0, 12.0),
            ],
        )
        [seen] = await store.agent_certificates(serial="c3")
        self.assertEqual(seen.agent_id, "gw2")
        self.assertEqual(await store.agent_certificates(serial="ffff"), [])
        with self.assertRaises(ValueError):
            await store.agent_certificates()

    async def test_audit_chain(self) -> None:
        """Audit records are numbered from 1, chained by hash, with secrets redacted."""
        store = await self.open_store()
        first = await store.append_audit(
            1.5, "ci", "api.post", "/x", "ok", {"password": "hunter2", "verb": "ping"}
        )
        second = await store.append_audit(2.0, "system", "command.finished", None, "failed")
        self.assertEqual((first.seq, second.seq), (1, 2))
        self.assertEqual(first.prev_hash, auditchain.GENESIS)
        self.assertEqual(second.prev_hash, first.hash)
        rows = await store.audit_records()
        self.assertEqual(rows, [first, second])
        self.assertEqual(rows[0].detail, '{"password":"[redacted]","verb":"ping"}')
        self.assertIsNone(rows[1].detail)
        self.assertEqual(auditchain.verify_chain(rows), 2)
        self.assertEqual(await store.audit_records(after_seq=1), [second])
        self.assertEqual(await store.audit_seq_of_hash(second.hash), 2)
        self.assertIsNone(await store.audit_seq_of_hash("ff" * 32))

    async def test_console_sessions(self) -> None:
        """Console sessions are found by hash with their token's row, end when deleted or
        when their token is revoked, and expired ones are purged by the next login."""
        store = await self.open_store()
        await store.create_token("ops", "aa" * 32, 1.0, role="operator", sites=["paris"])
        await store.create_console_session("s1" * 32, "ops", 10.0, 100.0)
        await store.create_console_session("s2" * 32, "ops", 10.0, 20.0)
        session = await store.console_session("s1" * 32)
        self.assertEqual(session.expires_at, 100.0)
        self.assertEqual(
            (session.token.name, session.token.role, session.token.sites, session.token.revoked_at),
            ("ops", "operator", ["paris"], None),
        )
        self.assertIsNone(await store.console_session("zz" * 32))
        await store.create_console_session("s3" * 32, "ops", 30.0, 200.0)  # purges s2
        self.assertIsNone(await store.console_session("s2" * 32))
        self.assertTrue(await store.delete_console_session("s3" * 32))
        self.assertFalse(await store.delete_console_session("s3" * 32))
        self.assertTrue(await store.revoke_token("ops", 40.0))
        self.assertIsNone(await store.console_session("s1" * 32))

    async def test_agent_keys_and_pages(self) -> None:
        """agent_keys lists every agent's filterable fields in id order; agents_by_id reads
        whole rows for a page (ids unknown are left out), with the certificate's end."""
        store = await self.open_store()
        for agent_id in ("gw3", "gw1", "gw2"):
            await self.online(store, agent_id, session_id="s-" + agent_id)
        keys = await store.agent_keys()
        self.assertEqual([k.agent_id for k in keys], ["gw1", "gw2", "gw3"])
        self.assertEqual(
            keys[0],
            AgentSummary(
                agent_id="gw1",
                site="paris",
                labels={"rack": "a1"},
                version="1.2.3",
                cert_serial=None,
                cert_not_after=None,
            ),
        )
        agents = await store.agents_by_id(["gw3", "nope", "gw2"])
        self.assertEqual([a.agent_id for a in agents], ["gw2", "gw3"])
        self.assertEqual(agents[0].verbs, VERBS)
        self.assertEqual(await store.agents_by_id([]), [])
        agent = await store.upsert_agent_online(
            "gw4",
            version="1",
            site="s",
            hostname="h",
            protocol=1,
            verbs={},
            peer=None,
            session_id="s4",
            labels={},
            now=1.0,
            cert_serial="ab",
            cert_not_after=1e9,
        )
        self.assertEqual(agent.cert_not_after, 1e9)

    async def test_audit_search(self) -> None:
        """audit_search filters by actor, action (exact or prefix), agent, outcome and time,
        pages by seq both ways, and treats LIKE wildcards in values literally."""
        store = await self.open_store()
        append = store.append_audit
        await append(10.0, "ci", "api.post", "/api/v1/agents/gw_1/commands", "ok")
        await append(20.0, "gw1", "command.finished", "command:c1", "failed", {"agent_id": "gw1"})
        await append(30.0, "ci", "api.delete", "/api/v1/tokens/x", "refused")
        await append(40.0, "gw1", "connection.refused", "agent:gw1", "refused")

        async def seqs(**filters: Any) -> list[int]:
            return [r.seq for r in await store.audit_search(**filters)]

        self.assertEqual(await seqs(), [4, 3, 2, 1])
        self.assertEqual(await seqs(newest_first=False, after_seq=2), [3, 4])
        self.assertEqual(await seqs(actor="ci"), [3, 1])
        self.assertEqual(await seqs(action="api.*"), [3, 1])
        self.assertEqual(await seqs(action="api.post"), [1])
        self.assertEqual(await seqs(agent_id="gw1"), [4, 2])
        self.assertEqual(await seqs(agent_id="gw_1"), [1])
        self.assertEqual(await seqs(action="api%"), [])
        self.assertEqual(await seqs(outcome="refused", since=35.0), [4])
        self.assertEqual(await seqs(until=20.0), [1])
        self.assertEqual(await seqs(before_seq=3, limit=1), [2])

    async def test_audit_concurrent_writers(self) -> None:
        """Appends from concurrent transactions (and a second store) never fork the chain."""
        store = await self.open_store()
        other = await self.open_store()
        writes = [
            (store if i % 2 else other).append_audit(float(i), f"w{i}", "test", None, "ok")
            for i in range(40)
        ]
        await defer.gatherResults([defer.Deferred.fromCoroutine(w) for w in writes])
        rows = await store.audit_records(limit=100)
        self.assertEqual([r.seq for r in rows], list(range(1, 41)))
        self.assertEqual(auditchain.verify_chain(rows), 40)

    async def test_migrate_from_v3(self) -> None:
        """Tokens made before roles become unlimited operators; agents get no serial yet."""
        patcher = MonkeyPatcher(
            (store_schema, "MIGRATIONS", store_schema.MIGRATIONS[:3]),
            (store_schema, "LATEST_VERSION", 3),
        )
        patcher.patch()
        self.addCleanup(patcher.restore)
        old = self.make_store()
        self.addCleanup(old.close)
        self.assertEqual(await old.open(), 3)
        await old._run(
            old._update_count_txn,
            "INSERT INTO tokens (name, token_hash, created_at) VALUES ('ci', ?, 1.0)",
            ("aa" * 32,),
        )
        await old._run(
            old._update_count_txn,
            "INSERT INTO agents (agent_id, status, session_id) VALUES ('gw1', 'offline', 's1')",
            (),
        )
        await old.close()
        patcher.restore()

        store = await self.open_store()
        token = await store.token_for_hash("aa" * 32)
        self.assertEqual(
            (token.role, token.verbs, token.sites, token.expires_at),
            ("operator", None, None, None),
        )
        self.assertIsNone(token.revoked_at)
        self.assertIsNone((await store.get_agent("gw1")).cert_serial)
        self.assertEqual((await store.append_audit(1.0, "a", "b", None, "ok")).seq, 1)

    async def test_survives_reopen(self) -> None:
        """Data written before close() is there after reopening the database."""
        store = await self.open_store()
        await self.online(store)
        await store.create_command(_command("c1"))
        await store.create_token("ci", "aa" * 32, 10.0)
        await store.close()
        await store.close()  # idempotent

        again = await self.open_store()
        self.assertEqual((await again.get_agent("gw1")).verbs, VERBS)
        self.assertEqual((await again.get_command("c1")).args, {"count": 1})
        self.assertEqual(await again.token_name_for_hash("aa" * 32), "ci")

    # -- jobs ---------------------------------------------------------------

    def _job(self, job_id: str = "j1", **fields: Any) -> Job:
        return Job(
            **{
                "job_id": job_id,
                "status": "running",
                "verb": "ping",
                "args": {"count": 1},
                "selector": "site=paris",
                "concurrency": "10%",
                "concurrency_limit": 1,
                "max_errors": "2",
                "max_errors_limit": 2,
                "canary": None,
                "canary_auto": False,
                "canary_passed": False,
                "ttl": 60.0,
                "timeout": 30.0,
                "created_by": None,
                "created_at": 10.0,
                "updated_at": 10.0,
                **fields,
            }
        )

    async def test_jobs_create_get_list(self) -> None:
        """A job and its targets are stored together and read back decoded."""
        store = await self.open_store()
        job = await store.create_job(self._job(canary=2, canary_auto=True), ["gw2", "gw1"])
        self.assertEqual(job.args, {"count": 1})
        self.assertIs(job.canary_auto, True)
        self.assertIs(job.canary_passed, False)
        self.assertIs(job.has_secrets, False)
        self.assertEqual((job.canary, job.ttl, job.created_at), (2, 60.0, 10.0))
        self.assertEqual(await store.get_job("j1"), job)
        self.assertIsNone(await store.get_job("nope"))
        targets = await store.job_targets("j1")
        self.assertEqual(
            [(t.position, t.agent_id, t.command_id, t.status) for t in targets],
            [(0, "gw2", None, "pending"), (1, "gw1", None, "pending")],
        )
        await store.create_job(self._job("j2", status="paused", created_at=20.0), ["gw1"])
        self.assertEqual([j.job_id for j in await store.list_jobs()], ["j2", "j1"])
        self.assertEqual([j.job_id for j in await store.list_jobs(["running"])], ["j1"])
        self.assertEqual([j.job_id for j in await store.list_jobs(limit=1)], ["j2"])
        with self.assertRaises(ValueError):
            await store.list_jobs(["nope"])
        with self.assertRaises(ValueError):
            await store.create_job(self._job("j3"), ["gw1", "gw1"])
        with self.assertRaises(TypeError):
            self._job("j3", bogus=1)
        with self.assertRaises(ValueError):
            await store.create_job(self._job("j3", status="bogus"), ["gw1"])

    async def test_job_targets_follow_their_commands(self) -> None:
        """A target shows its command's status, or its outcome; counts group them."""
        store = await self.open_store()
        await store.create_job(self._job(), ["gw1", "gw2", "gw3"])
        await store.create_command(_command("c1", "gw1"))
        self.assertTrue(await store.settle_job_target("j1", 0, command_id="c1"))
        # Compare-and-set: a settled target is not settled again.
        self.assertFalse(await store.settle_job_target("j1", 0, outcome="expired"))
        error = {"code": "EXPIRED", "message": "offline"}
        self.assertTrue(await store.settle_job_target("j1", 2, outcome="expired", error=error))
        await store.transition("c1", "dispatched", 11.0, dispatched_at=11.0)
        targets = await store.job_targets("j1")
        self.assertEqual(
            [(t.command_id, t.status, t.error) for t in targets],
            [("c1", "dispatched", None), (None, "pending", None), (None, "expired", error)],
        )
        await store.create_job(self._job("j2"), ["gw1"])
        self.assertEqual(
            await store.job_counts(["j1", "j2", "j3"]),
            {"j1": {"dispatched": 1, "pending": 1, "expired": 1}, "j2": {"pending": 1}, "j3": {}},
        )
        with self.assertRaises(ValueError):
            await store.settle_job_target("j1", 1)
        with self.assertRaises(ValueError):
            await store.settle_job_target("j1", 1, outcome="succeeded")

    async def test_update_job_compare_and_set(self) -> None:
        """update_job changes a job only from the expected statuses, and stamps updated_at."""
        store = await self.open_store()
        await store.create_job(self._job(), ["gw1"])
        paused = await store.update_job("j1", 12.0, expected=["running"], status="paused")
        self.assertEqual((paused.status, paused.updated_at), ("paused", 12.0))
        self.assertIsNone(await store.update_job("j1", 13.0, expected=["running"], status="paused"))
        done = await store.update_job(
            "j1",
            14.0,
            expected=["paused"],
            status="completed",
            canary_passed=True,
            finished_at=14.0,
            error={"code": "X", "message": "y"},
        )
        self.assertEqual(done.error, {"code": "X", "message": "y"})
        self.assertIs(done.canary_passed, True)
        self.assertEqual(await store.get_job("j1"), done)
        self.assertIsNone(await store.update_job("nope", 15.0, status="paused"))
        with self.assertRaises(ValueError):
            await store.update_job("j1", 15.0, status="exploded")
        with self.assertRaises(ValueError):
            await store.update_job("j1", 15.0, verb="other")

    # -- group commit (store/batch.py) -----------------------------------------

    async def test_calls_that_queue_up_share_one_batch(self) -> None:
        """Calls made while a batch is in the database run together next, in order."""
        store = await self.open_store()
        await self.online(store)
        # Out of the callback that delivered online()'s result (calls made in
        # there join the next batch at once).
        await task.deferLater(reactor, 0, lambda: None)
        before = store.batches.batches
        calls = [started(store.create_command(_command(f"c{i}"))) for i in range(5)]
        calls.append(started(store.list_commands(agent_id="gw1")))
        *created, listed = await defer.gatherResults(calls)
        # Inline (SQLite): the batch is taken one turn after the first call, so all
        # six share it (in the pool thread: list_commands may read many rows). In a
        # thread (PostgreSQL): the first ran alone, the five behind it shared the next.
        self.assertEqual(store.batches.batches - before, 1 if store.batches.inline else 2)
        self.assertEqual([c.command_id for c in created], [f"c{i}" for i in range(5)])
        self.assertEqual(len(listed), 5)

    async def test_failing_call_in_a_batch_is_rolled_back_alone(self) -> None:
        """One call's error reaches only that caller; the calls around it are stored."""
        store = await self.open_store()
        await self.online(store)
        await store.create_token("ops", "h1", now=1.0)
        first = started(store.create_command(_command("c1")))
        before = started(store.create_command(_command("c2")))
        duplicate = started(store.create_token("ops", "h2", now=2.0))
        after = started(store.create_command(_command("c3")))
        await first
        await before
        with self.assertRaises(DuplicateToken):
            await duplicate
        await after
        self.assertEqual(
            sorted(c.command_id for c in await store.list_commands(agent_id="gw1")),
            ["c1", "c2", "c3"],
        )
        self.assertEqual([t.name for t in await store.list_tokens()], ["ops"])

    async def test_transient_failure_splits_the_batch(self) -> None:
        """A call failing with a transient error (a deadlock between two backends) rolls
        its whole batch back; every call of it runs again alone and takes effect once."""
        store = await self.open_store()
        await self.online(store)
        attempts: list[int] = []

        class Flaky(Exception):
            pass

        def flaky(txn: Any) -> str:
            attempts.append(1)
            if len(attempts) == 1:
                raise Flaky()
            return "ok"

        store.batches._transient = lambda error: isinstance(error, Flaky)
        await task.deferLater(reactor, 0, lambda: None)
        first = started(store.create_command(_command("c0")))  # runs alone
        batch = [
            started(store.create_command(_command("c1"))),
            store.batches.run(flaky),
            started(store.create_command(_command("c2"))),
        ]
        await first
        created, outcome, _ = await defer.gatherResults(batch)
        self.assertEqual((outcome, len(attempts)), ("ok", 2))
        self.assertEqual(created.command_id, "c1")
        self.assertEqual(
            sorted(c.command_id for c in await store.list_commands(agent_id="gw1")),
            ["c0", "c1", "c2"],
        )
        # c1 ran twice, its first run rolled back: one row, one event.
        self.assertEqual([e.status for e in await store.command_events("c1")], ["queued"])

    async def test_close_runs_queued_calls_then_refuses(self) -> None:
        """close() waits for what was queued; a call after it fails with StoreClosed."""
        store = self.make_store()
        await store.open()
        await self.online(store)
        writes = [started(store.create_command(_command(f"c{i}"))) for i in range(3)]
        await store.close()
        self.assertEqual(len(await defer.gatherResults(writes)), 3)
        with self.assertRaises(StoreClosed):
            await store.get_command("c1")
        reopened = await self.open_store()
        self.assertIsNotNone(await reopened.get_command("c2"))


class SQLiteStoreTests(StoreTestsMixin, unittest.TestCase):
    """The store suite against a temporary SQLite file."""

    def setUp(self) -> None:
        # A missing parent directory exercises its creation.
        self.path = os.path.join(self.mktemp(), "sub", "viworks.sqlite3")

    def make_store(self) -> SQLStore:
        return open_store(self.path)

    async def test_file_permissions(self) -> None:
        """The parent directory is created 0700 and the database file 0600."""
        await self.open_store()
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.path)).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    async def test_batches_run_in_the_reactor_thread(self) -> None:
        """Short calls run inline (reactor thread); calls marked long in the pool thread."""
        store = await self.open_store()
        where = lambda txn: threading.current_thread() is threading.main_thread()  # noqa: E731
        self.assertTrue(await store._run(where))
        self.assertFalse(await store._run_long(where))

    async def test_calls_of_one_turn_share_one_inline_commit(self) -> None:
        """Calls made in the same reactor turn as the first one join its transaction
        (a state change and the audit record after it: one commit, not two)."""
        store = await self.open_store()
        await self.online(store)
        await task.deferLater(reactor, 0, lambda: None)
        before = store.batches.batches
        first = started(store.create_command(_command("c1")))
        second = started(store.create_command(_command("c2")))
        self.assertFalse(first.called)  # nothing runs before the turn ends
        await defer.gatherResults([first, second])
        self.assertEqual(store.batches.batches - before, 1)
        self.assertIsNotNone(await store.get_command("c2"))

    async def test_idempotency_keys_found_by_command(self) -> None:
        """Inserting a command checks the deferred foreign key of its key row, i.e. looks
        the keys up by command_id: an index, not a scan of every key ever written
        (6 ms per command at 100,000 keys without it, 18 us with it)."""
        store = await self.open_store()
        rows = await store._run(
            store._select_txn,
            "EXPLAIN QUERY PLAN SELECT 1 FROM idempotency_keys WHERE command_id = ?",
            ("c1",),
        )
        plan = " ".join(str(detail) for *_, detail in rows)
        self.assertIn("idempotency_keys_command", plan)

    async def test_locked_file_goes_to_the_pool_thread(self) -> None:
        """A batch finding the file locked by another process does not block the reactor:
        it runs in the pool thread, which waits for the lock (busy_timeout)."""
        store = await self.open_store()
        await self.online(store)
        other = sqlite3.connect(self.path, isolation_level=None)
        self.addCleanup(other.close)
        other.execute("BEGIN IMMEDIATE")
        write = started(store.create_command(_command("c1")))
        # The reactor keeps turning while the write waits for the lock.
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(write.called)
        other.execute("COMMIT")
        self.assertEqual((await write).command_id, "c1")
        self.assertIsNotNone(await store.get_command("c1"))

    async def test_wal_enabled(self) -> None:
        """Connections use WAL journaling and enforce foreign keys."""
        store = await self.open_store()
        rows = await store._run(store._select_txn, "PRAGMA journal_mode", ())
        self.assertEqual(rows, [("wal",)])
        rows = await store._run(store._select_txn, "PRAGMA foreign_keys", ())
        self.assertEqual(rows, [(1,)])


class PostgresStoreTests(StoreTestsMixin, unittest.TestCase):
    """The store suite against PostgreSQL, in a throwaway schema per test.

    Uses ``VIWORKS_TEST_POSTGRES`` (default: a local trust-auth server) and
    skips when the server is not reachable.
    """

    def setUp(self) -> None:
        try:
            import psycopg
        except ImportError as e:
            raise unittest.SkipTest(f"psycopg not installed: {e}") from e
        self.schema = "viworks_test_" + secrets.token_hex(6)
        try:
            # Blocking, but setUp runs before the test touches the reactor.
            with psycopg.connect(POSTGRES_URL, connect_timeout=3, autocommit=True) as conn:
                conn.execute(f"CREATE SCHEMA {self.schema}")
        except psycopg.OperationalError as e:
            raise unittest.SkipTest(f"PostgreSQL not reachable at {POSTGRES_URL}: {e}") from e
        self.addCleanup(self._drop_schema)

    def _drop_schema(self) -> None:
        import psycopg

        with psycopg.connect(POSTGRES_URL, connect_timeout=3, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {self.schema} CASCADE")

    def make_store(self) -> SQLStore:
        return open_store(POSTGRES_URL, schema=self.schema)

    async def test_tables_in_schema(self) -> None:
        """All tables are created in the configured schema, not in public."""
        store = await self.open_store()
        rows = await store._run(
            store._select_txn,
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = ? ORDER BY table_name",
            (self.schema,),
        )
        self.assertEqual(
            [table_name for (table_name,) in rows],
            [
                "agent_certificates",
                "agent_telemetry",
                "agents",
                "audit_log",
                "command_events",
                "command_output",
                "commands",
                "console_sessions",
                "idempotency_keys",
                "job_targets",
                "jobs",
                "revoked_certificates",
                "schema_version",
                "tokens",
            ],
        )

    def test_invalid_schema_name(self) -> None:
        """Schema names that would need quoting are refused."""
        with self.assertRaises(ValueError):
            open_store(POSTGRES_URL, schema="x; DROP TABLE agents")
