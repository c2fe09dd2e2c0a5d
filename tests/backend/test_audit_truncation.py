"""A running backend's audit log that loses its newest records (real SQLite store).

The backend remembers the last record it wrote; finding the log shorter, it does not
chain onto what is left (that would make the shortened log verify as intact) but
writes ``audit.truncated`` onto the record it last wrote, so the gap stays visible
until the missing records are restored.
"""

from __future__ import annotations

import json
import sqlite3

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from tests.backend.helpers import sqlite_store
from viworks.backend import audit
from viworks.backend.audit import AuditLog
from viworks.backend.auditchain import GENESIS, ChainBroken, head_text, verify_chain

COLUMNS = "seq, at, actor, action, target, outcome, detail, prev_hash, hash"


class AuditTruncationTests(unittest.TestCase):
    async def _setUp(self) -> None:
        self.store = await sqlite_store(self)
        self.clock = Clock()
        self.clock.advance(1000)
        self.audit = AuditLog(self.store, self.clock)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def errors(self) -> list[dict]:
        return [e for e in self.events if e.get("log_level") == LogLevel.error]

    def setUp(self) -> Deferred:
        return Deferred.fromCoroutine(self._setUp())

    def sql(self, statement: str, params: tuple = ()) -> list:
        # Another connection, as an intruder with access to the file would use.
        with sqlite3.connect(self.store.path) as conn:
            return conn.execute(statement, params).fetchall()

    async def rows(self) -> list[dict]:
        return await self.store.audit_records(limit=10000)

    async def write(self, count: int, action: str = "test.action") -> None:
        for i in range(count):
            await self.audit.record("tester", action, f"thing-{i}", audit.OK, {"i": i})

    async def test_truncated_log_is_not_chained_onto(self):
        """Records 4-5 deleted from the end: the next record is preceded by
        audit.truncated chained onto record 5 (not onto record 3), an error is logged,
        verify reports records 4-5 removed, and putting them back heals the chain."""
        await self.write(5)
        removed = self.sql(f"SELECT {COLUMNS} FROM audit_log WHERE seq > 3 ORDER BY seq")
        self.sql("DELETE FROM audit_log WHERE seq > 3")
        self.assertEqual(verify_chain(await self.rows()), 3)  # shortened, yet intact
        await self.write(1, "after.truncation")
        rows = await self.rows()
        self.assertEqual(
            [(r.seq, r.action) for r in rows[3:]],
            [(6, "audit.truncated"), (7, "after.truncation")],
        )
        marker = rows[3]
        self.assertEqual(marker.prev_hash, removed[-1][-1])
        self.assertEqual((marker.actor, marker.outcome), ("backend", audit.FAILED))
        self.assertEqual(
            json.loads(marker.detail),
            {
                "expected_head": f"5:{removed[-1][-1]}",
                "found_head": head_text((3, rows[2].hash)),
            },
        )
        self.assertEqual(rows[4].prev_hash, marker.hash)
        with self.assertRaises(ChainBroken) as broken:
            verify_chain(rows)
        self.assertIn("records 4-5 were removed", broken.exception.message)
        [error] = self.errors()
        self.assertIn("audit log truncated", error["log_format"])
        # Restored from an export: the whole chain verifies again.
        marks = ", ".join("?" * 9)
        for row in removed:
            self.sql(f"INSERT INTO audit_log ({COLUMNS}) VALUES ({marks})", row)
        self.assertEqual(verify_chain(await self.rows()), 7)

    async def test_records_in_flight_write_one_marker(self):
        """Several records queued when the truncation is found: one audit.truncated, every
        record written after it, and no fork in the chain."""
        await self.write(4)
        removed = self.sql(f"SELECT {COLUMNS} FROM audit_log WHERE seq = 4")
        self.sql("DELETE FROM audit_log WHERE seq = 4")
        await gatherResults(
            [
                Deferred.fromCoroutine(self.audit.record("tester", f"burst.{i}", None, audit.OK))
                for i in range(5)
            ]
        )
        rows = await self.rows()
        actions = [r.action for r in rows[3:]]
        self.assertEqual(actions[0], "audit.truncated")
        self.assertEqual(sorted(actions[1:]), [f"burst.{i}" for i in range(5)])
        self.sql(f"INSERT INTO audit_log ({COLUMNS}) VALUES ({', '.join('?' * 9)})", removed[0])
        self.assertEqual(verify_chain(await self.rows()), 10)

    async def test_anchor_at_start_up(self):
        """A log written before the backend started (by the CLI): the head found at
        start-up is anchored, so removing it before the first write is noticed."""
        for i in range(3):
            await self.store.append_audit(1.0, "cli:root", "token.create", f"t{i}", audit.OK)
        await self.audit.anchor()
        self.assertEqual(self.audit.head, await self.store.audit_head())
        self.sql("DELETE FROM audit_log WHERE seq = 3")
        await self.write(1)
        self.assertEqual(
            [r.action for r in await self.rows()],
            ["token.create", "token.create", "audit.truncated", "test.action"],
        )

    async def test_other_writers_are_no_truncation(self):
        """Records appended by another writer (the CLI, another backend) after ours are
        not a truncation; neither is an empty log at start-up."""
        await self.audit.anchor()
        self.assertEqual(self.audit.head, (0, GENESIS))
        await self.write(2)
        for i in range(3):
            await self.store.append_audit(1.0, "cli:root", "token.create", f"t{i}", audit.OK)
        await self.write(2)
        rows = await self.rows()
        self.assertNotIn("audit.truncated", [r.action for r in rows])
        self.assertEqual(verify_chain(rows), 7)
        self.assertEqual(self.errors(), [])
