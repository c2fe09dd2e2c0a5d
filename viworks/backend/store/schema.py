"""Schema migrations shared by the SQLite and PostgreSQL stores.

Each migration is a tuple of single SQL statements (no ``executescript``:
sqlite3's ``executescript`` commits on its own, which would break the
one-transaction-per-migration rule). Statements may use ``{name}``
placeholders for the few types that differ between engines; each store
supplies them in its ``DDL_TYPES`` mapping:

- ``{real}``: a float column (epoch seconds). SQLite ``REAL`` is 8 bytes,
  PostgreSQL ``REAL`` is only 4, hence ``DOUBLE PRECISION`` there.
- ``{serial_pk}``: an auto-incremented integer primary key, used to keep
  insertion order (FIFO dispatch must not depend on two commands having
  different ``created_at`` values).

Never edit a migration that has shipped; append a new one.
"""

from __future__ import annotations

from collections.abc import Mapping

# The version table itself is created before any migration runs, so it
# cannot be part of the list. One row per applied migration.
SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " version INTEGER PRIMARY KEY,"
    " applied_at {real} NOT NULL)"
)

MIGRATIONS: list[tuple[str, ...]] = [
    # 1: agents, commands ledger, API tokens.
    (
        """
        CREATE TABLE agents (
            agent_id TEXT PRIMARY KEY,
            status TEXT NOT NULL DEFAULT 'offline'
                CHECK (status IN ('online', 'offline')),
            version TEXT,
            site TEXT,
            hostname TEXT,
            protocol INTEGER,
            verbs TEXT NOT NULL DEFAULT '{{}}',
            connected_at {real},
            last_seen {real},
            peer TEXT,
            session_id TEXT,
            labels TEXT NOT NULL DEFAULT '{{}}'
        )
        """,
        """
        CREATE TABLE commands (
            seq {serial_pk},
            command_id TEXT NOT NULL UNIQUE,
            agent_id TEXT NOT NULL,
            verb TEXT NOT NULL,
            args TEXT NOT NULL DEFAULT '{{}}',
            status TEXT NOT NULL,
            timeout {real},
            exit_code INTEGER,
            result TEXT,
            stdout TEXT,
            stderr TEXT,
            stdout_truncated INTEGER NOT NULL DEFAULT 0,
            stderr_truncated INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            created_at {real} NOT NULL,
            dispatched_at {real},
            started_at {real},
            finished_at {real}
        )
        """,
        "CREATE INDEX commands_agent_status_created ON commands (agent_id, status, created_at)",
        # For the unfiltered "newest first" listing.
        "CREATE INDEX commands_created ON commands (created_at)",
        """
        CREATE TABLE tokens (
            name TEXT PRIMARY KEY,
            token_hash TEXT NOT NULL UNIQUE,
            created_at {real} NOT NULL
        )
        """,
    ),
]

LATEST_VERSION = len(MIGRATIONS)


def render(statement: str, ddl_types: Mapping[str, str]) -> str:
    """Fill the engine-specific type placeholders of one DDL statement."""
    return statement.format_map(ddl_types).strip()
