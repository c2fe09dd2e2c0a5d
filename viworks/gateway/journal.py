"""Durable command journal: turns at-least-once delivery into exactly-once effect.

The backend may deliver a command more than once (reconnects, retries). The agent
records every command id it accepts, and the result it produced, in a small SQLite
file under its ``state_dir``:

* a redelivered id is answered from the journal instead of running again, also
  after an agent restart;
* results the backend has not acknowledged are replayed, in the order they
  finished, after reconnecting;
* a command still ``running`` when the process died is closed, on the next
  :meth:`Journal.open`, with a ``lost`` result (its effect is unknown);
* the process groups the verbs run in are recorded while they run, so that a
  gateway that died can end them at its next start (``procgroups.py``).

The gateway checks that its path still names the file it opened
(:meth:`Journal.problem`): a journal deleted or replaced under a running
gateway would silently forget what ran.

Only the command id, the verb name and the result the verb produced are stored,
never the arguments: arguments may carry secrets, and the verb layer already
scrubs secrets from results.

The database is used synchronously from the reactor thread: writes are a few
tiny rows per command, so a thread pool would add more complexity than latency.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.interfaces import IReactorTime

from viworks import migrations

__all__ = [
    "LOST_ERROR_CODE",
    "SCHEMA_VERSION",
    "Journal",
    "JournalEntry",
    "JournalError",
    "ProcessGroupRecord",
    "UnknownCommandError",
    "lost_result",
]

RUNNING = "running"
FINISHED = "finished"
LOST_ERROR_CODE = "AGENT_RESTARTED"

# Each entry upgrades the schema from version ``index`` to ``index + 1``
# (viworks.migrations: recorded in the schema_version table). Append, never edit.
_MIGRATIONS: list[tuple[str, ...]] = [
    (
        """
        CREATE TABLE commands (
            command_id  TEXT PRIMARY KEY,
            verb        TEXT NOT NULL,
            state       TEXT NOT NULL CHECK (state IN ('running', 'finished')),
            result      TEXT,
            received_at REAL NOT NULL,
            finished_at REAL,
            finish_seq  INTEGER UNIQUE,
            acked       INTEGER NOT NULL DEFAULT 0
        )
        """,
        # unacked() and prune() walk entries in finish order.
        "CREATE INDEX commands_acked_seq ON commands (acked, finish_seq)",
    ),
    (
        # Nonces of signed commands seen within their validity (replay cache).
        """
        CREATE TABLE nonces (
            nonce      TEXT PRIMARY KEY,
            expires_at REAL NOT NULL
        )
        """,
        "CREATE INDEX nonces_expires ON nonces (expires_at)",
    ),
    (
        # Process groups of running verbs, with what identifies their leader
        # beyond its pid (procgroups.py).
        """
        CREATE TABLE process_groups (
            pgid       INTEGER PRIMARY KEY,
            boot_id    TEXT NOT NULL,
            start_time INTEGER NOT NULL
        )
        """,
    ),
]
SCHEMA_VERSION = len(_MIGRATIONS)

_COLUMNS = "command_id, verb, state, result, received_at, finished_at, acked"


class JournalError(Exception):
    """The journal file cannot be opened or used (message names the path)."""


class UnknownCommandError(KeyError):
    """A command id that the journal never accepted."""

    def __str__(self) -> str:
        # KeyError's str() is the repr of its argument; say what went wrong.
        return f"unknown command id {self.args[0]!r}: it was never accepted"


@dataclass(frozen=True)
class JournalEntry:
    """One accepted command as recorded in the journal."""

    command_id: str
    verb: str
    #: ``"running"`` or ``"finished"``.
    state: str
    #: The result fields (status, exit_code, result, stdout, stderr,
    #: stdout_truncated, stderr_truncated, error, started_at, finished_at);
    #: ``None`` while running.
    result: dict[str, Any] | None
    #: Journal clock time of :meth:`Journal.accept`.
    received_at: float
    #: Journal clock time of :meth:`Journal.finish`; ``None`` while running.
    finished_at: float | None
    #: Whether the backend acknowledged storing the result.
    acked: bool


@dataclass(frozen=True)
class ProcessGroupRecord:
    """A verb's process group as recorded when it started."""

    pgid: int
    #: The host's boot id then: start times count from boot.
    boot_id: str
    #: The leader's start time, in clock ticks since boot (/proc/PID/stat field 22).
    start_time: int


def lost_result(received_at: float, now: float) -> dict[str, Any]:
    """The result recorded for a command that was running when the agent died."""
    return {
        "status": "lost",
        "exit_code": None,
        "result": None,
        "stdout": "",
        "stderr": "",
        "stdout_truncated": False,
        "stderr_truncated": False,
        "error": {
            "code": LOST_ERROR_CODE,
            "message": "the agent stopped while the command was running; its effect is unknown",
        },
        "started_at": received_at,
        "finished_at": now,
    }


def _entry(row: tuple[Any, ...]) -> JournalEntry:
    command_id, verb, state, result, received_at, finished_at, acked = row
    return JournalEntry(
        command_id=command_id,
        verb=verb,
        state=state,
        result=None if result is None else json.loads(result),
        received_at=received_at,
        finished_at=finished_at,
        acked=bool(acked),
    )


class Journal:
    """The agent's durable record of accepted commands and their results.

    Call :meth:`open` before anything else and :meth:`close` when done.
    """

    def __init__(self, path: str, clock: IReactorTime | None = None) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.path = path
        self.clock: IReactorTime = clock
        self._db: sqlite3.Connection | None = None
        # (st_dev, st_ino) of the file opened: the path must keep naming it.
        self._identity: tuple[int, int] | None = None

    # -- lifecycle ---------------------------------------------------------

    def open(self) -> list[JournalEntry]:
        """Open (creating or migrating) the journal; recover interrupted commands.

        Every entry still ``running`` was left by a process that died: it is
        finished with a :func:`lost_result` (so it is replayed to the backend)
        and returned.

        :raises JournalError: the parent directory is missing, the file is not
            an SQLite database, or its schema is newer than this code.
        """
        if self._db is not None:
            raise JournalError(f"journal {self.path} is already open")
        try:
            # Create the file ourselves so it is 0600 from the first byte;
            # SQLite gives its -wal/-shm files the database file's mode.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)
                opened = os.fstat(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise JournalError(f"cannot open journal {self.path}: {e.strerror}") from e
        # Autocommit mode: transactions are explicit (see _transaction).
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: fsync on every commit, so a result recorded before it is
            # sent survives a crash or power loss (WAL's default may lose it).
            db.execute("PRAGMA synchronous=FULL")
            self._db = db
            self._identity = (opened.st_dev, opened.st_ino)
            self._migrate()
            return self._recover()
        except sqlite3.DatabaseError as e:
            self._db = None
            db.close()
            raise JournalError(f"journal {self.path} is not a usable SQLite database: {e}") from e
        except BaseException:
            self._db = None
            db.close()
            raise

    def close(self) -> None:
        """Close the database; safe to call more than once."""
        if self._db is not None:
            self._db.close()
            self._db = None
        self._identity = None

    def problem(self) -> str | None:
        """Why the journal's path no longer names the file opened, or None.

        A deleted or replaced file keeps working through the open handle, but
        whatever is written there is gone at the next start: exactly-once is lost.
        """
        if self._identity is None:
            return None
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            return f"journal {self.path} was deleted"
        except OSError as e:
            return f"journal {self.path} cannot be checked: {e.strerror}"
        if (found.st_dev, found.st_ino) != self._identity:
            return f"journal {self.path} was replaced by another file"
        return None

    # -- commands ----------------------------------------------------------

    def get(self, command_id: str) -> JournalEntry | None:
        """The entry for ``command_id``, or ``None`` if it was never accepted."""
        row = (
            self._conn()
            .execute(f"SELECT {_COLUMNS} FROM commands WHERE command_id = ?", (command_id,))
            .fetchone()
        )
        return None if row is None else _entry(row)

    def accept(self, command_id: str, verb: str) -> tuple[JournalEntry, bool]:
        """Record a command before running it.

        :returns: ``(entry, True)`` for a new id (state ``running``), or
            ``(existing entry, False)`` for an id already known, which must not
            run again.
        """
        with self._transaction() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM commands WHERE command_id = ?", (command_id,)
            ).fetchone()
            if row is not None:
                return _entry(row), False
            now = self.clock.seconds()
            db.execute(
                "INSERT INTO commands (command_id, verb, state, received_at) VALUES (?, ?, ?, ?)",
                (command_id, verb, RUNNING, now),
            )
        entry = JournalEntry(command_id, verb, RUNNING, None, now, None, False)
        return entry, True

    def finish(self, command_id: str, result: dict[str, Any]) -> JournalEntry:
        """Record the result of a command; call it *before* sending the result.

        Idempotent: if the command already finished, its first result is kept
        and returned unchanged.

        :raises UnknownCommandError: ``command_id`` was never accepted.
        :raises TypeError: ``result`` is not JSON-serializable (nothing written).
        :raises ValueError: ``result`` holds NaN or infinity (nothing written).
        """
        text = json.dumps(result, allow_nan=False)
        with self._transaction() as db:
            self._finish(db, command_id, text)
        entry = self.get(command_id)
        assert entry is not None
        return entry

    def unacked(self) -> list[JournalEntry]:
        """Finished entries the backend has not acknowledged, in finish order."""
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM commands WHERE acked = 0 AND state = ? ORDER BY finish_seq",
            (FINISHED,),
        )
        return [_entry(row) for row in rows]

    def ack(self, command_id: str) -> bool:
        """Mark a result as stored by the backend (idempotent).

        :returns: ``False`` if ``command_id`` is unknown or still running
            (there is no result to acknowledge yet, and acknowledging it early
            would keep its result from ever being replayed).
        """
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE commands SET acked = 1 WHERE command_id = ? AND state = ?",
                (command_id, FINISHED),
            )
            return cursor.rowcount > 0

    def prune(self, max_age: float = 7 * 86400, keep: int = 10000) -> int:
        """Forget old acknowledged entries; returns how many were deleted.

        An entry is deleted only if it is acknowledged, finished more than
        ``max_age`` seconds ago, and is not among the ``keep`` most recently
        finished entries. Running and unacknowledged entries are never deleted.
        A pruned id is no longer recognised as a duplicate, so both limits
        should exceed the backend's redelivery window.
        """
        if max_age < 0 or keep < 0:
            raise ValueError("max_age and keep must not be negative")
        cutoff = self.clock.seconds() - max_age
        with self._transaction() as db:
            cursor = db.execute(
                """
                DELETE FROM commands
                WHERE acked = 1 AND state = ? AND finished_at < ?
                  AND command_id NOT IN (
                      SELECT command_id FROM commands
                      WHERE state = ? ORDER BY finish_seq DESC LIMIT ?
                  )
                """,
                (FINISHED, cutoff, FINISHED, keep),
            )
            return cursor.rowcount

    # -- replay cache ------------------------------------------------------

    def remember_nonce(self, nonce: str, expires_at: float, now: float) -> bool:
        """Record the nonce of a signed command; ``False`` if it was already seen.

        A nonce is kept until ``expires_at`` (its command's ``issued_at`` plus
        the clock window: after that the command is refused as expired
        anyway), in the journal's file, so the cache survives restarts.
        Expired nonces are dropped here, which bounds the table by what can
        arrive within one window.
        """
        with self._transaction() as db:
            db.execute("DELETE FROM nonces WHERE expires_at < ?", (now,))
            seen = db.execute("SELECT 1 FROM nonces WHERE nonce = ?", (nonce,)).fetchone()
            if seen is not None:
                return False
            db.execute("INSERT INTO nonces (nonce, expires_at) VALUES (?, ?)", (nonce, expires_at))
            return True

    def nonce_count(self) -> int:
        """How many nonces the replay cache holds (for tests and telemetry)."""
        return self._conn().execute("SELECT COUNT(*) FROM nonces").fetchone()[0]

    # -- process groups ----------------------------------------------------

    def record_group(self, pgid: int, boot_id: str, start_time: int) -> None:
        """Record a verb's process group as it starts (a recycled pgid replaces its row)."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO process_groups (pgid, boot_id, start_time)"
                " VALUES (?, ?, ?)",
                (pgid, boot_id, start_time),
            )

    def forget_group(self, pgid: int) -> None:
        """Forget a group that ended (idempotent)."""
        with self._transaction() as db:
            db.execute("DELETE FROM process_groups WHERE pgid = ?", (pgid,))

    def process_groups(self) -> list[ProcessGroupRecord]:
        """The groups recorded and not forgotten: after a crash, maybe still running."""
        rows = self._conn().execute(
            "SELECT pgid, boot_id, start_time FROM process_groups ORDER BY pgid"
        )
        return [ProcessGroupRecord(*row) for row in rows]

    # -- internals ---------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise JournalError(f"journal {self.path} is not open")
        return self._db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so a read-then-write (accept,
        # finish) cannot interleave with another writer on the same file.
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            # SQLite may already have rolled back (e.g. on a full disk); a
            # second ROLLBACK would raise and hide the original error.
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _finish(self, db: sqlite3.Connection, command_id: str, result: str) -> None:
        row = db.execute(
            "SELECT state FROM commands WHERE command_id = ?", (command_id,)
        ).fetchone()
        if row is None:
            raise UnknownCommandError(command_id)
        if row[0] == FINISHED:
            return
        # A sequence, not timestamps, orders replay: clocks repeat and jump.
        # Prune only drops acknowledged entries, so MAX+1 never reorders the
        # unacknowledged ones even when a deleted number is reused.
        db.execute(
            """
            UPDATE commands SET state = ?, result = ?, finished_at = ?,
                finish_seq = (SELECT COALESCE(MAX(finish_seq), 0) + 1 FROM commands)
            WHERE command_id = ?
            """,
            (FINISHED, result, self.clock.seconds(), command_id),
        )

    def _migrate(self) -> None:
        with self._transaction() as db:
            # Journals of earlier releases kept their version in user_version only.
            legacy = int(db.execute("PRAGMA user_version").fetchone()[0])
            try:
                before, after = migrations.migrate(
                    db.cursor(), _MIGRATIONS, self.clock.seconds(), adopt=legacy
                )
            except migrations.SchemaTooNew as e:
                raise JournalError(
                    f"journal {self.path} has schema version {e.found}, newer than"
                    f" this agent's {SCHEMA_VERSION}; refusing to downgrade it"
                ) from None
            if legacy != after:
                # Mirrored for a gateway rolled back to a release that reads only this.
                db.execute(f"PRAGMA user_version = {after}")

    def _recover(self) -> list[JournalEntry]:
        with self._transaction() as db:
            rows = db.execute(
                "SELECT command_id, received_at FROM commands WHERE state = ?"
                " ORDER BY received_at, rowid",
                (RUNNING,),
            ).fetchall()
            now = self.clock.seconds()
            for command_id, received_at in rows:
                self._finish(db, command_id, json.dumps(lost_result(received_at, now)))
        recovered = [self.get(command_id) for command_id, _ in rows]
        return [entry for entry in recovered if entry is not None]
