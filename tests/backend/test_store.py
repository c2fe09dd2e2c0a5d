"""Store tests, run against SQLite and (when reachable) PostgreSQL."""

from __future__ import annotations

import os
import secrets
import stat
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from viworks.backend.store import DuplicateToken, SchemaTooNew, Store, open_store
from viworks.backend.store import schema as store_schema

POSTGRES_URL = os.environ.get("VIWORKS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

VERBS = {"ping": {"args": {}}, "exec": {"args": {"cmd": "string"}}}


def _command(command_id: str, agent_id: str = "gw1", **fields: Any) -> dict[str, Any]:
    base = {
        "command_id": command_id,
        "agent_id": agent_id,
        "verb": "ping",
        "args": {"count": 1},
        "status": "queued",
        "timeout": 30.0,
        "created_at": 1000.0,
    }
    base.update(fields)
    return base


class StoreTestsMixin:
    """Behaviour both engines must share. Subclasses provide ``make_store``."""

    def make_store(self) -> Store:
        raise NotImplementedError

    async def open_store(self) -> Store:
        store = self.make_store()
        self.addCleanup(store.close)
        await store.open()
        return store

    async def online(
        self, store: Store, agent_id: str = "gw1", session_id: str = "s1", now: float = 100.0
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
        self.assertEqual([a["agent_id"] for a in await second.list_agents()], ["gw1"])

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

    # -- agents -------------------------------------------------------------

    async def test_upsert_agent_online(self) -> None:
        """A new agent is inserted online with decoded JSON; reconnect overwrites."""
        store = await self.open_store()
        agent = await self.online(store)
        self.assertEqual(agent["status"], "online")
        self.assertEqual(agent["verbs"], VERBS)
        self.assertEqual(agent["labels"], {"rack": "a1"})
        self.assertEqual(agent["protocol"], 1)
        self.assertEqual(agent["connected_at"], 100.0)
        self.assertEqual(agent["last_seen"], 100.0)
        self.assertEqual(agent["session_id"], "s1")
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
        self.assertEqual(again["version"], "2.0")
        self.assertEqual(again["session_id"], "s2")
        self.assertEqual(again["connected_at"], 200.0)
        self.assertEqual(again["labels"], {})
        self.assertEqual(again["verbs"], {})

    async def test_get_unknown_agent(self) -> None:
        """get_agent returns None for an unknown id."""
        store = await self.open_store()
        self.assertIsNone(await store.get_agent("nope"))

    async def test_list_agents_ordered(self) -> None:
        """list_agents returns every agent ordered by agent_id."""
        store = await self.open_store()
        for agent_id in ("gw3", "gw1", "gw2"):
            await self.online(store, agent_id)
        self.assertEqual([a["agent_id"] for a in await store.list_agents()], ["gw1", "gw2", "gw3"])

    async def test_touch_agent(self) -> None:
        """touch_agent updates last_seen only, and reports unknown agents."""
        store = await self.open_store()
        await self.online(store)
        self.assertTrue(await store.touch_agent("gw1", 150.0))
        agent = await store.get_agent("gw1")
        self.assertEqual(agent["last_seen"], 150.0)
        self.assertEqual(agent["connected_at"], 100.0)
        self.assertFalse(await store.touch_agent("nope", 150.0))

    async def test_mark_offline_session_guard(self) -> None:
        """A late close of an old session cannot mark the newer session offline."""
        store = await self.open_store()
        await self.online(store, session_id="old")
        await self.online(store, session_id="new", now=110.0)
        self.assertFalse(await store.mark_agent_offline("gw1", "old", 120.0))
        self.assertEqual((await store.get_agent("gw1"))["status"], "online")

        self.assertTrue(await store.mark_agent_offline("gw1", "new", 130.0))
        agent = await store.get_agent("gw1")
        self.assertEqual(agent["status"], "offline")
        self.assertEqual(agent["last_seen"], 130.0)
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
        self.assertEqual({a["status"] for a in agents}, {"offline"})
        self.assertEqual([a["last_seen"] for a in agents], [100.0, 101.0, 102.0])

    # -- commands -----------------------------------------------------------

    async def test_create_and_get_command(self) -> None:
        """create_command stores JSON args and fills defaults; get_command reads it back."""
        store = await self.open_store()
        created = await store.create_command(_command("c1"))
        self.assertEqual(created["command_id"], "c1")
        self.assertEqual(created["args"], {"count": 1})
        self.assertEqual(created["status"], "queued")
        self.assertIs(created["stdout_truncated"], False)
        self.assertIs(created["stderr_truncated"], False)
        self.assertIsNone(created["result"])
        self.assertIsNone(created["error"])
        self.assertIsNone(created["exit_code"])
        self.assertNotIn("seq", created)
        self.assertEqual(await store.get_command("c1"), created)
        self.assertIsNone(await store.get_command("nope"))

    async def test_create_command_validates(self) -> None:
        """Unknown or missing fields are rejected before touching the database."""
        store = await self.open_store()
        with self.assertRaises(ValueError):
            await store.create_command(_command("c1", bogus=1))
        bad = _command("c1")
        del bad["verb"]
        with self.assertRaises(ValueError):
            await store.create_command(bad)

    async def test_list_commands_filters(self) -> None:
        """list_commands filters by agent and status, newest first, honours limit."""
        store = await self.open_store()
        await store.create_command(_command("a", "gw1", created_at=1.0))
        await store.create_command(_command("b", "gw2", created_at=2.0))
        await store.create_command(_command("c", "gw1", created_at=3.0, status="running"))
        await store.create_command(_command("d", "gw1", created_at=4.0))

        def ids(rows: list[dict[str, Any]]) -> list[str]:
            return [r["command_id"] for r in rows]

        self.assertEqual(ids(await store.list_commands()), ["d", "c", "b", "a"])
        self.assertEqual(ids(await store.list_commands(agent_id="gw1")), ["d", "c", "a"])
        self.assertEqual(ids(await store.list_commands(status="queued")), ["d", "b", "a"])
        self.assertEqual(
            ids(await store.list_commands(agent_id="gw1", status="queued")), ["d", "a"]
        )
        self.assertEqual(ids(await store.list_commands(limit=2)), ["d", "c"])
        self.assertEqual(await store.list_commands(agent_id="nope"), [])

    async def test_queued_commands_fifo(self) -> None:
        """queued_commands is oldest first, insertion order breaking created_at ties."""
        store = await self.open_store()
        # Same timestamp (a test Clock) and ids that sort the other way round.
        for command_id in ("z", "y", "x"):
            await store.create_command(_command(command_id, created_at=5.0))
        await store.create_command(_command("early", created_at=1.0))
        await store.create_command(_command("done", created_at=0.5, status="succeeded"))
        await store.create_command(_command("other", "gw2", created_at=0.1))
        self.assertEqual(
            [c["command_id"] for c in await store.queued_commands("gw1")],
            ["early", "z", "y", "x"],
        )
        self.assertEqual(
            [c["command_id"] for c in await store.list_commands(agent_id="gw1")],
            ["x", "y", "z", "early", "done"],
        )

    async def test_update_command(self) -> None:
        """update_command sets columns, encodes JSON and booleans, returns the row."""
        store = await self.open_store()
        await store.create_command(_command("c1"))
        updated = await store.update_command(
            "c1",
            status="failed",
            exit_code=2,
            result={"lines": [1, 2]},
            stdout="out",
            stdout_truncated=True,
            error={"code": "exit", "message": "exit status 2"},
            finished_at=1234.5,
        )
        self.assertEqual(updated["status"], "failed")
        self.assertEqual(updated["exit_code"], 2)
        self.assertEqual(updated["result"], {"lines": [1, 2]})
        self.assertIs(updated["stdout_truncated"], True)
        self.assertIs(updated["stderr_truncated"], False)
        self.assertEqual(updated["error"], {"code": "exit", "message": "exit status 2"})
        self.assertEqual(updated["finished_at"], 1234.5)
        self.assertEqual(await store.get_command("c1"), updated)
        # Clearing a JSON column stores NULL.
        cleared = await store.update_command("c1", error=None)
        self.assertIsNone(cleared["error"])

    async def test_update_command_unknown(self) -> None:
        """update_command returns None for an unknown id and rejects unknown columns."""
        store = await self.open_store()
        self.assertIsNone(await store.update_command("nope", status="running"))
        await store.create_command(_command("c1"))
        with self.assertRaises(ValueError):
            await store.update_command("c1", bogus=1)
        with self.assertRaises(ValueError):
            await store.update_command_if("c1", ("queued",), seq=5)
        self.assertEqual((await store.get_command("c1"))["status"], "queued")

    async def test_update_command_if(self) -> None:
        """update_command_if applies only when the status is expected, else None."""
        store = await self.open_store()
        await store.create_command(_command("c1"))
        self.assertIsNone(await store.update_command_if("c1", ("running",), status="succeeded"))
        self.assertEqual((await store.get_command("c1"))["status"], "queued")

        dispatched = await store.update_command_if(
            "c1", ("queued",), status="dispatched", dispatched_at=10.0
        )
        self.assertEqual(dispatched["status"], "dispatched")
        self.assertEqual(dispatched["dispatched_at"], 10.0)
        running = await store.update_command_if(
            "c1", ("dispatched", "queued"), status="running", started_at=11.0
        )
        self.assertEqual(running["status"], "running")
        # The old expectation no longer holds: refused.
        self.assertIsNone(await store.update_command_if("c1", ("queued",), status="cancelled"))
        self.assertIsNone(await store.update_command_if("nope", ("queued",), status="x"))
        with self.assertRaises(ValueError):
            await store.update_command_if("c1", (), status="x")

    async def test_update_command_if_race(self) -> None:
        """Of many concurrent compare-and-sets from the same status, exactly one wins."""
        store = await self.open_store()
        await store.create_command(_command("c1"))
        results = await defer.gatherResults(
            [
                defer.ensureDeferred(
                    store.update_command_if("c1", ("queued",), status="dispatched", stdout=str(i))
                )
                for i in range(8)
            ]
        )
        winners = [r for r in results if r is not None]
        self.assertEqual(len(winners), 1)
        self.assertEqual(await store.get_command("c1"), winners[0])

    # -- tokens -------------------------------------------------------------

    async def test_tokens(self) -> None:
        """Tokens are found by hash, listed by name without hashes."""
        store = await self.open_store()
        self.assertEqual(
            await store.create_token("ci", "aa" * 32, 10.0), {"name": "ci", "created_at": 10.0}
        )
        await store.create_token("admin", "bb" * 32, 11.0)
        self.assertEqual(await store.token_name_for_hash("aa" * 32), "ci")
        self.assertEqual(await store.token_name_for_hash("bb" * 32), "admin")
        self.assertIsNone(await store.token_name_for_hash("cc" * 32))
        self.assertEqual(
            await store.list_tokens(),
            [{"name": "admin", "created_at": 11.0}, {"name": "ci", "created_at": 10.0}],
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
        self.assertEqual([t["name"] for t in await store.list_tokens()], ["ci"])

    async def test_survives_reopen(self) -> None:
        """Data written before close() is there after reopening the database."""
        store = await self.open_store()
        await self.online(store)
        await store.create_command(_command("c1"))
        await store.create_token("ci", "aa" * 32, 10.0)
        await store.close()
        await store.close()  # idempotent

        again = await self.open_store()
        self.assertEqual((await again.get_agent("gw1"))["verbs"], VERBS)
        self.assertEqual((await again.get_command("c1"))["args"], {"count": 1})
        self.assertEqual(await again.token_name_for_hash("aa" * 32), "ci")


class SQLiteStoreTests(StoreTestsMixin, unittest.TestCase):
    """The store suite against a temporary SQLite file."""

    def setUp(self) -> None:
        # A missing parent directory exercises its creation.
        self.path = os.path.join(self.mktemp(), "sub", "viworks.sqlite3")

    def make_store(self) -> Store:
        return open_store(self.path)

    async def test_file_permissions(self) -> None:
        """The parent directory is created 0700 and the database file 0600."""
        await self.open_store()
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.path)).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    async def test_wal_enabled(self) -> None:
        """Connections use WAL journaling and enforce foreign keys."""
        store = await self.open_store()
        rows = await store._run(store._select_txn, "PRAGMA journal_mode", ())
        self.assertEqual(list(rows[0].values()), ["wal"])
        rows = await store._run(store._select_txn, "PRAGMA foreign_keys", ())
        self.assertEqual(list(rows[0].values()), [1])


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

    def make_store(self) -> Store:
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
            [r["table_name"] for r in rows],
            ["agents", "commands", "schema_version", "tokens"],
        )

    def test_invalid_schema_name(self) -> None:
        """Schema names that would need quoting are refused."""
        with self.assertRaises(ValueError):
            open_store(POSTGRES_URL, schema="x; DROP TABLE agents")
