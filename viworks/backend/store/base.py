"""Engine-independent store: all the SQL lives here.

Subclasses (``SQLiteStore``, ``PostgresStore``) only provide the pool, the
parameter style, the few DDL types that differ and how a migration run is
serialised against other processes. Queries are written with ``?``
placeholders and rewritten by :meth:`SQLStore._sql` for ``%s`` engines.

Every public method runs in the adbapi thread pool and is ``async``; the
reactor thread never blocks on the database (except in :meth:`close`, which
joins the pool threads).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from twisted.enterprise.adbapi import ConnectionPool, Transaction

from viworks.backend.store import schema
from viworks.logs import Logger

AGENT_JSON = frozenset({"verbs", "labels"})

COMMAND_COLUMNS = (
    "command_id",
    "agent_id",
    "verb",
    "args",
    "status",
    "timeout",
    "exit_code",
    "result",
    "stdout",
    "stderr",
    "stdout_truncated",
    "stderr_truncated",
    "error",
    "created_at",
    "dispatched_at",
    "started_at",
    "finished_at",
)
COMMAND_JSON = frozenset({"args", "result", "error"})
COMMAND_BOOL = frozenset({"stdout_truncated", "stderr_truncated"})
COMMAND_REQUIRED = frozenset({"command_id", "agent_id", "verb", "created_at"})
# command_id is the key; changing it through update_command makes no sense.
COMMAND_MUTABLE = frozenset(COMMAND_COLUMNS) - {"command_id"}

_COMMAND_SELECT = "SELECT {} FROM commands".format(", ".join(COMMAND_COLUMNS))


class StoreError(Exception):
    """Base class for store errors."""


class DuplicateToken(StoreError):
    """A token with this name (or this hash) already exists."""


class SchemaTooNew(StoreError):
    """The database was migrated by a newer viworks than this one."""


def _encode_json(value: Any) -> str | None:
    # None stays SQL NULL so "no result yet" is distinguishable from a JSON
    # value; sorted keys make stored rows stable and diffable.
    if value is None:
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _decode_json(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def _rows(txn: Transaction) -> list[dict[str, Any]]:
    names = [d[0] for d in txn.description]
    return [dict(zip(names, row, strict=True)) for row in txn.fetchall()]


def _agent_from_row(row: dict[str, Any]) -> dict[str, Any]:
    for key in AGENT_JSON:
        row[key] = _decode_json(row[key])
    return row


def _command_from_row(row: dict[str, Any]) -> dict[str, Any]:
    for key in COMMAND_JSON:
        row[key] = _decode_json(row[key])
    for key in COMMAND_BOOL:
        row[key] = bool(row[key])
    return row


def _command_values(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Validate column names and convert Python values to stored ones."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key in COMMAND_JSON:
            value = _encode_json(value)
        elif key in COMMAND_BOOL:
            # INTEGER in both engines; psycopg would send a bool as boolean.
            value = int(bool(value))
        out[key] = value
    return out


def _check_mutable(fields: Mapping[str, Any]) -> None:
    unknown = set(fields) - COMMAND_MUTABLE
    if unknown:
        raise ValueError(f"unknown or immutable command fields: {sorted(unknown)}")


class SQLStore:
    """The viworks store over a DB-API connection pool.

    Subclasses set ``PARAMSTYLE`` and ``DDL_TYPES`` and implement
    :meth:`_make_pool` and :meth:`_lock_for_migration`.
    """

    PARAMSTYLE: ClassVar[str] = "qmark"
    DDL_TYPES: ClassVar[Mapping[str, str]] = {}

    log = Logger()

    def __init__(self, reactor: Any = None) -> None:
        self._reactor = reactor
        self._pool: ConnectionPool = self._make_pool(reactor)
        self._closed = False

    # -- engine hooks -----------------------------------------------------

    def _make_pool(self, reactor: Any) -> ConnectionPool:
        raise NotImplementedError

    def _lock_for_migration(self, txn: Transaction) -> None:
        """Start the migration transaction so concurrent openers serialise."""
        raise NotImplementedError

    # -- helpers ------------------------------------------------------------

    def _sql(self, sql: str) -> str:
        if self.PARAMSTYLE == "qmark":
            return sql
        # format/pyformat: literal % must be doubled. No query here has a
        # '?' inside a string literal, so the rewrite is safe.
        return sql.replace("%", "%%").replace("?", "%s")

    def _execute(self, txn: Transaction, sql: str, params: Sequence[Any] = ()) -> None:
        txn.execute(self._sql(sql), tuple(params))

    def _run(self, func: Any, *args: Any, **kw: Any) -> Any:
        return self._pool.runInteraction(func, *args, **kw)

    # -- lifecycle ----------------------------------------------------------

    async def open(self) -> int:
        """Apply pending migrations; return the schema version now in use."""
        return await self._run(self._migrate_txn, time.time())

    async def close(self) -> None:
        """Close the pool. Safe to call twice.

        ``async`` for callers' sake (``await store.close()``); adbapi's close
        itself is synchronous and briefly joins the idle pool threads.
        """
        if not self._closed:
            self._closed = True
            self._pool.close()

    def _migrate_txn(self, txn: Transaction, now: float) -> int:
        self._lock_for_migration(txn)
        self._execute(txn, schema.render(schema.SCHEMA_VERSION_DDL, self.DDL_TYPES))
        self._execute(txn, "SELECT MAX(version) FROM schema_version")
        current = txn.fetchone()[0] or 0
        if current > schema.LATEST_VERSION:
            raise SchemaTooNew(
                f"database schema version {current} is newer than this "
                f"viworks supports ({schema.LATEST_VERSION})"
            )
        # All pending migrations share one transaction (both engines have
        # transactional DDL): a failed upgrade leaves the old schema intact.
        for version in range(current + 1, schema.LATEST_VERSION + 1):
            for statement in schema.MIGRATIONS[version - 1]:
                self._execute(txn, schema.render(statement, self.DDL_TYPES))
            self._execute(
                txn,
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (version, now),
            )
            self.log.info("store migrated to schema version {version}", version=version)
        return schema.LATEST_VERSION

    # -- agents -------------------------------------------------------------

    async def upsert_agent_online(
        self,
        agent_id: str,
        *,
        version: str | None,
        site: str | None,
        hostname: str | None,
        protocol: int | None,
        verbs: Mapping[str, Any],
        peer: str | None,
        session_id: str,
        labels: Mapping[str, Any] | None,
        now: float,
    ) -> dict[str, Any]:
        """Record a (re)connected agent as online under ``session_id``."""
        params = (
            agent_id,
            version,
            site,
            hostname,
            protocol,
            _encode_json(dict(verbs)),
            now,
            now,
            peer,
            session_id,
            _encode_json(dict(labels or {})),
        )
        return await self._run(self._upsert_agent_txn, params)

    def _upsert_agent_txn(self, txn: Transaction, params: tuple[Any, ...]) -> dict[str, Any]:
        self._execute(
            txn,
            """
            INSERT INTO agents (agent_id, status, version, site, hostname,
                protocol, verbs, connected_at, last_seen, peer, session_id,
                labels)
            VALUES (?, 'online', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (agent_id) DO UPDATE SET
                status = excluded.status,
                version = excluded.version,
                site = excluded.site,
                hostname = excluded.hostname,
                protocol = excluded.protocol,
                verbs = excluded.verbs,
                connected_at = excluded.connected_at,
                last_seen = excluded.last_seen,
                peer = excluded.peer,
                session_id = excluded.session_id,
                labels = excluded.labels
            """,
            params,
        )
        agent = self._get_agent_txn(txn, params[0])
        assert agent is not None
        return agent

    async def touch_agent(self, agent_id: str, now: float) -> bool:
        """Update ``last_seen``; return False if the agent is unknown."""
        return (
            await self._run(
                self._update_count_txn,
                "UPDATE agents SET last_seen = ? WHERE agent_id = ?",
                (now, agent_id),
            )
            > 0
        )

    async def mark_agent_offline(self, agent_id: str, session_id: str, now: float) -> bool:
        """Mark the agent offline if ``session_id`` is its current online session.

        Returns True only when this call changed the agent to offline; a late
        close of an older session (the agent has reconnected since) or a
        second close of the same session is a no-op returning False.
        """
        return (
            await self._run(
                self._update_count_txn,
                "UPDATE agents SET status = 'offline', last_seen = ?"
                " WHERE agent_id = ? AND session_id = ? AND status = 'online'",
                (now, agent_id, session_id),
            )
            > 0
        )

    async def mark_all_agents_offline(self, now: float) -> int:
        """Mark every agent offline (backend start); return how many were online.

        ``last_seen`` is left alone: nobody saw these agents at ``now``, the
        previous backend process simply died with their sessions. ``now`` is
        accepted for symmetry with the other agent methods.
        """
        del now
        return await self._run(
            self._update_count_txn,
            "UPDATE agents SET status = 'offline' WHERE status = 'online'",
            (),
        )

    async def get_agent(self, agent_id: str) -> dict[str, Any] | None:
        """Return the agent row, or None."""
        return await self._run(self._get_agent_txn, agent_id)

    async def list_agents(self) -> list[dict[str, Any]]:
        """Return all agents ordered by ``agent_id``."""
        return await self._run(self._list_agents_txn)

    def _get_agent_txn(self, txn: Transaction, agent_id: str) -> dict[str, Any] | None:
        self._execute(txn, "SELECT * FROM agents WHERE agent_id = ?", (agent_id,))
        rows = _rows(txn)
        return _agent_from_row(rows[0]) if rows else None

    def _list_agents_txn(self, txn: Transaction) -> list[dict[str, Any]]:
        self._execute(txn, "SELECT * FROM agents ORDER BY agent_id")
        return [_agent_from_row(row) for row in _rows(txn)]

    def _update_count_txn(self, txn: Transaction, sql: str, params: Sequence[Any]) -> int:
        self._execute(txn, sql, params)
        return txn.rowcount

    # -- commands -----------------------------------------------------------

    async def create_command(self, command: Mapping[str, Any]) -> dict[str, Any]:
        """Insert a command; return it as stored (with defaults filled in).

        Requires ``command_id``, ``agent_id``, ``verb`` and ``created_at``;
        ``status`` defaults to ``'queued'`` and ``args`` to ``{}``.
        """
        unknown = set(command) - set(COMMAND_COLUMNS)
        if unknown:
            raise ValueError(f"unknown command fields: {sorted(unknown)}")
        missing = COMMAND_REQUIRED - set(command)
        if missing:
            raise ValueError(f"missing command fields: {sorted(missing)}")
        fields = {"status": "queued", "args": {}, **command}
        return await self._run(self._create_command_txn, _command_values(fields))

    def _create_command_txn(self, txn: Transaction, values: dict[str, Any]) -> dict[str, Any]:
        columns = list(values)
        self._execute(
            txn,
            "INSERT INTO commands ({}) VALUES ({})".format(
                ", ".join(columns), ", ".join("?" for _ in columns)
            ),
            [values[c] for c in columns],
        )
        created = self._get_command_txn(txn, values["command_id"])
        assert created is not None
        return created

    async def get_command(self, command_id: str) -> dict[str, Any] | None:
        """Return the command, or None."""
        return await self._run(self._get_command_txn, command_id)

    def _get_command_txn(self, txn: Transaction, command_id: str) -> dict[str, Any] | None:
        self._execute(txn, _COMMAND_SELECT + " WHERE command_id = ?", (command_id,))
        rows = _rows(txn)
        return _command_from_row(rows[0]) if rows else None

    async def list_commands(
        self,
        agent_id: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Return up to ``limit`` commands, newest first, optionally filtered."""
        where: list[str] = []
        params: list[Any] = []
        if agent_id is not None:
            where.append("agent_id = ?")
            params.append(agent_id)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        sql = _COMMAND_SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        # seq breaks created_at ties in insertion order.
        sql += " ORDER BY created_at DESC, seq DESC LIMIT ?"
        params.append(int(limit))
        return await self._run(self._select_commands_txn, sql, params)

    async def queued_commands(self, agent_id: str) -> list[dict[str, Any]]:
        """Return the agent's ``queued`` commands, oldest first (FIFO)."""
        return await self._run(
            self._select_commands_txn,
            _COMMAND_SELECT + " WHERE agent_id = ? AND status = 'queued' ORDER BY created_at, seq",
            (agent_id,),
        )

    def _select_commands_txn(
        self, txn: Transaction, sql: str, params: Sequence[Any]
    ) -> list[dict[str, Any]]:
        self._execute(txn, sql, params)
        return [_command_from_row(row) for row in _rows(txn)]

    async def update_command(self, command_id: str, **fields: Any) -> dict[str, Any] | None:
        """Set the given columns; return the updated command, or None if unknown."""
        _check_mutable(fields)
        return await self._run(self._update_command_txn, command_id, None, fields)

    async def update_command_if(
        self,
        command_id: str,
        expected_statuses: tuple[str, ...],
        **fields: Any,
    ) -> dict[str, Any] | None:
        """Compare-and-set: update only if the current status is expected.

        Returns the updated command, or None when the command is unknown or
        its status is not in ``expected_statuses``. The check and the write
        are one ``UPDATE`` statement, so concurrent writers cannot interleave.
        """
        if not expected_statuses:
            raise ValueError("expected_statuses must not be empty")
        _check_mutable(fields)
        return await self._run(
            self._update_command_txn, command_id, tuple(expected_statuses), fields
        )

    def _update_command_txn(
        self,
        txn: Transaction,
        command_id: str,
        expected: tuple[str, ...] | None,
        fields: Mapping[str, Any],
    ) -> dict[str, Any] | None:
        values = _command_values(fields)
        if values:
            assignments = ", ".join(f"{c} = ?" for c in values)
        else:
            # Still run the UPDATE so update_command_if keeps its
            # compare semantics with no fields.
            assignments = "status = status"
        sql = f"UPDATE commands SET {assignments} WHERE command_id = ?"
        params: list[Any] = [*values.values(), command_id]
        if expected is not None:
            sql += " AND status IN ({})".format(", ".join("?" for _ in expected))
            params.extend(expected)
        self._execute(txn, sql, params)
        if txn.rowcount == 0:
            return None
        # Our UPDATE holds the row lock until commit, so this read sees
        # exactly what we wrote.
        return self._get_command_txn(txn, command_id)

    # -- tokens -------------------------------------------------------------

    async def create_token(self, name: str, token_hash: str, now: float) -> dict[str, Any]:
        """Store a token hash under ``name``; raise DuplicateToken if taken."""
        try:
            await self._run(
                self._update_count_txn,
                "INSERT INTO tokens (name, token_hash, created_at) VALUES (?, ?, ?)",
                (name, token_hash, now),
            )
        except self._pool.dbapi.IntegrityError as e:
            raise DuplicateToken(f"token name {name!r} or its hash is already in use") from e
        return {"name": name, "created_at": now}

    async def token_name_for_hash(self, token_hash: str) -> str | None:
        """Return the name of the token with this hash, or None."""
        rows = await self._run(
            self._select_txn, "SELECT name FROM tokens WHERE token_hash = ?", (token_hash,)
        )
        return rows[0]["name"] if rows else None

    async def list_tokens(self) -> list[dict[str, Any]]:
        """Return ``{name, created_at}`` for every token (hashes are not listed)."""
        return await self._run(
            self._select_txn, "SELECT name, created_at FROM tokens ORDER BY name", ()
        )

    def _select_txn(
        self, txn: Transaction, sql: str, params: Iterable[Any]
    ) -> list[dict[str, Any]]:
        self._execute(txn, sql, list(params))
        return _rows(txn)
