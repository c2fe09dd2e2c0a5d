"""SQLite store: one file, one connection (SQLite has a single writer)."""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any, ClassVar

from twisted.enterprise.adbapi import ConnectionPool, Transaction

from viworks.backend.store.errors import StoreError
from viworks.backend.store.sql import SQLStore

_BUSY_TIMEOUT_MS = 5000
# Primary result codes of a database that answers but cannot write: SQLITE_PERM,
# SQLITE_READONLY, SQLITE_IOERR (EROFS, EIO), SQLITE_FULL, SQLITE_CANTOPEN.
_UNWRITABLE = frozenset({3, 8, 10, 13, 14})
# UPDATE/INSERT ... RETURNING (the store's compare-and-set and sweeps).
_MIN_SQLITE = (3, 35, 0)


def _configure(conn: sqlite3.Connection) -> None:
    # busy_timeout makes a writer wait for another process's lock instead of
    # failing at once; foreign_keys is off by default in SQLite; WAL lets
    # readers in other processes (CLI tools) run during writes.
    conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys=ON")
    # In WAL mode NORMAL keeps every committed transaction across a crash of
    # the process (kill -9); only a power loss can take back the last ones.
    # FULL would fsync at every commit, the backend's main cost under load.
    conn.execute("PRAGMA synchronous=NORMAL")
    # Switching a fresh file to WAL needs an exclusive lock and SQLite
    # returns "locked" without waiting when another connection is mid-write
    # (deadlock avoidance), so retry here (we are in a pool thread).
    deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _configure_inline(conn: sqlite3.Connection) -> None:
    _configure(conn)
    # The reactor thread never waits for a lock (such a batch goes to the pool
    # thread) and never checkpoints (the pool thread does).
    conn.execute("PRAGMA busy_timeout=0")
    conn.execute("PRAGMA wal_autocheckpoint=0")


class SQLiteStore(SQLStore):
    """Store in a SQLite file (or ``:memory:``)."""

    PARAMSTYLE: ClassVar[str] = "qmark"
    DDL_TYPES: ClassVar[dict[str, str]] = {
        "real": "REAL",
        # AUTOINCREMENT: never reuse a seq, even after the newest row is deleted.
        "serial_pk": "INTEGER PRIMARY KEY AUTOINCREMENT",
    }

    def __init__(self, path: str, reactor: Any = None) -> None:
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise StoreError(
                f"SQLite {sqlite3.sqlite_version} is too old:"
                f" viworks needs {'.'.join(map(str, _MIN_SQLITE))} or newer"
            )
        self.path = path
        self._inline: sqlite3.Connection | None = None
        if path != ":memory:":
            _prepare_file(path)
        super().__init__(reactor)

    def _make_pool(self, reactor: Any) -> ConnectionPool:
        return ConnectionPool(
            "sqlite3",
            self.path,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=_configure,
            cp_reactor=reactor,
        )

    def _lock_for_migration(self, txn: Transaction) -> None:
        # Take the write lock before reading schema_version, so two processes
        # opening a fresh file cannot both decide to run migration 1.
        txn.execute("BEGIN IMMEDIATE")

    async def open(self) -> int:
        version = await super().open()
        if self.path != ":memory:" and self._inline is None:
            # The batches' own connection in the reactor thread (store/batch.py).
            self._inline = sqlite3.connect(self.path, check_same_thread=False)
            _configure_inline(self._inline)
            if self._reactor is None:
                from twisted.internet import reactor as clock
            else:
                clock = self._reactor
            self.batches.go_inline(self._inline, clock)
        return version

    async def close(self) -> None:
        await super().close()
        if self._inline is not None:
            self._inline.close()
            self._inline = None

    def _begin_batch(self, txn: Transaction) -> None:
        # The write lock up front, for the whole batch: another process (a
        # CLI) writing at the same time waits (busy_timeout) instead of
        # failing to upgrade a read lock halfway through.
        txn.execute("BEGIN IMMEDIATE")

    def unwritable(self, error: BaseException) -> bool:
        if not isinstance(error, sqlite3.Error):
            return False
        code = getattr(error, "sqlite_errorcode", None)
        return code is not None and (code & 0xFF) in _UNWRITABLE

    def _probe_write_txn(self, txn: Transaction) -> None:
        # SQLite writes no page for an UPDATE that changes nothing, so a full disk
        # would go unnoticed: flip user_version (unused by this store) instead, one
        # page through the WAL, as any real write.
        txn.execute("PRAGMA user_version")
        version = int(txn.fetchone()[0])
        txn.execute(f"PRAGMA user_version = {version ^ 1}")

    def _lock_audit(self, txn: Transaction) -> None:
        # Nothing to do: the batch holds the write lock (_begin_batch), so
        # nobody can append between our read of the last hash and our insert.
        pass


def _prepare_file(path: str) -> None:
    """Create the parent directory (0700) and the file (0600) if missing.

    The database holds token hashes; SQLite would create it with the umask
    (often world-readable). The -wal/-shm files copy the database's mode.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)
