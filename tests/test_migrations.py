"""Tests for viworks.migrations, the declared-migrations runner (SQLite in memory)."""

from __future__ import annotations

import sqlite3
from typing import Any

from twisted.trial import unittest

from viworks import migrations

MIGRATIONS = [
    ("CREATE TABLE a (x INTEGER)", "INSERT INTO a VALUES (1)"),
    ("CREATE TABLE b (y {float})",),
]


def render(statement: str) -> str:
    return statement.replace("{float}", "REAL")


class MigrateTests(unittest.TestCase):
    def setUp(self) -> None:
        self.db = sqlite3.connect(":memory:", isolation_level=None)
        self.addCleanup(self.db.close)

    def migrate(self, steps: list[tuple[str, ...]], **kw: Any) -> tuple[int, int]:
        return migrations.migrate(self.db.cursor(), steps, 123.0, render=render, **kw)

    def versions(self) -> list[tuple[int, float]]:
        return list(self.db.execute("SELECT version, applied_at FROM schema_version"))

    def test_fresh_database(self) -> None:
        """Every migration runs in order (rendered), one version row each."""
        applied: list[int] = []
        self.assertEqual(self.migrate(MIGRATIONS, on_applied=applied.append), (0, 2))
        self.assertEqual(applied, [1, 2])
        self.assertEqual(self.versions(), [(1, 123.0), (2, 123.0)])
        self.assertEqual(self.db.execute("SELECT x FROM a").fetchall(), [(1,)])
        self.db.execute("INSERT INTO b VALUES (1.5)")

    def test_only_what_is_missing(self) -> None:
        """A second run applies only migrations appended since; nothing runs twice."""
        self.migrate(MIGRATIONS[:1])
        self.assertEqual(self.migrate(MIGRATIONS), (1, 2))
        self.assertEqual(self.db.execute("SELECT x FROM a").fetchall(), [(1,)])
        self.assertEqual(self.migrate(MIGRATIONS), (2, 2))

    def test_newer_database_refused(self) -> None:
        """A database past the list is refused, and nothing is changed."""
        self.migrate(MIGRATIONS)
        error = self.assertRaises(migrations.SchemaTooNew, self.migrate, MIGRATIONS[:1])
        self.assertEqual((error.found, error.latest), (2, 1))
        self.assertEqual(len(self.versions()), 2)

    def test_adopt(self) -> None:
        """``adopt`` records versions applied by an earlier scheme instead of running them,
        and is ignored once versions are recorded."""
        self.db.execute("CREATE TABLE a (x INTEGER)")
        self.assertEqual(self.migrate(MIGRATIONS, adopt=1), (1, 2))
        self.assertEqual(self.db.execute("SELECT COUNT(*) FROM a").fetchone(), (0,))
        self.assertEqual([v for v, _ in self.versions()], [1, 2])
        self.assertEqual(self.migrate(MIGRATIONS, adopt=5), (2, 2))

    def test_adopt_too_new(self) -> None:
        """An adopted version past the list is refused too."""
        self.assertRaises(migrations.SchemaTooNew, self.migrate, MIGRATIONS, adopt=3)

    def test_failure_rolls_back_in_callers_transaction(self) -> None:
        """In the caller's transaction, a failing migration leaves the old schema whole."""
        self.migrate(MIGRATIONS[:1])
        broken = [*MIGRATIONS, ("CREATE TABLE c (z INTEGER)", "NOT SQL")]
        self.db.execute("BEGIN")
        self.assertRaises(sqlite3.OperationalError, self.migrate, broken)
        self.db.execute("ROLLBACK")
        self.assertEqual([v for v, _ in self.versions()], [1])
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master")}
        self.assertNotIn("b", tables)
        self.assertNotIn("c", tables)
