"""Persistent state of the backend: agents, the command ledger, jobs, tokens, audit.

``open_store(database)`` picks the engine from the string: a
``postgresql://`` / ``postgres://`` URL gives a :class:`PostgresStore`,
anything else is a SQLite file path. Call ``await store.open()`` (runs
migrations) before use and ``await store.close()`` when done.

Layout: ``interface`` (the :class:`Store` protocol the backend codes against),
``engine`` (pool, dialect, group commit, migrations; ``sqlite``/``postgres``
are its engines), ``columns`` (each table declared once), one module per
aggregate (``agents``, ``commands``, ``jobs``, ``tokens``, ``revocations``,
``audit``, ``telemetry``), ``schema`` (migrations), ``batch`` (group commit).
The store imports nothing of the backend but its value types
(``viworks.backend.model``) and the audit chain (``viworks.backend.auditchain``).
"""

from __future__ import annotations

from typing import Any

from viworks.backend.store.errors import (
    DuplicateToken,
    IdempotencyConflict,
    SchemaTooNew,
    StoreError,
)
from viworks.backend.store.interface import Store
from viworks.backend.store.sql import SQLStore

__all__ = [
    "DuplicateToken",
    "IdempotencyConflict",
    "SQLStore",
    "SchemaTooNew",
    "Store",
    "StoreError",
    "open_store",
]


def open_store(database: str, reactor: Any = None, *, schema: str | None = None) -> SQLStore:
    """Create the store for ``database`` (not yet migrated: ``await .open()``).

    ``schema`` (PostgreSQL only) puts the tables in that schema, created if
    missing; it is ignored for SQLite. The psycopg import is deferred so
    SQLite deployments do not need it.
    """
    if database.startswith(("postgresql://", "postgres://")):
        from viworks.backend.store.postgres import PostgresStore

        return PostgresStore(database, reactor, schema=schema)
    from viworks.backend.store.sqlite import SQLiteStore

    return SQLiteStore(database, reactor)
