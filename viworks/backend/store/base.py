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

from viworks import lifecycle
from viworks.backend import audit
from viworks.backend.store import schema
from viworks.backend.store.batch import BatchRunner
from viworks.logs import Logger

AGENT_JSON = frozenset({"verbs", "labels"})
AGENT_REAL = frozenset({"connected_at", "last_seen", "cert_not_after"})

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
    "expires_at",
    "dispatched_at",
    "started_at",
    "finished_at",
    "cancel_requested_at",
)
COMMAND_JSON = frozenset({"args", "result", "error"})
COMMAND_BOOL = frozenset({"stdout_truncated", "stderr_truncated"})
COMMAND_REAL = frozenset(
    {
        "timeout",
        "created_at",
        "expires_at",
        "dispatched_at",
        "started_at",
        "finished_at",
        "cancel_requested_at",
    }
)
COMMAND_REQUIRED = frozenset({"command_id", "agent_id", "verb", "created_at"})
# Columns only their own method writes (request_cancel): neither
# create_command nor transition() accepts them.
COMMAND_INTERNAL = frozenset({"cancel_requested_at"})
# Columns transition() may set along with the status: command_id is the key
# and the status itself only changes through the lifecycle.
COMMAND_MUTABLE = frozenset(COMMAND_COLUMNS) - {"command_id", "status"} - COMMAND_INTERNAL
OUTPUT_STREAMS = frozenset({"stdout", "stderr"})
TOKEN_ROLES = ("viewer", "operator", "admin")
_TOKEN_COLUMNS = "name, created_at, role, verbs, sites, expires_at, revoked_at"

_COMMAND_COLUMNS_SQL = ", ".join(COMMAND_COLUMNS)
_COMMAND_SELECT = f"SELECT {_COMMAND_COLUMNS_SQL} FROM commands"
# Commands an agent has been sent and not yet finished (lose_overdue).
_IN_FLIGHT = (lifecycle.DISPATCHED, lifecycle.RUNNING)
# Rows per multi-row event INSERT: 4 parameters each stays far below
# SQLite's 32766 and PostgreSQL's 65535 bound-parameter limits.
_EVENT_BATCH = 500
# Rows per multi-row output INSERT (5 parameters each).
_OUTPUT_BATCH = 500


JOB_STATUSES = frozenset({"running", "paused", "stopped", "completed", "cancelled"})
_JOB_COLUMNS = (
    "job_id",
    "status",
    "verb",
    "args",
    "has_secrets",
    "selector",
    "concurrency",
    "concurrency_limit",
    "max_errors",
    "max_errors_limit",
    "canary",
    "canary_auto",
    "canary_passed",
    "timeout",
    "ttl",
    "created_by",
    "created_at",
    "updated_at",
    "finished_at",
    "error",
)
_JOB_COLUMNS_SQL = ", ".join(_JOB_COLUMNS)
_JOB_JSON = frozenset({"args", "error"})
_JOB_BOOL = frozenset({"has_secrets", "canary_auto", "canary_passed"})
_JOB_REAL = frozenset({"timeout", "ttl", "created_at", "updated_at", "finished_at"})
_JOB_MUTABLE = frozenset({"status", "canary_passed", "finished_at", "error"})
_TARGET_OUTCOMES = frozenset({"expired", "rejected"})


class StoreError(Exception):
    """Base class for store errors."""


class DuplicateToken(StoreError):
    """A token with this name (or this hash) already exists."""


class SchemaTooNew(StoreError):
    """The database was migrated by a newer viworks than this one."""


class IdempotencyConflict(StoreError):
    """An idempotency key was already used for a different request.

    ``command_id`` is the command the key was first used for.
    """

    def __init__(self, command_id: str) -> None:
        super().__init__(f"idempotency key already used for command {command_id}")
        self.command_id = command_id


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


def _floats(row: dict[str, Any], keys: Iterable[str]) -> None:
    # SQLite's RETURNING skips REAL affinity (an integral 10.0 comes back as
    # the int 10); reads through SELECT and PostgreSQL give floats.
    for key in keys:
        if row[key] is not None:
            row[key] = float(row[key])


def _loaded(
    row: dict[str, Any],
    json_keys: Iterable[str],
    real_keys: Iterable[str],
    bool_keys: Iterable[str] = (),
) -> dict[str, Any]:
    """Stored values -> Python ones, in place (the reverse of :func:`_stored`)."""
    for key in json_keys:
        row[key] = _decode_json(row[key])
    for key in bool_keys:
        row[key] = bool(row[key])
    _floats(row, real_keys)
    return row


def _token_from_row(row: dict[str, Any]) -> dict[str, Any]:
    return _loaded(row, ("verbs", "sites"), ("created_at", "expires_at", "revoked_at"))


def _agent_from_row(row: dict[str, Any]) -> dict[str, Any]:
    return _loaded(row, AGENT_JSON, AGENT_REAL)


def _command_from_row(row: dict[str, Any]) -> dict[str, Any]:
    return _loaded(row, COMMAND_JSON, COMMAND_REAL, COMMAND_BOOL)


def _stored(
    fields: Mapping[str, Any], json_keys: frozenset | set, bool_keys: frozenset | set
) -> dict[str, Any]:
    """Python values -> stored ones: JSON as text, booleans as INTEGER in both engines
    (psycopg would send a bool as boolean)."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key in json_keys:
            value = _encode_json(value)
        elif key in bool_keys:
            value = int(bool(value))
        out[key] = value
    return out


def _command_values(fields: Mapping[str, Any]) -> dict[str, Any]:
    return _stored(fields, COMMAND_JSON, COMMAND_BOOL)


def _check_mutable(fields: Mapping[str, Any]) -> None:
    unknown = set(fields) - COMMAND_MUTABLE
    if unknown:
        raise ValueError(f"unknown or immutable command fields: {sorted(unknown)}")


def _new_command_values(command: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a command to create and return its stored column values."""
    unknown = set(command) - (set(COMMAND_COLUMNS) - COMMAND_INTERNAL)
    if unknown:
        raise ValueError(f"unknown command fields: {sorted(unknown)}")
    missing = COMMAND_REQUIRED - set(command)
    if missing:
        raise ValueError(f"missing command fields: {sorted(missing)}")
    fields = {"args": {}, **command, "status": command.get("status", lifecycle.QUEUED)}
    if fields["status"] != lifecycle.QUEUED:
        raise ValueError("a command is created queued; later statuses go through transition()")
    return _command_values(fields)


def _job_values(fields: Mapping[str, Any]) -> dict[str, Any]:
    return _stored(fields, _JOB_JSON, _JOB_BOOL)


def _job_from_row(row: dict[str, Any]) -> dict[str, Any]:
    return _loaded(row, _JOB_JSON, _JOB_REAL, _JOB_BOOL)


def _job_statuses(statuses: Sequence[str]) -> tuple[str, ...]:
    if isinstance(statuses, str):
        raise TypeError("statuses must be a collection of job statuses, not a string")
    result = tuple(statuses)
    unknown = set(result) - JOB_STATUSES
    if not result or unknown:
        raise ValueError(f"unknown or no job statuses: {sorted(unknown)}")
    return result


def _output_chunks(chunks: Iterable[Sequence[Any]]) -> list[tuple[int, str, str]]:
    """Validate ``(seq, stream, data)`` chunks; a repeated seq keeps its first chunk.

    Sorted by seq, so concurrent inserts of overlapping chunks (a redelivery
    racing the original on another backend) take row locks in the same
    order and cannot deadlock.
    """
    out: dict[int, tuple[int, str, str]] = {}
    for chunk in chunks:
        seq, stream, data = chunk
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValueError(f"output chunk seq must be an integer >= 0, not {seq!r}")
        if stream not in OUTPUT_STREAMS:
            raise ValueError(f"output chunk stream must be stdout or stderr, not {stream!r}")
        if not isinstance(data, str):
            raise ValueError(f"output chunk data must be a string, not {type(data).__name__}")
        out.setdefault(seq, (seq, stream, data))
    return [out[seq] for seq in sorted(out)]


def _statuses(statuses: Sequence[str]) -> tuple[str, ...]:
    """Validate a collection of statuses (a bare string is a caller bug)."""
    if isinstance(statuses, str):
        raise TypeError("statuses must be a collection of status names, not a string")
    result = tuple(statuses)
    if not result:
        raise ValueError("statuses must not be empty")
    unknown = set(result) - lifecycle.ALL
    if unknown:
        raise ValueError(f"unknown statuses: {sorted(unknown)}")
    return result


def _like_escape(text: str) -> str:
    """``text`` matched literally by ``LIKE ... ESCAPE '\\'``."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _marks(count: int) -> str:
    """``?, ?, ...``: ``count`` placeholders."""
    return ", ".join(["?"] * count)


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
        # Every call after open() goes through here: calls that queue up share a commit.
        self.batches = BatchRunner(self._pool, self._begin_batch, transient=self._transient)
        self._closed = False

    # -- engine hooks -----------------------------------------------------

    def _make_pool(self, reactor: Any) -> ConnectionPool:
        raise NotImplementedError

    def _lock_for_migration(self, txn: Transaction) -> None:
        """Start the migration transaction so concurrent openers serialise."""
        raise NotImplementedError

    def _lock_audit(self, txn: Transaction) -> None:
        """Start an audit append so concurrent writers (any process) serialise."""
        raise NotImplementedError

    def _begin_batch(self, txn: Transaction) -> None:
        """Start the transaction of a batch of calls (default: the driver's implicit one)."""

    def _transient(self, error: BaseException) -> bool:
        """True for an error that running the call alone, again, may not meet."""
        return False

    def unwritable(self, error: BaseException) -> bool:
        """True for an error saying the database answers but refuses writes (read-only, full)."""
        return False

    def _probe_write_txn(self, txn: Transaction) -> None:
        # Matches no row, yet the engine still refuses it in a read-only transaction.
        self._execute(txn, "UPDATE schema_version SET applied_at = applied_at WHERE version < 0")

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
        return self.batches.run(func, *args, **kw)

    def _run_long(self, func: Any, *args: Any, **kw: Any) -> Any:
        """``_run`` for a call that may touch many rows: never on the reactor thread."""
        return self.batches.run(func, *args, in_thread=True, **kw)

    # -- lifecycle ----------------------------------------------------------

    async def open(self) -> int:
        """Apply pending migrations; return the schema version now in use."""
        # Alone in its transaction: the migration lock starts it.
        return await self._pool.runInteraction(self._migrate_txn, time.time())

    async def close(self) -> None:
        """Run every call queued so far, then close the pool. Safe to call twice.

        Later calls fail with ``StoreClosed``. adbapi's close itself is
        synchronous and briefly joins the idle pool threads.
        """
        if not self._closed:
            self._closed = True
            await self.batches.close()
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

    async def probe_write(self) -> None:
        """Commit a write that changes nothing viworks reads; fails as writes fail (health)."""
        await self._run(self._probe_write_txn)

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
        cert_serial: str | None = None,
        signing: str = "off",
        cert_not_after: float | None = None,
    ) -> dict[str, Any]:
        """Record a (re)connected agent as online under ``session_id``.

        Each call increments the agent's ``epoch`` (1 after the first
        connection), a fencing counter for the session; the returned agent
        carries the new value. ``cert_serial`` is the (hex) serial of the
        certificate it connected with (what ``viworks pki revoke`` revokes) and
        ``cert_not_after`` (epoch seconds) the end of that certificate's validity;
        ``signing`` is what its HELLO said: ``"on"`` if it verifies command
        signatures, else ``"off"``.
        """
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
            cert_serial,
            signing,
            cert_not_after,
        )
        return await self._run(self._upsert_agent_txn, params)

    def _upsert_agent_txn(self, txn: Transaction, params: tuple[Any, ...]) -> dict[str, Any]:
        self._execute(
            txn,
            """
            INSERT INTO agents (agent_id, status, version, site, hostname,
                protocol, verbs, connected_at, last_seen, peer, session_id,
                labels, cert_serial, signing, cert_not_after, epoch)
            VALUES (?, 'online', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)
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
                labels = excluded.labels,
                cert_serial = excluded.cert_serial,
                signing = excluded.signing,
                cert_not_after = excluded.cert_not_after,
                epoch = agents.epoch + 1
            RETURNING *
            """,
            params,
        )
        return _agent_from_row(_rows(txn)[0])

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
        return await self._run_long(self._list_agents_txn)

    def _get_agent_txn(self, txn: Transaction, agent_id: str) -> dict[str, Any] | None:
        self._execute(txn, "SELECT * FROM agents WHERE agent_id = ?", (agent_id,))
        rows = _rows(txn)
        return _agent_from_row(rows[0]) if rows else None

    def _list_agents_txn(self, txn: Transaction) -> list[dict[str, Any]]:
        self._execute(txn, "SELECT * FROM agents ORDER BY agent_id")
        return [_agent_from_row(row) for row in _rows(txn)]

    async def agent_keys(self) -> list[dict[str, Any]]:
        """Every agent's ``agent_id``, ``site``, ``labels``, ``version``, ``cert_serial``
        and ``cert_not_after``, ordered by id: enough to filter, count and page a fleet
        without decoding each agent's verb schemas."""
        rows = await self._run_long(
            self._select_txn,
            "SELECT agent_id, site, labels, version, cert_serial, cert_not_after"
            " FROM agents ORDER BY agent_id",
            (),
        )
        return [_loaded(row, ("labels",), ("cert_not_after",)) for row in rows]

    async def agents_by_id(self, agent_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The agents with these ids (unknown ids left out), ordered by id."""
        return await self._run_long(self._agents_by_id_txn, list(agent_ids))

    def _agents_by_id_txn(self, txn: Transaction, agent_ids: list[str]) -> list[dict[str, Any]]:
        agents: list[dict[str, Any]] = []
        for start in range(0, len(agent_ids), _EVENT_BATCH):
            batch = agent_ids[start : start + _EVENT_BATCH]
            self._execute(
                txn, f"SELECT * FROM agents WHERE agent_id IN ({_marks(len(batch))})", batch
            )
            agents.extend(_agent_from_row(row) for row in _rows(txn))
        return sorted(agents, key=lambda agent: agent["agent_id"])

    def _update_count_txn(self, txn: Transaction, sql: str, params: Sequence[Any]) -> int:
        self._execute(txn, sql, params)
        return txn.rowcount

    # -- commands -----------------------------------------------------------

    async def create_command(
        self, command: Mapping[str, Any], *, dispatched_at: float | None = None
    ) -> dict[str, Any]:
        """Insert a queued command and its first event; return it as stored.

        With ``dispatched_at`` (its agent is online: it is sent at once) the
        command is stored ``dispatched`` with both events, ``queued`` and
        ``dispatched``, in the same transaction.

        Requires ``command_id``, ``agent_id``, ``verb`` and ``created_at``;
        ``args`` defaults to ``{}``, ``expires_at`` (the delivery deadline)
        to none. ``status``, if given, must be ``'queued'``: every later
        status goes through :meth:`transition`. The ``queued`` event is
        recorded at ``created_at`` in the same transaction.
        """
        return await self._run(
            self._create_command_txn, _new_command_values(command), dispatched_at
        )

    async def create_command_idempotent(
        self,
        command: Mapping[str, Any],
        *,
        token_name: str,
        key: str,
        request_hash: str,
        dispatched_at: float | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Create ``command`` once per ``(token_name, key)`` (``dispatched_at``: as above).

        Returns ``(command, True)`` when this call created it, or
        ``(earlier command, False)`` when the key was already used for a
        request with the same ``request_hash``; raises
        :class:`IdempotencyConflict` when it was used with another hash.
        One transaction; a concurrent request with the same key waits for
        the first one and ends as a lookup (never as an integrity error).
        """
        values = _new_command_values(command)
        return await self._run(
            self._create_idempotent_txn, values, token_name, key, request_hash, dispatched_at
        )

    def _insert_returning(
        self, txn: Transaction, table: str, values: dict[str, Any], returning: str
    ) -> dict[str, Any]:
        """Insert one row of ``values`` and return the ``returning`` columns of it."""
        columns = list(values)
        self._execute(
            txn,
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({_marks(len(columns))})"
            f" RETURNING {returning}",
            [values[c] for c in columns],
        )
        return _rows(txn)[0]

    def _create_command_txn(
        self, txn: Transaction, values: dict[str, Any], dispatched_at: float | None = None
    ) -> dict[str, Any]:
        events = [(values["command_id"], lifecycle.QUEUED, values["created_at"], None)]
        if dispatched_at is not None:
            values = {**values, "status": lifecycle.DISPATCHED, "dispatched_at": dispatched_at}
            events.append((values["command_id"], lifecycle.DISPATCHED, dispatched_at, None))
        created = _command_from_row(
            self._insert_returning(txn, "commands", values, _COMMAND_COLUMNS_SQL)
        )
        self._insert_events_txn(txn, events)
        return created

    def _create_idempotent_txn(
        self,
        txn: Transaction,
        values: dict[str, Any],
        token_name: str,
        key: str,
        request_hash: str,
        dispatched_at: float | None,
    ) -> tuple[dict[str, Any], bool]:
        # Claim the key first: a concurrent claim of the same key blocks here
        # until the other transaction ends (PostgreSQL row lock, SQLite write
        # lock), then does nothing, and we read the winner's row instead.
        self._execute(
            txn,
            "INSERT INTO idempotency_keys"
            " (token_name, idem_key, request_hash, command_id, created_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (token_name, idem_key) DO NOTHING",
            (token_name, key, request_hash, values["command_id"], values["created_at"]),
        )
        if txn.rowcount == 1:
            return self._create_command_txn(txn, values, dispatched_at), True
        self._execute(
            txn,
            "SELECT request_hash, command_id FROM idempotency_keys"
            " WHERE token_name = ? AND idem_key = ?",
            (token_name, key),
        )
        row = _rows(txn)[0]
        if row["request_hash"] != request_hash:
            raise IdempotencyConflict(row["command_id"])
        existing = self._commands_txn(txn, ["command_id = ?"], [row["command_id"]])
        if not existing:
            raise StoreError(f"idempotency key refers to missing command {row['command_id']}")
        return existing[0], False

    async def get_command(self, command_id: str) -> dict[str, Any] | None:
        """Return the command, or None."""
        rows = await self._run(self._commands_txn, ["command_id = ?"], [command_id])
        return rows[0] if rows else None

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
        return await self._run_long(
            self._commands_txn, where, params, newest_first=True, limit=int(limit)
        )

    async def commands_in(self, agent_id: str, statuses: Sequence[str]) -> list[dict[str, Any]]:
        """Return the agent's commands whose status is in ``statuses``, oldest first.

        Insertion order breaks ``created_at`` ties (FIFO delivery).
        """
        statuses = _statuses(statuses)
        return await self._run(
            self._commands_txn,
            ["agent_id = ?", f"status IN ({_marks(len(statuses))})"],
            [agent_id, *statuses],
        )

    def _commands_txn(
        self,
        txn: Transaction,
        where: Sequence[str],
        params: Sequence[Any],
        *,
        newest_first: bool = False,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """The one command SELECT: ``where`` clauses are ANDed."""
        sql = _COMMAND_SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        # seq breaks created_at ties in insertion order.
        sql += (
            " ORDER BY created_at DESC, seq DESC" if newest_first else " ORDER BY created_at, seq"
        )
        params = list(params)
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        self._execute(txn, sql, params)
        return [_command_from_row(row) for row in _rows(txn)]

    async def transition(
        self,
        command_id: str,
        status: str,
        at: float,
        *,
        expected: Sequence[str] | None = None,
        detail: Any = None,
        **fields: Any,
    ) -> dict[str, Any] | None:
        """Move a command to ``status`` if the lifecycle allows it from where it is.

        ``expected`` (default: every status that may become ``status``, see
        :func:`viworks.lifecycle.sources`) narrows the statuses the command
        may currently have; only a caller naming ``lost`` there changes a
        lost command (its own agent's late result). A status outside
        ``lifecycle.sources(status, late=True)`` there, an unknown
        ``status`` or an unknown field is a caller bug (``ValueError``).
        ``fields`` are other columns to set with it.

        One compare-and-set ``UPDATE`` plus the event ``(status, at,
        detail)``, in one transaction. Returns the updated command, or None
        (nothing written) when the command is unknown or its current status
        is not in ``expected``.
        """
        allowed = lifecycle.sources(status, late=True)  # ValueError for an unknown status
        if expected is None:
            expected = lifecycle.sources(status)
        else:
            expected = _statuses(expected)
            illegal = set(expected) - set(allowed)
            if illegal:
                raise ValueError(
                    f"a command cannot become {status} from {sorted(illegal)}"
                    f" (allowed: {list(allowed)})"
                )
        if not expected:
            raise ValueError(f"no command can become {status}")
        _check_mutable(fields)
        values = {"status": status, **_command_values(fields)}
        return await self._run(
            self._transition_txn, command_id, values, expected, at, _encode_json(detail)
        )

    def _transition_txn(
        self,
        txn: Transaction,
        command_id: str,
        values: dict[str, Any],
        expected: tuple[str, ...],
        at: float,
        detail: str | None,
    ) -> dict[str, Any] | None:
        self._execute(
            txn,
            "UPDATE commands SET {} WHERE command_id = ? AND status IN ({}) RETURNING {}".format(
                ", ".join(f"{c} = ?" for c in values),
                _marks(len(expected)),
                _COMMAND_COLUMNS_SQL,
            ),
            [*values.values(), command_id, *expected],
        )
        rows = _rows(txn)
        if not rows:
            return None
        self._insert_events_txn(txn, [(command_id, values["status"], at, detail)])
        return _command_from_row(rows[0])

    async def command_events(self, command_id: str) -> list[dict[str, Any]]:
        """Return ``{status, at, detail}`` for every status the command took, in order."""
        rows = await self._run(
            self._select_txn,
            "SELECT status, at, detail FROM command_events WHERE command_id = ? ORDER BY seq",
            (command_id,),
        )
        for row in rows:
            row["detail"] = _decode_json(row["detail"])
        return rows

    async def expire_due(self, now: float) -> list[dict[str, Any]]:
        """Expire every ``queued`` command whose ``expires_at`` is at or before ``now``.

        Sets ``finished_at`` and an ``EXPIRED`` error, records the events
        (detail: the error); returns those commands, oldest first.
        """
        return await self._run_long(
            self._sweep_txn,
            (lifecycle.QUEUED,),
            lifecycle.EXPIRED,
            now,
            {"code": "EXPIRED", "message": "not delivered before its deadline"},
            "expires_at <= ?",
            (now,),
        )

    async def next_expiry(self) -> float | None:
        """The earliest ``expires_at`` among ``queued`` commands, or None."""
        return await self._run(
            self._scalar_txn,
            "SELECT MIN(expires_at) FROM commands WHERE status = ?",
            (lifecycle.QUEUED,),
        )

    async def lose_overdue(self, now: float, grace: float) -> list[dict[str, Any]]:
        """Mark ``lost`` every dispatched/running command overdue by ``grace``.

        Overdue means ``dispatched_at + timeout + grace <= now`` (a command
        without a timeout is never lost). Sets ``finished_at`` and a ``LOST``
        error, records the events (detail: the error); returns those
        commands, oldest first.
        """
        grace = float(grace)
        return await self._run_long(
            self._sweep_txn,
            _IN_FLIGHT,
            lifecycle.LOST,
            now,
            {
                "code": "LOST",
                "message": f"no result within its timeout plus {grace:g} s since dispatch",
            },
            "dispatched_at + timeout + ? <= ?",
            (grace, now),
        )

    async def next_loss_deadline(self) -> float | None:
        """The earliest ``dispatched_at + timeout`` among in-flight commands, or None.

        The caller adds its grace period.
        """
        return await self._run(
            self._scalar_txn,
            f"SELECT MIN(dispatched_at + timeout) FROM commands WHERE status IN ({_marks(2)})",
            _IN_FLIGHT,
        )

    def _sweep_txn(
        self,
        txn: Transaction,
        from_statuses: tuple[str, ...],
        status: str,
        now: float,
        error: dict[str, Any],
        due: str,
        due_params: Sequence[Any],
    ) -> list[dict[str, Any]]:
        # One UPDATE ... RETURNING for the batch, then one batched event insert.
        assert set(from_statuses) <= set(lifecycle.sources(status))
        encoded = _encode_json(error)
        self._execute(
            txn,
            "UPDATE commands SET status = ?, finished_at = ?, error = ?"
            f" WHERE status IN ({_marks(len(from_statuses))}) AND {due}"
            f" RETURNING seq, {_COMMAND_COLUMNS_SQL}",
            [status, now, encoded, *from_statuses, *due_params],
        )
        # RETURNING order is unspecified: report (and record) oldest first.
        rows = sorted(_rows(txn), key=lambda r: (r["created_at"], r.pop("seq")))
        self._insert_events_txn(txn, [(r["command_id"], status, now, encoded) for r in rows])
        return [_command_from_row(row) for row in rows]

    def _insert_events_txn(
        self, txn: Transaction, events: Sequence[tuple[str, str, float, str | None]]
    ) -> None:
        """Append ``(command_id, status, at, encoded detail)`` events, batched."""
        for start in range(0, len(events), _EVENT_BATCH):
            batch = events[start : start + _EVENT_BATCH]
            self._execute(
                txn,
                "INSERT INTO command_events (command_id, status, at, detail) VALUES "
                + ", ".join(["(?, ?, ?, ?)"] * len(batch)),
                [value for event in batch for value in event],
            )

    def _scalar_txn(self, txn: Transaction, sql: str, params: Sequence[Any]) -> Any:
        self._execute(txn, sql, params)
        return txn.fetchone()[0]

    # -- cancellation -------------------------------------------------------

    async def request_cancel(self, command_id: str, at: float) -> dict[str, Any] | None:
        """Record that cancelling the command was requested at ``at``.

        Only a command that is not final is marked; a second request keeps
        the first ``cancel_requested_at``. The status does not change (the
        caller cancels a queued command with :meth:`transition`, and asks
        the agent to stop a dispatched/running one). Returns the command,
        or None when it is unknown or already final.
        """
        final = tuple(sorted(lifecycle.FINAL))
        return await self._run(
            self._update_command_txn,
            "cancel_requested_at = COALESCE(cancel_requested_at, ?)",
            [at],
            ["command_id = ?", f"status NOT IN ({_marks(len(final))})"],
            [command_id, *final],
        )

    async def cancels_pending(self, agent_id: str) -> list[dict[str, Any]]:
        """The agent's dispatched/running commands with a cancel requested, oldest first."""
        return await self._run(
            self._commands_txn,
            [
                "agent_id = ?",
                f"status IN ({_marks(len(_IN_FLIGHT))})",
                "cancel_requested_at IS NOT NULL",
            ],
            [agent_id, *_IN_FLIGHT],
        )

    def _update_command_txn(
        self,
        txn: Transaction,
        assignments: str,
        assignment_params: Sequence[Any],
        where: Sequence[str],
        where_params: Sequence[Any],
    ) -> dict[str, Any] | None:
        self._execute(
            txn,
            f"UPDATE commands SET {assignments} WHERE {' AND '.join(where)}"
            f" RETURNING {_COMMAND_COLUMNS_SQL}",
            [*assignment_params, *where_params],
        )
        rows = _rows(txn)
        return _command_from_row(rows[0]) if rows else None

    # -- live output --------------------------------------------------------

    async def append_output(
        self, command_id: str, chunks: Iterable[Sequence[Any]], at: float
    ) -> int:
        """Store output chunks ``(seq, stream, data)`` received at ``at``.

        ``seq`` is an integer >= 0 (the agent's chunk number), ``stream``
        ``'stdout'`` or ``'stderr'``; anything else is a ``ValueError``
        (nothing written). A chunk whose ``(command_id, seq)`` is already
        stored, or repeated within ``chunks``, is ignored (redelivery: the
        first one wins). One transaction; returns how many chunks were new
        (0 for an unknown command, which stores nothing). The command's
        status is not checked.
        """
        rows = _output_chunks(chunks)
        if not rows:
            return 0
        return await self._run(self._append_output_txn, command_id, rows, float(at))

    def _append_output_txn(
        self,
        txn: Transaction,
        command_id: str,
        chunks: Sequence[tuple[int, str, str]],
        at: float,
    ) -> int:
        self._execute(txn, "SELECT 1 FROM commands WHERE command_id = ?", (command_id,))
        if txn.fetchone() is None:
            return 0
        added = 0
        for start in range(0, len(chunks), _OUTPUT_BATCH):
            batch = chunks[start : start + _OUTPUT_BATCH]
            self._execute(
                txn,
                "INSERT INTO command_output (command_id, seq, stream, data, at) VALUES "
                + ", ".join(["(?, ?, ?, ?, ?)"] * len(batch))
                + " ON CONFLICT (command_id, seq) DO NOTHING",
                [v for seq, stream, data in batch for v in (command_id, seq, stream, data, at)],
            )
            added += txn.rowcount
        return added

    async def mark_output_truncated(self, command_id: str, stream: str) -> None:
        """Record that ``stream``'s output of the command was cut (``<stream>_truncated``)."""
        if stream not in OUTPUT_STREAMS:
            raise ValueError(f"output stream must be stdout or stderr, not {stream!r}")
        column = f"{stream}_truncated"
        await self._run(
            self._update_command_txn, f"{column} = 1", [], ["command_id = ?"], [command_id]
        )

    async def output_since(
        self, command_id: str, after_seq: int = -1, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` chunks ``{seq, stream, data, at}`` with seq > ``after_seq``, by seq."""
        rows = await self._run_long(
            self._select_txn,
            "SELECT seq, stream, data, at FROM command_output"
            " WHERE command_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (command_id, int(after_seq), int(limit)),
        )
        for row in rows:
            _floats(row, ("at",))
        return rows

    async def output_text(self, command_id: str) -> tuple[str, str]:
        """``(stdout, stderr)``: the command's stored chunks joined in seq order.

        Missing chunks (gaps in seq) are simply absent; ``("", "")`` for a
        command without output or an unknown one.
        """
        rows = await self._run_long(
            self._select_txn,
            "SELECT stream, data FROM command_output WHERE command_id = ? ORDER BY seq",
            (command_id,),
        )
        parts: dict[str, list[str]] = {"stdout": [], "stderr": []}
        for row in rows:
            parts[row["stream"]].append(row["data"])
        return "".join(parts["stdout"]), "".join(parts["stderr"])

    # -- telemetry ----------------------------------------------------------

    async def record_telemetry(
        self,
        agent_id: str,
        at: float,
        data: Mapping[str, Any],
        keep: int = 2880,
        max_bytes: int | None = None,
    ) -> None:
        """Store one telemetry report and keep only the agent's newest ``keep`` rows,
        and of those no more than ``max_bytes`` of stored JSON (None: no byte limit;
        the newest report is always kept).

        "Newest" is insertion order, not ``at``. ``keep`` must be >= 1.
        """
        for name, value in (("keep", keep), ("max_bytes", 1 if max_bytes is None else max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, not {value!r}")
        if not isinstance(data, Mapping):
            raise ValueError(f"telemetry data must be a mapping, not {type(data).__name__}")
        await self._run(
            self._record_telemetry_txn,
            agent_id,
            float(at),
            _encode_json(dict(data)),
            keep,
            max_bytes,
        )

    def _record_telemetry_txn(
        self,
        txn: Transaction,
        agent_id: str,
        at: float,
        data: str,
        keep: int,
        max_bytes: int | None,
    ) -> None:
        # bytes_before: the bytes of all the agent's reports before this one (deleted
        # ones too), so the reports beyond the byte budget are found through the index.
        self._execute(
            txn,
            "SELECT bytes_before + bytes FROM agent_telemetry WHERE agent_id = ?"
            " ORDER BY seq DESC LIMIT 1",
            (agent_id,),
        )
        row = txn.fetchone()
        before = row[0] if row is not None else 0
        size = len(data)  # ASCII: _encode_json escapes everything else
        self._execute(
            txn,
            "INSERT INTO agent_telemetry (agent_id, at, data, bytes, bytes_before)"
            " VALUES (?, ?, ?, ?, ?)",
            (agent_id, at, data, size, before),
        )
        if max_bytes is not None:
            # Everything older than the oldest report that still fits the budget (the
            # newest alone when it does not fit).
            self._execute(
                txn,
                "DELETE FROM agent_telemetry WHERE agent_id = ? AND seq < COALESCE("
                " (SELECT seq FROM agent_telemetry WHERE agent_id = ? AND bytes_before >= ?"
                " ORDER BY seq LIMIT 1),"
                " (SELECT MAX(seq) FROM agent_telemetry WHERE agent_id = ?))",
                (agent_id, agent_id, before + size - max_bytes, agent_id),
            )
        # The keep-th newest seq, found and deleted below through the
        # (agent_id, seq) index; NULL (nothing deleted) while fewer are stored.
        self._execute(
            txn,
            "DELETE FROM agent_telemetry WHERE agent_id = ? AND seq < ("
            " SELECT seq FROM agent_telemetry WHERE agent_id = ?"
            " ORDER BY seq DESC LIMIT 1 OFFSET ?)",
            (agent_id, agent_id, keep - 1),
        )

    async def latest_telemetry(self, agent_id: str) -> dict[str, Any] | None:
        """The agent's newest report ``{at, data}``, or None."""
        rows = await self.telemetry_history(agent_id, limit=1)
        return rows[0] if rows else None

    async def telemetry_history(
        self, agent_id: str, limit: int = 100, since: float | None = None
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` of the agent's reports ``{at, data}``, newest first.

        ``since`` keeps only reports with ``at`` strictly after it.
        """
        sql = "SELECT at, data FROM agent_telemetry WHERE agent_id = ?"
        params: list[Any] = [agent_id]
        if since is not None:
            sql += " AND at > ?"
            params.append(float(since))
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(int(limit))
        rows = await self._run_long(self._select_txn, sql, params)
        for row in rows:
            _floats(row, ("at",))
            row["data"] = _decode_json(row["data"])
        return rows

    # -- jobs ---------------------------------------------------------------

    async def create_job(self, job: Mapping[str, Any], agent_ids: Sequence[str]) -> dict[str, Any]:
        """Insert a job and its targets (``agent_ids``, in start order) in one transaction.

        ``job`` holds the ``jobs`` columns (``args`` a dict, booleans as
        bools); returns the job as stored.
        """
        unknown = set(job) - set(_JOB_COLUMNS)
        if unknown:
            raise ValueError(f"unknown job fields: {sorted(unknown)}")
        if len(set(agent_ids)) != len(agent_ids):
            raise ValueError("a job targets each agent once")
        return await self._run(self._create_job_txn, _job_values(job), list(agent_ids))

    def _create_job_txn(
        self, txn: Transaction, values: dict[str, Any], agent_ids: list[str]
    ) -> dict[str, Any]:
        created = _job_from_row(self._insert_returning(txn, "jobs", values, _JOB_COLUMNS_SQL))
        for start in range(0, len(agent_ids), _EVENT_BATCH):
            batch = agent_ids[start : start + _EVENT_BATCH]
            self._execute(
                txn,
                "INSERT INTO job_targets (job_id, position, agent_id) VALUES "
                + ", ".join(["(?, ?, ?)"] * len(batch)),
                [
                    v
                    for offset, agent_id in enumerate(batch)
                    for v in (created["job_id"], start + offset, agent_id)
                ],
            )
        return created

    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        """Return the job, or None."""
        rows = await self._run(
            self._select_txn, f"SELECT {_JOB_COLUMNS_SQL} FROM jobs WHERE job_id = ?", (job_id,)
        )
        return _job_from_row(rows[0]) if rows else None

    async def list_jobs(
        self, statuses: Sequence[str] | None = None, limit: int | None = 100
    ) -> list[dict[str, Any]]:
        """Jobs newest first (``limit`` None: all), optionally only those in ``statuses``."""
        sql = f"SELECT {_JOB_COLUMNS_SQL} FROM jobs"
        params: list[Any] = []
        if statuses is not None:
            statuses = _job_statuses(statuses)
            sql += f" WHERE status IN ({_marks(len(statuses))})"
            params.extend(statuses)
        sql += " ORDER BY created_at DESC, job_id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [_job_from_row(row) for row in await self._run_long(self._select_txn, sql, params)]

    async def update_job(
        self, job_id: str, at: float, *, expected: Sequence[str] | None = None, **fields: Any
    ) -> dict[str, Any] | None:
        """Set ``fields`` (and ``updated_at``) if the job's status is in ``expected``.

        Compare-and-set like :meth:`transition`: returns the updated job, or
        None (nothing written) for an unknown job or another status.
        """
        unknown = set(fields) - _JOB_MUTABLE
        if unknown:
            raise ValueError(f"unknown or immutable job fields: {sorted(unknown)}")
        if "status" in fields:
            _job_statuses([fields["status"]])
        values = {**_job_values(fields), "updated_at": at}
        where, params = ["job_id = ?"], [job_id]
        if expected is not None:
            expected = _job_statuses(expected)
            where.append(f"status IN ({_marks(len(expected))})")
            params.extend(expected)
        rows = await self._run(
            self._select_txn,
            "UPDATE jobs SET {} WHERE {} RETURNING {}".format(
                ", ".join(f"{c} = ?" for c in values), " AND ".join(where), _JOB_COLUMNS_SQL
            ),
            [*values.values(), *params],
        )
        return _job_from_row(rows[0]) if rows else None

    async def job_targets(self, job_id: str) -> list[dict[str, Any]]:
        """The job's targets in position order: ``{position, agent_id, command_id, status,
        outcome, error}``.

        ``status`` is the command's status, else the target's outcome, else
        ``'pending'`` (not started yet).
        """
        rows = await self._run_long(
            self._select_txn,
            "SELECT t.position, t.agent_id, t.command_id, t.outcome, t.error,"
            " COALESCE(c.status, t.outcome, 'pending') AS status"
            " FROM job_targets t LEFT JOIN commands c ON c.command_id = t.command_id"
            " WHERE t.job_id = ? ORDER BY t.position",
            (job_id,),
        )
        for row in rows:
            row["error"] = _decode_json(row["error"])
        return rows

    async def job_counts(self, job_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """``{job_id: {status: count}}`` over the jobs' targets (see :meth:`job_targets`)."""
        job_ids = list(job_ids)
        counts: dict[str, dict[str, int]] = {job_id: {} for job_id in job_ids}
        for start in range(0, len(job_ids), _EVENT_BATCH):
            batch = job_ids[start : start + _EVENT_BATCH]
            rows = await self._run(
                self._select_txn,
                "SELECT t.job_id, COALESCE(c.status, t.outcome, 'pending') AS status,"
                " COUNT(*) AS n"
                " FROM job_targets t LEFT JOIN commands c ON c.command_id = t.command_id"
                f" WHERE t.job_id IN ({_marks(len(batch))})"
                " GROUP BY t.job_id, COALESCE(c.status, t.outcome, 'pending')",
                batch,
            )
            for row in rows:
                counts[row["job_id"]][row["status"]] = int(row["n"])
        return counts

    async def settle_job_target(
        self,
        job_id: str,
        position: int,
        *,
        command_id: str | None = None,
        outcome: str | None = None,
        error: Any = None,
    ) -> bool:
        """Give a pending target its command, or an outcome without one (not both).

        Compare-and-set: only a target with neither is changed; returns
        whether this call changed it.
        """
        if (command_id is None) == (outcome is None):
            raise ValueError("settle a job target with a command_id or an outcome")
        if outcome is not None and outcome not in _TARGET_OUTCOMES:
            raise ValueError(f"unknown job target outcome {outcome!r}")
        changed = await self._run(
            self._update_count_txn,
            "UPDATE job_targets SET command_id = ?, outcome = ?, error = ?"
            " WHERE job_id = ? AND position = ? AND command_id IS NULL AND outcome IS NULL",
            (command_id, outcome, _encode_json(error), job_id, int(position)),
        )
        return changed > 0

    # -- tokens -------------------------------------------------------------

    async def create_token(
        self,
        name: str,
        token_hash: str,
        now: float,
        *,
        role: str = "operator",
        verbs: Sequence[str] | None = None,
        sites: Sequence[str] | None = None,
        expires_at: float | None = None,
    ) -> dict[str, Any]:
        """Store a token hash under ``name``; raise DuplicateToken if taken.

        ``role`` is viewer, operator (the default, as for tokens made before
        roles) or admin; ``verbs``/``sites`` (None: any) limit what an
        operator may run; ``expires_at`` (None: never) ends its validity.
        """
        if role not in TOKEN_ROLES:
            raise ValueError(f"unknown role {role!r} (want one of {', '.join(TOKEN_ROLES)})")
        try:
            await self._run(
                self._update_count_txn,
                "INSERT INTO tokens (name, token_hash, created_at, role, verbs, sites, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    token_hash,
                    now,
                    role,
                    None if verbs is None else _encode_json(list(verbs)),
                    None if sites is None else _encode_json(list(sites)),
                    expires_at,
                ),
            )
        except self._pool.dbapi.IntegrityError as e:
            raise DuplicateToken(f"token name {name!r} or its hash is already in use") from e
        return {"name": name, "created_at": now}

    async def token_name_for_hash(self, token_hash: str) -> str | None:
        """Return the name of the token with this hash, or None (even if expired or revoked)."""
        token = await self.token_for_hash(token_hash)
        return token["name"] if token else None

    async def token_for_hash(self, token_hash: str) -> dict[str, Any] | None:
        """The token with this hash: ``{name, created_at, role, verbs, sites, expires_at,
        revoked_at}`` (no hash), or None. Validity is the caller's to judge."""
        rows = await self._run(
            self._select_txn,
            f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE token_hash = ?",
            (token_hash,),
        )
        return _token_from_row(rows[0]) if rows else None

    async def list_tokens(self) -> list[dict[str, Any]]:
        """Every token by name, as ``token_for_hash`` gives it (hashes are never listed)."""
        rows = await self._run_long(
            self._select_txn, f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY name", ()
        )
        return [_token_from_row(row) for row in rows]

    async def revoke_token(self, name: str, now: float) -> bool:
        """Revoke the token ``name`` (once: the first revocation time stays) and end
        its console sessions.

        Returns False when no token has this name or it was already revoked.
        """
        return await self._run(self._revoke_token_txn, name, now)

    def _revoke_token_txn(self, txn: Transaction, name: str, now: float) -> bool:
        self._execute(
            txn,
            "UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
            (now, name),
        )
        revoked = txn.rowcount > 0
        self._execute(txn, "DELETE FROM console_sessions WHERE token_name = ?", (name,))
        return revoked

    # -- web console sessions -------------------------------------------------

    async def create_console_session(
        self, session_hash: str, token_name: str, now: float, expires_at: float
    ) -> None:
        """Store a console session (the hash of its id) for ``token_name`` until
        ``expires_at``; sessions that have expired are deleted on the way."""
        await self._run(self._create_session_txn, session_hash, token_name, now, expires_at)

    def _create_session_txn(
        self, txn: Transaction, session_hash: str, token_name: str, now: float, expires_at: float
    ) -> None:
        self._execute(txn, "DELETE FROM console_sessions WHERE expires_at <= ?", (now,))
        self._execute(
            txn,
            "INSERT INTO console_sessions (session_hash, token_name, created_at, expires_at)"
            " VALUES (?, ?, ?, ?)",
            (session_hash, token_name, now, expires_at),
        )

    async def console_session(self, session_hash: str) -> dict[str, Any] | None:
        """The session with this hash and its token: ``{session_expires_at, name,
        created_at, role, verbs, sites, expires_at, revoked_at}``, or None. Validity
        (expiry, the token's revocation) is the caller's to judge."""
        rows = await self._run(
            self._select_txn,
            "SELECT s.expires_at AS session_expires_at,"
            f" {', '.join('t.' + c.strip() for c in _TOKEN_COLUMNS.split(','))}"
            " FROM console_sessions s JOIN tokens t ON t.name = s.token_name"
            " WHERE s.session_hash = ?",
            (session_hash,),
        )
        if not rows:
            return None
        row = _token_from_row(rows[0])
        _floats(row, ("session_expires_at",))
        return row

    async def delete_console_session(self, session_hash: str) -> bool:
        """End a console session; False when there was none."""
        return (
            await self._run(
                self._update_count_txn,
                "DELETE FROM console_sessions WHERE session_hash = ?",
                (session_hash,),
            )
            > 0
        )

    # -- certificate revocation ---------------------------------------------

    async def revoke_certificate(
        self, serial: str, agent_id: str, now: float, reason: str | None = None
    ) -> bool:
        """Record the certificate ``serial`` (hex) of ``agent_id`` as revoked.

        Returns False (nothing written) when that serial was already revoked.
        """
        return (
            await self._run(
                self._update_count_txn,
                "INSERT INTO revoked_certificates (serial, agent_id, revoked_at, reason)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (serial) DO NOTHING",
                (serial, agent_id, now, reason),
            )
            > 0
        )

    async def record_certificate(self, agent_id: str, serial: str, now: float) -> None:
        """Note that ``agent_id`` connected with the certificate ``serial`` (hex) at ``now``.

        Every handshake calls this (not only the HELLO that wins), so that
        :meth:`agent_certificates` knows a second certificate that took a session over.
        """
        await self._run(
            self._update_count_txn,
            "INSERT INTO agent_certificates (agent_id, serial, first_seen, last_seen)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (agent_id, serial)"
            " DO UPDATE SET last_seen = excluded.last_seen",
            (agent_id, serial, now, now),
        )

    async def agent_certificates(
        self, agent_id: str | None = None, serial: str | None = None
    ) -> list[dict[str, Any]]:
        """The certificates seen ``{agent_id, serial, first_seen, last_seen}``, first seen first:
        every one of ``agent_id``, or the agent(s) seen with ``serial`` (at least one given)."""
        where, params = [], []
        for column, value in (("agent_id", agent_id), ("serial", serial)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if not where:
            raise ValueError("give an agent_id or a serial")
        rows = await self._run(
            self._select_txn,
            "SELECT agent_id, serial, first_seen, last_seen FROM agent_certificates"
            f" WHERE {' AND '.join(where)} ORDER BY first_seen, serial",
            params,
        )
        for row in rows:
            _floats(row, ("first_seen", "last_seen"))
        return rows

    async def revocations_since(self, after_seq: int = 0) -> list[dict[str, Any]]:
        """Revocations ``{seq, serial, agent_id, revoked_at, reason}`` after ``after_seq``.

        In seq order; a poller passes the last seq it saw.
        """
        rows = await self._run_long(
            self._select_txn,
            "SELECT seq, serial, agent_id, revoked_at, reason FROM revoked_certificates"
            " WHERE seq > ? ORDER BY seq",
            (int(after_seq),),
        )
        for row in rows:
            _floats(row, ("revoked_at",))
        return rows

    async def is_certificate_revoked(self, serial: str) -> bool:
        rows = await self._run(
            self._select_txn, "SELECT 1 FROM revoked_certificates WHERE serial = ?", (serial,)
        )
        return bool(rows)

    # -- audit log ------------------------------------------------------------

    async def append_audit(
        self,
        at: float,
        actor: str,
        action: str,
        target: str | None,
        outcome: str,
        detail: Any = None,
        *,
        after: tuple[int, str] | None = None,
        resume: bool = False,
    ) -> dict[str, Any]:
        """Append a record to the hash-chained audit log; return it as stored.

        ``detail`` is redacted (``viworks.backend.audit.redact``) and stored as
        canonical JSON. One transaction holding the chain's lock: it reads the
        last record's seq and hash and inserts the next one, so concurrent
        writers (threads or processes, either engine) never fork the chain.

        ``after`` is the (seq, hash) of the last record this writer knows; if the
        log no longer holds it, ``AuditTruncated`` is raised, or with ``resume``
        the record chains onto ``after`` itself when the log now ends before it
        (the writer's own chain goes on and the gap stays visible to verify).
        """
        record = {
            "at": float(at),
            "actor": str(actor),
            "action": str(action),
            "target": None if target is None else str(target),
            "outcome": str(outcome),
            "detail": audit.encode_detail(detail),
        }
        return await self._run(self._append_audit_txn, record, after, resume)

    def _append_audit_txn(
        self,
        txn: Transaction,
        record: dict[str, Any],
        after: tuple[int, str] | None = None,
        resume: bool = False,
    ) -> dict[str, Any]:
        self._lock_audit(txn)
        head = self._audit_head_txn(txn)
        if after is not None and not self._audit_holds_txn(txn, after, head):
            if not resume:
                raise audit.AuditTruncated(after, head)
            if head[0] < after[0]:
                head = after
        seq, prev_hash = head[0] + 1, head[1]
        row = {
            "seq": seq,
            **record,
            "prev_hash": prev_hash,
            "hash": audit.record_hash(record, prev_hash),
        }
        self._execute(
            txn,
            f"INSERT INTO audit_log ({', '.join(row)}) VALUES ({_marks(len(row))})",
            list(row.values()),
        )
        return row

    def _audit_head_txn(self, txn: Transaction) -> tuple[int, str]:
        self._execute(txn, "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        last = txn.fetchone()
        return (last[0], last[1]) if last else (0, audit.GENESIS)

    def _audit_holds_txn(
        self, txn: Transaction, record: tuple[int, str], head: tuple[int, str]
    ) -> bool:
        """Whether the log (ending at ``head``) still holds ``record`` (seq, hash)."""
        seq, record_hash = record
        if seq == 0 or (seq, record_hash) == head:
            return True  # (0, GENESIS): the empty log, a prefix of every log
        if seq >= head[0]:
            return False
        self._execute(txn, "SELECT hash FROM audit_log WHERE seq = ?", (seq,))
        found = txn.fetchone()
        return found is not None and found[0] == record_hash

    async def audit_head(self) -> tuple[int, str]:
        """The last record's (seq, hash); ``(0, GENESIS)`` for an empty log."""
        return await self._run(self._audit_head_txn)

    async def audit_records(self, after_seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Up to ``limit`` audit records with seq > ``after_seq``, in seq order.

        ``detail`` is the stored JSON text (what the hash covers).
        """
        rows = await self._run_long(
            self._select_txn,
            "SELECT seq, at, actor, action, target, outcome, detail, prev_hash, hash"
            " FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?",
            (int(after_seq), int(limit)),
        )
        for row in rows:
            _floats(row, ("at",))
        return rows

    async def audit_search(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        agent_id: str | None = None,
        outcome: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before_seq: int | None = None,
        after_seq: int | None = None,
        newest_first: bool = True,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Audit records matching every filter given, up to ``limit``, as ``audit_records``.

        ``action`` is exact, or a prefix when it ends with ``*`` (``api.*``);
        ``agent_id`` matches records about the agent (its connections, its commands'
        outcomes, API calls on its paths); ``since`` <= at < ``until``;
        ``before_seq``/``after_seq`` page through the results.
        """
        where: list[str] = []
        params: list[Any] = []
        if actor is not None:
            where.append("actor = ?")
            params.append(actor)
        if action is not None and action.endswith("*"):
            where.append("action LIKE ? ESCAPE '\\'")
            params.append(_like_escape(action[:-1]) + "%")
        elif action is not None:
            where.append("action = ?")
            params.append(action)
        if agent_id is not None:
            path = "/api/v1/agents/" + agent_id
            where.append(
                "(target = ? OR target = ? OR target LIKE ? ESCAPE '\\'"
                " OR detail LIKE ? ESCAPE '\\')"
            )
            params += [
                "agent:" + agent_id,
                path,
                _like_escape(path + "/") + "%",
                "%" + _like_escape('"agent_id":' + json.dumps(agent_id)) + "%",
            ]
        for clause, value in (
            ("outcome = ?", outcome),
            ("at >= ?", since),
            ("at < ?", until),
            ("seq < ?", before_seq),
            ("seq > ?", after_seq),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = (
            "SELECT seq, at, actor, action, target, outcome, detail, prev_hash, hash"
            " FROM audit_log"
            + (" WHERE " + " AND ".join(where) if where else "")
            + (" ORDER BY seq DESC" if newest_first else " ORDER BY seq")
            + " LIMIT ?"
        )
        rows = await self._run_long(self._select_txn, sql, [*params, int(limit)])
        for row in rows:
            _floats(row, ("at",))
        return rows

    async def audit_seq_of_hash(self, record_hash: str) -> int | None:
        """The seq of the audit record with this hash, or None."""
        rows = await self._run(
            self._select_txn,
            "SELECT seq FROM audit_log WHERE hash = ? ORDER BY seq",
            (record_hash,),
        )
        return rows[0]["seq"] if rows else None

    def _select_txn(
        self, txn: Transaction, sql: str, params: Iterable[Any]
    ) -> list[dict[str, Any]]:
        self._execute(txn, sql, list(params))
        return _rows(txn)
