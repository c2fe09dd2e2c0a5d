"""The command ledger: ``commands``, their history (``command_events``) and the
``idempotency_keys`` that make a retried request find its first command.

Status changes are compare-and-set (``UPDATE ... WHERE status IN (...)``) along
the lifecycle of :mod:`viworks.lifecycle`, each recorded as an event in the same
transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from twisted.enterprise.adbapi import Transaction

from viworks import lifecycle
from viworks.backend.model import OUTPUT_STREAMS, Command, CommandEvent, NewCommand, OutputChunk
from viworks.backend.store.columns import (
    BOOL,
    INT,
    JSON,
    REAL,
    Column,
    Table,
    encode_json,
    marks,
)
from viworks.backend.store.engine import SQLEngine
from viworks.backend.store.errors import IdempotencyConflict, StoreError

# command_id is the key; the status changes only through the lifecycle (transition);
# cancel_requested_at only through request_cancel. Every other column may be set
# along with a status.
COMMANDS = Table(
    "commands",
    Command,
    [
        Column("command_id"),
        Column("agent_id", mutable=True),
        Column("verb", mutable=True),
        Column("args", JSON, mutable=True),
        Column("status"),
        Column("timeout", REAL, mutable=True),
        Column("exit_code", INT, mutable=True),
        Column("result", JSON, mutable=True),
        Column("stdout", mutable=True),
        Column("stderr", mutable=True),
        Column("error", JSON, mutable=True),
        Column("stdout_truncated", BOOL, mutable=True),
        Column("stderr_truncated", BOOL, mutable=True),
        Column("created_at", REAL, mutable=True),
        Column("dispatched_at", REAL, mutable=True),
        Column("started_at", REAL, mutable=True),
        Column("finished_at", REAL, mutable=True),
        Column("expires_at", REAL, mutable=True),
        Column("cancel_requested_at", REAL, internal=True),
    ],
)
COMMAND_EVENTS = Table(
    "command_events",
    CommandEvent,
    [Column("status"), Column("at", REAL), Column("detail", JSON)],
)
COMMAND_OUTPUT = Table(
    "command_output",
    OutputChunk,
    [Column("seq", INT), Column("stream"), Column("data"), Column("at", REAL)],
)

_COMMAND_SELECT = f"SELECT {COMMANDS.select} FROM commands"
# Commands an agent has been sent and not yet finished (lose_overdue).
_IN_FLIGHT = (lifecycle.DISPATCHED, lifecycle.RUNNING)

EventRow = tuple[str, str, float, str | None]
"""``(command_id, status, at, encoded detail)``: a row of ``command_events``."""
_EVENT_COLUMNS = ("command_id", "status", "at", "detail")


def statuses_of(statuses: Sequence[str]) -> tuple[str, ...]:
    """Validate a collection of command statuses (a bare string is a caller bug)."""
    if isinstance(statuses, str):
        raise TypeError("statuses must be a collection of status names, not a string")
    result = tuple(statuses)
    if not result:
        raise ValueError("statuses must not be empty")
    unknown = set(result) - lifecycle.ALL
    if unknown:
        raise ValueError(f"unknown statuses: {sorted(unknown)}")
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


def _new_command_values(command: NewCommand) -> dict[str, Any]:
    """The stored column values of a command to create (queued)."""
    return COMMANDS.dump(
        {
            "command_id": command.command_id,
            "agent_id": command.agent_id,
            "verb": command.verb,
            "args": command.args,
            "status": lifecycle.QUEUED,
            "timeout": command.timeout,
            "created_at": command.created_at,
            "expires_at": command.expires_at,
        }
    )


class CommandStore(SQLEngine):
    """The store's commands: creation, lifecycle, history, deadlines, cancellation, output."""

    async def create_command(
        self, command: NewCommand, *, dispatched_at: float | None = None
    ) -> Command:
        """Insert a queued command and its first event; return it as stored.

        With ``dispatched_at`` (its agent is online: it is sent at once) the
        command is stored ``dispatched`` with both events, ``queued`` and
        ``dispatched``, in the same transaction. Every later status goes through
        :meth:`transition`. The ``queued`` event is recorded at ``created_at``.
        """
        return await self._run(
            self._create_command_txn, _new_command_values(command), dispatched_at
        )

    async def create_command_idempotent(
        self,
        command: NewCommand,
        *,
        token_name: str,
        key: str,
        request_hash: str,
        dispatched_at: float | None = None,
    ) -> tuple[Command, bool]:
        """Create ``command`` once per ``(token_name, key)`` (``dispatched_at``: as above).

        Returns ``(command, True)`` when this call created it, or
        ``(earlier command, False)`` when the key was already used for a
        request with the same ``request_hash``; raises
        :class:`IdempotencyConflict` when it was used with another hash.
        One transaction; a concurrent request with the same key waits for
        the first one and ends as a lookup (never as an integrity error).
        """
        return await self._run(
            self._create_idempotent_txn,
            _new_command_values(command),
            token_name,
            key,
            request_hash,
            dispatched_at,
        )

    def _create_command_txn(
        self, txn: Transaction, values: dict[str, Any], dispatched_at: float | None = None
    ) -> Command:
        command_id = values["command_id"]
        events: list[EventRow] = [(command_id, lifecycle.QUEUED, values["created_at"], None)]
        if dispatched_at is not None:
            values = {**values, "status": lifecycle.DISPATCHED, "dispatched_at": dispatched_at}
            events.append((command_id, lifecycle.DISPATCHED, dispatched_at, None))
        created = COMMANDS.load(self._insert_returning(txn, "commands", values, COMMANDS.select))
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
    ) -> tuple[Command, bool]:
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
        [(first_hash, command_id)] = self._select_txn(
            txn,
            "SELECT request_hash, command_id FROM idempotency_keys"
            " WHERE token_name = ? AND idem_key = ?",
            (token_name, key),
        )
        if first_hash != request_hash:
            raise IdempotencyConflict(command_id)
        existing = self._commands_txn(txn, ["command_id = ?"], [command_id])
        if not existing:
            raise StoreError(f"idempotency key refers to missing command {command_id}")
        return existing[0], False

    async def get_command(self, command_id: str) -> Command | None:
        """Return the command, or None."""
        rows = await self._run(self._commands_txn, ["command_id = ?"], [command_id])
        return rows[0] if rows else None

    async def list_commands(
        self,
        agent_id: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[Command]:
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

    async def commands_in(self, agent_id: str, statuses: Sequence[str]) -> list[Command]:
        """Return the agent's commands whose status is in ``statuses``, oldest first.

        Insertion order breaks ``created_at`` ties (FIFO delivery).
        """
        statuses = statuses_of(statuses)
        return await self._run(
            self._commands_txn,
            ["agent_id = ?", f"status IN ({marks(len(statuses))})"],
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
    ) -> list[Command]:
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
        return COMMANDS.load_all(self._select_txn(txn, sql, params))

    async def transition(
        self,
        command_id: str,
        status: str,
        at: float,
        *,
        expected: Sequence[str] | None = None,
        detail: Any = None,
        **fields: Any,
    ) -> Command | None:
        """Move a command to ``status`` if the lifecycle allows it from where it is.

        ``expected`` (default: every status that may become ``status``, see
        :func:`viworks.lifecycle.sources`) narrows the statuses the command
        may currently have; only a caller naming ``lost`` there changes a
        lost command (its own agent's late result). A status outside
        ``lifecycle.sources(status, late=True)`` there, an unknown
        ``status`` or an unknown field is a caller bug (``ValueError``).
        ``fields`` are other columns to set with it (``COMMANDS``' mutable ones).

        One compare-and-set ``UPDATE`` plus the event ``(status, at,
        detail)``, in one transaction. Returns the updated command, or None
        (nothing written) when the command is unknown or its current status
        is not in ``expected``.
        """
        allowed = lifecycle.sources(status, late=True)  # ValueError for an unknown status
        if expected is None:
            expected = lifecycle.sources(status)
        else:
            expected = statuses_of(expected)
            illegal = set(expected) - set(allowed)
            if illegal:
                raise ValueError(
                    f"a command cannot become {status} from {sorted(illegal)}"
                    f" (allowed: {list(allowed)})"
                )
        if not expected:
            raise ValueError(f"no command can become {status}")
        COMMANDS.check_update(fields)
        values = {"status": status, **COMMANDS.dump(fields)}
        return await self._run(
            self._transition_txn, command_id, values, tuple(expected), at, encode_json(detail)
        )

    def _transition_txn(
        self,
        txn: Transaction,
        command_id: str,
        values: dict[str, Any],
        expected: tuple[str, ...],
        at: float,
        detail: str | None,
    ) -> Command | None:
        rows = self._select_txn(
            txn,
            "UPDATE commands SET {} WHERE command_id = ? AND status IN ({}) RETURNING {}".format(
                ", ".join(f"{c} = ?" for c in values),
                marks(len(expected)),
                COMMANDS.select,
            ),
            [*values.values(), command_id, *expected],
        )
        if not rows:
            return None
        self._insert_events_txn(txn, [(command_id, values["status"], at, detail)])
        return COMMANDS.load(rows[0])

    async def command_events(self, command_id: str) -> list[CommandEvent]:
        """Every status the command took, in order."""
        rows = await self._run(
            self._select_txn,
            f"SELECT {COMMAND_EVENTS.select} FROM command_events WHERE command_id = ? ORDER BY seq",
            (command_id,),
        )
        return COMMAND_EVENTS.load_all(rows)

    async def expire_due(self, now: float) -> list[Command]:
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
        expiry: float | None = await self._run(
            self._scalar_txn,
            "SELECT MIN(expires_at) FROM commands WHERE status = ?",
            (lifecycle.QUEUED,),
        )
        return expiry

    async def lose_overdue(self, now: float, grace: float) -> list[Command]:
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
        deadline: float | None = await self._run(
            self._scalar_txn,
            f"SELECT MIN(dispatched_at + timeout) FROM commands WHERE status IN ({marks(2)})",
            _IN_FLIGHT,
        )
        return deadline

    def _sweep_txn(
        self,
        txn: Transaction,
        from_statuses: tuple[str, ...],
        status: str,
        now: float,
        error: dict[str, Any],
        due: str,
        due_params: Sequence[Any],
    ) -> list[Command]:
        # One UPDATE ... RETURNING for the batch, then one batched event insert.
        assert set(from_statuses) <= set(lifecycle.sources(status))
        encoded = encode_json(error)
        rows = self._select_txn(
            txn,
            "UPDATE commands SET status = ?, finished_at = ?, error = ?"
            f" WHERE status IN ({marks(len(from_statuses))}) AND {due}"
            f" RETURNING seq, {COMMANDS.select}",
            [status, now, encoded, *from_statuses, *due_params],
        )
        # RETURNING order is unspecified: report (and record) oldest first (seq breaks ties).
        loaded = sorted(
            ((COMMANDS.load(row[1:]), row[0]) for row in rows),
            key=lambda command_seq: (command_seq[0].created_at, command_seq[1]),
        )
        swept = [command for command, _ in loaded]
        self._insert_events_txn(txn, [(c.command_id, status, now, encoded) for c in swept])
        return swept

    def _insert_events_txn(self, txn: Transaction, events: Sequence[EventRow]) -> None:
        """Append ``(command_id, status, at, encoded detail)`` events."""
        self._insert_rows_txn(txn, "command_events", _EVENT_COLUMNS, events)

    # -- cancellation -------------------------------------------------------

    async def request_cancel(self, command_id: str, at: float) -> Command | None:
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
            ["command_id = ?", f"status NOT IN ({marks(len(final))})"],
            [command_id, *final],
        )

    async def cancels_pending(self, agent_id: str) -> list[Command]:
        """The agent's dispatched/running commands with a cancel requested, oldest first."""
        return await self._run(
            self._commands_txn,
            [
                "agent_id = ?",
                f"status IN ({marks(len(_IN_FLIGHT))})",
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
    ) -> Command | None:
        rows = self._select_txn(
            txn,
            f"UPDATE commands SET {assignments} WHERE {' AND '.join(where)}"
            f" RETURNING {COMMANDS.select}",
            [*assignment_params, *where_params],
        )
        return COMMANDS.load(rows[0]) if rows else None

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
        return self._insert_rows_txn(
            txn,
            "command_output",
            ("command_id", "seq", "stream", "data", "at"),
            [(command_id, seq, stream, data, at) for seq, stream, data in chunks],
            " ON CONFLICT (command_id, seq) DO NOTHING",
        )

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
    ) -> list[OutputChunk]:
        """Up to ``limit`` chunks with seq > ``after_seq``, by seq."""
        rows = await self._run_long(
            self._select_txn,
            f"SELECT {COMMAND_OUTPUT.select} FROM command_output"
            " WHERE command_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (command_id, int(after_seq), int(limit)),
        )
        return COMMAND_OUTPUT.load_all(rows)

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
        for stream, data in rows:
            parts[stream].append(data)
        return "".join(parts["stdout"]), "".join(parts["stderr"])
