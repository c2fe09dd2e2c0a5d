"""Declared schema migrations for an SQL database, recorded in a ``schema_version`` table.

A migration list is a sequence whose item ``N - 1`` upgrades a database from version
``N - 1`` to ``N``: a tuple of single SQL statements (no scripts: a driver that runs a
script may commit on its own, and every pending migration must share the caller's one
transaction, so that a failed upgrade leaves the old schema whole). Never edit a
migration that has shipped; append a new one.

``migrate`` creates the version table if needed, refuses a database newer than the list
(``SchemaTooNew``), applies what is missing and records one row per version applied.
It runs on any DB-API cursor inside a transaction the caller holds; the float type of
``applied_at`` and the parameter marker are the caller's (SQLite's by default).

The gateway's journal migrates with it; the backend store records its migrations in a
table of the same shape (``viworks.backend.store.schema``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

__all__ = ["SCHEMA_VERSION_DDL", "Cursor", "SchemaTooNew", "migrate", "recorded_version"]

#: The version table; ``{real}`` is the engine's 8-byte float type.
SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " version INTEGER PRIMARY KEY,"
    " applied_at {real} NOT NULL)"
)


class Cursor(Protocol):
    """What ``migrate`` needs of a DB-API cursor (sqlite3, psycopg, adbapi's Transaction)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> object: ...

    def fetchone(self) -> Any: ...


class SchemaTooNew(Exception):
    """The database was migrated by a newer release than this one."""

    def __init__(self, found: int, latest: int) -> None:
        super().__init__(f"schema version {found} is newer than this release supports ({latest})")
        self.found = found
        self.latest = latest


def recorded_version(cursor: Cursor) -> int:
    """The highest version recorded in ``schema_version`` (0 when none; the table must exist)."""
    cursor.execute("SELECT MAX(version) FROM schema_version")
    row = cursor.fetchone()
    return int(row[0] or 0)


def migrate(
    cursor: Cursor,
    migrations: Sequence[Sequence[str]],
    now: float,
    *,
    adopt: int = 0,
    real: str = "REAL",
    mark: str = "?",
    render: Callable[[str], str] = str,
    on_applied: Callable[[int], object] | None = None,
) -> tuple[int, int]:
    """Bring the database to ``len(migrations)``; return ``(version before, version now)``.

    ``adopt``: when no version is recorded yet, versions ``1..adopt`` are taken as
    applied by an earlier scheme (recorded with ``now``) instead of run again (the
    journal's ``PRAGMA user_version`` of earlier releases). ``render`` turns each
    migration statement into the engine's SQL (type placeholders); ``on_applied(version)``
    is called after each version applied, for a log line.

    :raises SchemaTooNew: the database (or ``adopt``) is past the last migration.
    """
    latest = len(migrations)
    cursor.execute(SCHEMA_VERSION_DDL.format(real=real))
    insert = f"INSERT INTO schema_version (version, applied_at) VALUES ({mark}, {mark})"
    before = recorded_version(cursor)
    if before == 0 and adopt:
        if adopt > latest:
            raise SchemaTooNew(adopt, latest)
        for version in range(1, adopt + 1):
            cursor.execute(insert, (version, now))
        before = adopt
    if before > latest:
        raise SchemaTooNew(before, latest)
    for version in range(before + 1, latest + 1):
        for statement in migrations[version - 1]:
            cursor.execute(render(statement))
        cursor.execute(insert, (version, now))
        if on_applied is not None:
            on_applied(version)
    return before, latest
