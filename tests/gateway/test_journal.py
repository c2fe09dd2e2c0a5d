"""Tests for viworks.gateway.journal (real SQLite files in trial temp dirs)."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from viworks.gateway import journal as journal_module
from viworks.gateway.journal import (
    SCHEMA_VERSION,
    Journal,
    JournalError,
    UnknownCommandError,
    lost_result,
)


def _result(status: str = "success", **extra: Any) -> dict[str, Any]:
    """A result dict shaped like the verb layer's."""
    body: dict[str, Any] = {
        "status": status,
        "exit_code": 0,
        "result": {"ok": True},
        "stdout": "out",
        "stderr": "",
        "stdout_truncated": False,
        "stderr_truncated": False,
        "error": None,
        "started_at": 1.0,
        "finished_at": 2.0,
    }
    body.update(extra)
    return body


class JournalTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.mkdir(self.dir)
        self.path = os.path.join(self.dir, "journal.sqlite")
        self.clock = Clock()
        self.clock.advance(1000)
        self.journal = self._open()

    def tearDown(self) -> None:
        self.journal.close()

    def _open(self) -> Journal:
        journal = Journal(self.path, clock=self.clock)
        self.assertEqual(journal.open(), [])
        return journal

    def _reopen(self) -> list[Any]:
        """Close and reopen ``self.journal`` on the same file; returns recovered."""
        self.journal.close()
        self.journal = Journal(self.path, clock=self.clock)
        return self.journal.open()

    def test_accept_new(self) -> None:
        """A new id is recorded as running, unacked, with the clock's time."""
        entry, new = self.journal.accept("c1", "system.health")
        self.assertTrue(new)
        self.assertEqual(entry.command_id, "c1")
        self.assertEqual(entry.verb, "system.health")
        self.assertEqual(entry.state, "running")
        self.assertIsNone(entry.result)
        self.assertEqual(entry.received_at, 1000.0)
        self.assertIsNone(entry.finished_at)
        self.assertFalse(entry.acked)
        self.assertEqual(self.journal.get("c1"), entry)

    def test_accept_duplicate(self) -> None:
        """A known id returns the existing entry, False, and adds no row."""
        first, _ = self.journal.accept("c1", "system.health")
        self.clock.advance(5)
        again, new = self.journal.accept("c1", "other.verb")
        self.assertFalse(new)
        self.assertEqual(again, first)
        self.journal.finish("c1", _result())
        finished, new = self.journal.accept("c1", "system.health")
        self.assertFalse(new)
        self.assertEqual(finished.state, "finished")
        self.assertEqual(finished.result, _result())
        count = self.journal._conn().execute("SELECT COUNT(*) FROM commands").fetchone()[0]
        self.assertEqual(count, 1)

    def test_get_unknown(self) -> None:
        """get() of an id never accepted is None."""
        self.assertIsNone(self.journal.get("nope"))

    def test_finish_then_get(self) -> None:
        """finish() records the result and finish time; get() returns them."""
        self.journal.accept("c1", "v")
        self.clock.advance(3)
        entry = self.journal.finish("c1", _result())
        self.assertEqual(entry.state, "finished")
        self.assertEqual(entry.result, _result())
        self.assertEqual(entry.received_at, 1000.0)
        self.assertEqual(entry.finished_at, 1003.0)
        self.assertFalse(entry.acked)
        self.assertEqual(self.journal.get("c1"), entry)

    def test_finish_idempotent(self) -> None:
        """A second finish() keeps the first result and finish order."""
        self.journal.accept("c1", "v")
        self.journal.accept("c2", "v")
        first = self.journal.finish("c1", _result("success"))
        self.journal.finish("c2", _result())
        self.clock.advance(10)
        again = self.journal.finish("c1", _result("failure", exit_code=1))
        self.assertEqual(again, first)
        self.assertEqual([e.command_id for e in self.journal.unacked()], ["c1", "c2"])

    def test_finish_unknown(self) -> None:
        """finish() of an unknown id raises a KeyError naming the id."""
        exc = self.assertRaises(UnknownCommandError, self.journal.finish, "ghost", _result())
        self.assertIsInstance(exc, KeyError)
        self.assertIn("'ghost'", str(exc))

    def test_finish_unserializable(self) -> None:
        """A result that is not JSON fails before anything is written."""
        self.journal.accept("c1", "v")
        self.assertRaises(TypeError, self.journal.finish, "c1", {"x": object()})
        self.assertEqual(self.journal.get("c1").state, "running")

    def test_unacked_order_by_finish_sequence(self) -> None:
        """unacked() follows finish order, not accept order, at equal timestamps."""
        for command_id in ("a", "b", "c"):
            self.journal.accept(command_id, "v")
        for command_id in ("c", "a", "b"):
            self.journal.finish(command_id, _result())
        self.assertEqual({e.finished_at for e in self.journal.unacked()}, {1000.0})
        self.assertEqual([e.command_id for e in self.journal.unacked()], ["c", "a", "b"])

    def test_unacked_excludes_running(self) -> None:
        """Running entries have no result to replay yet."""
        self.journal.accept("r", "v")
        self.assertEqual(self.journal.unacked(), [])

    def test_ack(self) -> None:
        """ack() removes an entry from unacked(); unknown or running ids give False."""
        self.journal.accept("a", "v")
        self.journal.accept("b", "v")
        self.journal.accept("running", "v")
        self.journal.finish("a", _result())
        self.journal.finish("b", _result())
        self.assertTrue(self.journal.ack("a"))
        self.assertTrue(self.journal.ack("a"))
        self.assertFalse(self.journal.ack("unknown"))
        self.assertFalse(self.journal.ack("running"))
        self.assertTrue(self.journal.get("a").acked)
        self.assertFalse(self.journal.get("running").acked)
        self.assertEqual([e.command_id for e in self.journal.unacked()], ["b"])

    def test_restart_recovery(self) -> None:
        """A command left running by a dead process is reported lost and unacked."""
        self.journal.accept("done", "v")
        self.journal.finish("done", _result())
        self.journal.accept("interrupted", "service.restart")
        self.clock.advance(60)
        recovered = self._reopen()
        self.assertEqual(len(recovered), 1)
        lost = recovered[0]
        self.assertEqual(lost.command_id, "interrupted")
        self.assertEqual(lost.verb, "service.restart")
        self.assertEqual(lost.state, "finished")
        self.assertEqual(lost.finished_at, 1060.0)
        self.assertEqual(lost.result, lost_result(1000.0, 1060.0))
        self.assertEqual(lost.result["status"], "lost")
        self.assertEqual(lost.result["error"]["code"], "AGENT_RESTARTED")
        self.assertEqual(self.journal.get("interrupted"), lost)
        self.assertEqual([e.command_id for e in self.journal.unacked()], ["done", "interrupted"])
        # A redelivery after the restart is answered, not rerun.
        entry, new = self.journal.accept("interrupted", "service.restart")
        self.assertFalse(new)
        self.assertEqual(entry.result["status"], "lost")
        # Recovery happens once: a further reopen finds nothing running.
        self.assertEqual(self._reopen(), [])

    def test_data_survives_reopen(self) -> None:
        """Entries, results, acks and finish order persist across close/open."""
        for command_id in ("a", "b"):
            self.journal.accept(command_id, "v")
        self.journal.finish("b", _result(stdout="ü ✓"))
        self.journal.finish("a", _result())
        self.journal.ack("a")
        before = {cid: self.journal.get(cid) for cid in ("a", "b")}
        self.journal.close()
        self.journal.close()  # idempotent
        self.journal = self._open()
        self.assertEqual({cid: self.journal.get(cid) for cid in ("a", "b")}, before)
        self.assertEqual(self.journal.get("b").result["stdout"], "ü ✓")
        self.journal.accept("d", "v")
        self.journal.finish("d", _result())
        self.assertEqual([e.command_id for e in self.journal.unacked()], ["b", "d"])
        db = self.journal._conn()
        versions = [row[0] for row in db.execute("SELECT version FROM schema_version")]
        self.assertEqual(versions, list(range(1, SCHEMA_VERSION + 1)))
        # Mirrored for a gateway rolled back to a release that reads only user_version.
        self.assertEqual(db.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION)

    def test_prune(self) -> None:
        """Only acked entries older than max_age and outside the newest `keep` go."""
        for i in range(5):
            self.journal.accept(f"old{i}", "v")
            self.journal.finish(f"old{i}", _result())
            if i != 2:
                self.journal.ack(f"old{i}")
        self.journal.accept("old-running", "v")
        self.clock.advance(100)
        self.journal.accept("new", "v")
        self.journal.finish("new", _result())
        self.journal.ack("new")
        # Everything old is younger than max_age: nothing goes.
        self.assertEqual(self.journal.prune(max_age=200, keep=0), 0)
        # Keep the newest 2 finished (new, old4): old0, old1, old3 go;
        # old2 is unacked and old-running is running, so they stay.
        self.assertEqual(self.journal.prune(max_age=50, keep=2), 3)
        remaining = {"old2", "old4", "old-running", "new"}
        for cid in ("old0", "old1", "old2", "old3", "old4", "old-running", "new"):
            self.assertEqual(self.journal.get(cid) is not None, cid in remaining, cid)
        self.assertEqual(self.journal.prune(max_age=50, keep=0), 1)  # old4
        self.assertIsNone(self.journal.get("old4"))
        self.assertIsNotNone(self.journal.get("new"))
        self.assertEqual([e.command_id for e in self.journal.unacked()], ["old2"])
        self.assertRaises(ValueError, self.journal.prune, max_age=-1)
        self.assertRaises(ValueError, self.journal.prune, keep=-1)

    def test_finish_order_after_prune(self) -> None:
        """Pruning the newest finished entry does not reorder later finishes."""
        for cid in ("a", "b", "c"):
            self.journal.accept(cid, "v")
        self.journal.finish("a", _result())
        self.journal.finish("b", _result())
        self.journal.ack("b")
        self.clock.advance(10)
        self.assertEqual(self.journal.prune(max_age=1, keep=0), 1)
        self.journal.finish("c", _result())
        self.assertEqual([e.command_id for e in self.journal.unacked()], ["a", "c"])

    def test_file_mode(self) -> None:
        """The journal and its WAL files are readable by the owner only."""
        self.journal.accept("c1", "v")
        for suffix in ("", "-wal", "-shm"):
            path = self.path + suffix
            if suffix == "" or os.path.exists(path):
                self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)

    def test_existing_file_mode_tightened(self) -> None:
        """A pre-existing journal with a loose mode is made 0600 on open."""
        self.journal.close()
        os.chmod(self.path, 0o644)
        self.journal = self._open()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_corrupt_file(self) -> None:
        """A file that is not SQLite gives a JournalError naming the path."""
        path = os.path.join(self.dir, "garbage.sqlite")
        with open(path, "wb") as f:
            f.write(b"this is not a database at all, " * 100)
        journal = Journal(path, clock=self.clock)
        exc = self.assertRaises(JournalError, journal.open)
        self.assertIn(path, str(exc))
        self.assertRaises(JournalError, journal.get, "x")  # not left half-open

    def test_missing_parent_dir(self) -> None:
        """The parent directory is not created; the error names the path."""
        path = os.path.join(self.dir, "missing", "journal.sqlite")
        exc = self.assertRaises(JournalError, Journal(path, clock=self.clock).open)
        self.assertIn(path, str(exc))
        self.assertFalse(os.path.exists(os.path.dirname(path)))

    def test_newer_schema_refused(self) -> None:
        """A journal written by a newer agent is not silently downgraded."""
        self.journal._conn().execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?, 0)", (SCHEMA_VERSION + 1,)
        )
        self.journal.close()
        exc = self.assertRaises(JournalError, Journal(self.path, clock=self.clock).open)
        self.assertIn(self.path, str(exc))
        self.assertIn(f"schema version {SCHEMA_VERSION + 1}, newer", str(exc))

    def test_closed_journal(self) -> None:
        """Using a closed journal is a clear error, not an AttributeError."""
        self.journal.close()
        exc = self.assertRaises(JournalError, self.journal.accept, "c1", "v")
        self.assertIn("not open", str(exc))


class LegacyJournalTests(unittest.TestCase):
    """Journals of releases that kept their schema version in ``PRAGMA user_version``."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.path = self.mktemp()

    def legacy(self, version: int) -> None:
        """A journal as a release before schema_version wrote it, at ``version``."""
        db = sqlite3.connect(self.path, isolation_level=None)
        for statements in journal_module._MIGRATIONS[:version]:
            for statement in statements:
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {version}")
        db.execute(
            "INSERT INTO commands (command_id, verb, state, result, received_at, finished_at,"
            " finish_seq, acked) VALUES ('c1', 'ping', 'finished', ?, 5.0, 6.0, 1, 0)",
            (json.dumps(_result()),),
        )
        db.close()

    def test_current_legacy_journal_adopted(self) -> None:
        """A journal at the latest version opens as it is: its versions are recorded in
        schema_version, nothing runs again, and its unacknowledged result is kept."""
        self.legacy(SCHEMA_VERSION)
        journal = Journal(self.path, clock=self.clock)
        self.addCleanup(journal.close)
        journal.open()
        self.assertEqual([e.command_id for e in journal.unacked()], ["c1"])
        rows = journal._conn().execute("SELECT version, applied_at FROM schema_version")
        self.assertEqual(list(rows), [(v, 1000.0) for v in range(1, SCHEMA_VERSION + 1)])

    def test_older_legacy_journal_migrated(self) -> None:
        """A journal at version 1 (no nonces, no process groups) gets the migrations it
        lacks, and keeps its entries."""
        self.legacy(1)
        journal = Journal(self.path, clock=self.clock)
        self.addCleanup(journal.close)
        journal.open()
        self.assertEqual(journal.get("c1").result, _result())
        self.assertTrue(journal.remember_nonce("n", 2000.0, 1000.0))
        versions = [r[0] for r in journal._conn().execute("SELECT version FROM schema_version")]
        self.assertEqual(versions, list(range(1, SCHEMA_VERSION + 1)))
        self.assertEqual(
            journal._conn().execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION
        )

    def test_newer_legacy_journal_refused(self) -> None:
        """A user_version past this release's migrations is refused, naming the file."""
        self.legacy(SCHEMA_VERSION)
        db = sqlite3.connect(self.path)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.close()
        exc = self.assertRaises(JournalError, Journal(self.path, clock=self.clock).open)
        self.assertIn(self.path, str(exc))
        self.assertIn("newer", str(exc))
