"""/api/v1/health reports a store that cannot take writes ("store": "read-only", HTTP 503).

SQLite: a connection that refuses writes (what SQLite answers for a read-only file)
and a file system that is really full (a small tmpfs; skipped where mounting is not
allowed). PostgreSQL: a database whose sessions are read-only, as on a hot standby.
"""

from __future__ import annotations

import os
import secrets
import subprocess

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.backend.helpers import json_call, sqlite_store, wire
from tests.backend.test_store import POSTGRES_URL
from viworks.backend.health import StoreHealth
from viworks.backend.store import open_store


class HealthProbe:
    """An API over ``store`` with a deterministic clock, and its health answers."""

    def __init__(self, testcase, store) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.api = wire(testcase, store, self.clock).api()
        self.http = StubTreq(self.api.resource())

    async def health(self) -> tuple[int, dict]:
        response, body = await json_call(self.http, "GET", "/api/v1/health")
        return response.code, body

    async def after_ttl(self) -> tuple[int, dict]:
        self.clock.advance(StoreHealth.TTL)
        return await self.health()


class SQLiteHealthTests(unittest.TestCase):
    async def _query_only(self, store, on: bool) -> None:
        # Both connections (the reactor thread's and the pool's) refuse writes with
        # SQLITE_READONLY, as for a file on a read-only file system.
        pragma = f"PRAGMA query_only = {int(on)}"
        store._inline.execute(pragma)
        await store._pool.runWithConnection(lambda conn: conn.execute(pragma))

    async def test_read_only_store_is_unhealthy(self):
        """A store refusing writes makes health 503 with "store": "read-only" (status
        unhealthy) once the cached answer is older than the TTL; writable again, 200."""
        store = await sqlite_store(self)
        probe = HealthProbe(self, store)
        code, body = await probe.health()
        self.assertEqual((code, body["status"], body["store"]), (200, "healthy", "ok"))
        await self._query_only(store, True)
        with self.assertRaises(Exception) as raised:
            await store.append_audit(1.0, "test", "write", None, "ok")
        self.assertTrue(store.unwritable(raised.exception), raised.exception)
        code, body = await probe.after_ttl()
        self.assertEqual((code, body["status"], body["store"]), (503, "unhealthy", "read-only"))
        await self._query_only(store, False)
        code, body = await probe.after_ttl()
        self.assertEqual((code, body["store"]), (200, "ok"))

    async def test_probe_is_cached(self):
        """However often health is asked, the store is probed at most once per TTL, and
        concurrent requests share one probe."""
        store = await sqlite_store(self)
        probe = HealthProbe(self, store)
        health = probe.api.store_health
        for _ in range(20):
            await probe.health()
        self.assertEqual(health.probes, 1)
        probe.clock.advance(StoreHealth.TTL)
        calls = [Deferred.fromCoroutine(health.state()) for _ in range(5)]
        for call in calls:
            self.assertEqual(await call, StoreHealth.OK)
        self.assertEqual(health.probes, 2)


class DiskFullHealthTests(unittest.TestCase):
    """A SQLite database on a 2 MiB tmpfs that is then filled to the last byte."""

    def setUp(self) -> None:
        self.mount = os.path.abspath(self.mktemp())
        os.makedirs(self.mount)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", self.mount],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise unittest.SkipTest(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        self.addCleanup(subprocess.run, ["umount", "-l", self.mount], check=True)

    def fill(self) -> str:
        path = os.path.join(self.mount, "filler")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        return path

    async def test_full_disk_is_read_only(self):
        """Once the file system is full, health answers 503 "read-only" (real writes fail
        too); with space freed, healthy again."""
        store = open_store(os.path.join(self.mount, "backend.db"))
        await store.open()
        self.addCleanup(store.close)
        probe = HealthProbe(self, store)
        self.assertEqual((await probe.health())[0], 200)
        filler = self.fill()
        with self.assertRaises(Exception) as raised:
            await store.append_audit(1.0, "test", "fill", None, "ok", {"x": "y" * 10000})
        self.assertTrue(store.unwritable(raised.exception), raised.exception)
        code, body = await probe.after_ttl()
        self.assertEqual((code, body["store"]), (503, "read-only"))
        os.unlink(filler)
        code, body = await probe.after_ttl()
        self.assertEqual((code, body["store"]), (200, "ok"))


class PostgresHealthTests(unittest.TestCase):
    """A database of its own, made read-only for new sessions (default_transaction_read_only)."""

    def setUp(self) -> None:
        try:
            import psycopg
        except ImportError as e:
            raise unittest.SkipTest(f"psycopg not installed: {e}") from e
        self.database = "viworks_health_" + secrets.token_hex(6)
        try:
            self.admin(f"CREATE DATABASE {self.database}")
        except psycopg.OperationalError as e:
            raise unittest.SkipTest(f"PostgreSQL not reachable at {POSTGRES_URL}: {e}") from e
        self.addCleanup(self.admin, f"DROP DATABASE {self.database} WITH (FORCE)")
        self.url = POSTGRES_URL.rsplit("/", 1)[0] + "/" + self.database

    def admin(self, statement: str) -> None:
        import psycopg

        # Blocking, outside the reactor's work (setUp / cleanup).
        with psycopg.connect(POSTGRES_URL, connect_timeout=3, autocommit=True) as conn:
            conn.execute(statement)

    async def test_read_only_database_is_unhealthy(self):
        """Healthy on a writable database; a store whose sessions are read-only (a standby,
        default_transaction_read_only) answers 503 "read-only" and really cannot write."""
        writable = open_store(self.url)
        await writable.open()
        code, body = await HealthProbe(self, writable).health()
        await writable.close()
        self.assertEqual((code, body["store"]), (200, "ok"))
        self.admin(f"ALTER DATABASE {self.database} SET default_transaction_read_only = on")
        store = open_store(self.url)
        self.addCleanup(store.close)
        code, body = await HealthProbe(self, store).health()
        self.assertEqual((code, body["status"], body["store"]), (503, "unhealthy", "read-only"))
        with self.assertRaises(Exception) as raised:
            await store.append_audit(1.0, "test", "write", None, "ok")
        self.assertTrue(store.unwritable(raised.exception), raised.exception)
