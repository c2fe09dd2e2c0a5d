"""Persistent state of the backend: agents, the command ledger, API tokens.

``open_store(database)`` picks the engine from the string: a
``postgresql://`` / ``postgres://`` URL gives a :class:`PostgresStore`,
anything else is a SQLite file path. Call ``await store.open()`` (runs
migrations) before use and ``await store.close()`` when done.
"""

from __future__ import annotations

from typing import Any

from viworks.backend.store.base import (
    DuplicateToken,
    IdempotencyConflict,
    SchemaTooNew,
    SQLStore,
    StoreError,
)

Store = SQLStore

__all__ = [
    "DuplicateToken",
    "IdempotencyConflict",
    "SchemaTooNew",
    "Store",
    "StoreError",
    "open_store",
]


def open_store(database: str, reactor: Any = None, *, schema: str | None = None) -> Store:
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
