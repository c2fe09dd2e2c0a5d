"""The engine part of the store: pool, dialect, group commit, migrations, run helpers.

Subclasses (``SQLiteStore``, ``PostgresStore``) only provide the pool, the
parameter style, the few DDL types that differ and how a migration run is
serialised against other processes. Queries are written with ``?``
placeholders and rewritten by :meth:`SQLEngine._sql` for ``%s`` engines.

Every public method of the store runs its SQL through :meth:`SQLEngine._run`
(the group-commit :class:`BatchRunner`) and is ``async``; the reactor thread
never blocks on the database (except in :meth:`close`, which joins the pool
threads, and the SQLite engine's inline batches: see ``store/batch.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar, cast

from twisted.enterprise.adbapi import ConnectionPool, Transaction
from twisted.internet.defer import Deferred

from viworks.backend.store import schema
from viworks.backend.store.batch import BatchRunner
from viworks.backend.store.columns import batches, marks
from viworks.backend.store.errors import SchemaTooNew
from viworks.logs import Logger

P = ParamSpec("P")
R = TypeVar("R")

Row = tuple[Any, ...]
TxnFunc = Callable[Concatenate[Transaction, P], R]


class SQLEngine:
    """The store's engine over a DB-API connection pool.

    Subclasses set ``PARAMSTYLE`` and ``DDL_TYPES`` and implement
    :meth:`_make_pool`, :meth:`_lock_for_migration` and :meth:`_lock_audit`.
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

    def _integrity_error(self) -> type[Exception]:
        """The driver's IntegrityError (a unique or foreign key violation)."""
        return cast("type[Exception]", self._pool.dbapi.IntegrityError)

    # -- running SQL ----------------------------------------------------------

    def _sql(self, sql: str) -> str:
        if self.PARAMSTYLE == "qmark":
            return sql
        # format/pyformat: literal % must be doubled. No query here has a
        # '?' inside a string literal, so the rewrite is safe.
        return sql.replace("%", "%%").replace("?", "%s")

    def _execute(self, txn: Transaction, sql: str, params: Sequence[Any] = ()) -> None:
        txn.execute(self._sql(sql), tuple(params))

    def _run(self, func: TxnFunc[P, R], *args: P.args, **kw: P.kwargs) -> Deferred[R]:
        """``func(txn, *args, **kw)`` in the next batch; fires with its result after commit."""
        run: Callable[..., Deferred[R]] = self.batches.run
        return run(func, *args, **kw)

    def _run_long(self, func: TxnFunc[P, R], *args: P.args, **kw: P.kwargs) -> Deferred[R]:
        """``_run`` for a call that may touch many rows: never on the reactor thread."""
        run: Callable[..., Deferred[R]] = self.batches.run
        return run(func, *args, in_thread=True, **kw)

    # -- the few statements every aggregate needs -----------------------------------

    def _select_txn(self, txn: Transaction, sql: str, params: Sequence[Any]) -> list[Row]:
        self._execute(txn, sql, params)
        rows: list[Row] = txn.fetchall()
        return rows

    def _update_count_txn(self, txn: Transaction, sql: str, params: Sequence[Any]) -> int:
        """Run a statement; how many rows it changed."""
        self._execute(txn, sql, params)
        return int(txn.rowcount)

    def _scalar_txn(self, txn: Transaction, sql: str, params: Sequence[Any]) -> Any:
        self._execute(txn, sql, params)
        return txn.fetchone()[0]

    def _insert_rows_txn(
        self,
        txn: Transaction,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        suffix: str = "",
    ) -> int:
        """Insert ``rows`` (values in ``columns`` order), a multi-row statement per
        batch, ``suffix`` after each (``ON CONFLICT ... DO NOTHING``); how many went in."""
        row_marks = f"({marks(len(columns))})"
        added = 0
        for batch in batches(rows):
            added += self._update_count_txn(
                txn,
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                + ", ".join([row_marks] * len(batch))
                + suffix,
                [value for row in batch for value in row],
            )
        return added

    def _insert_returning(
        self, txn: Transaction, table: str, values: Mapping[str, Any], returning: str
    ) -> Row:
        """Insert one row of ``values`` and return the ``returning`` columns of it."""
        columns = list(values)
        self._execute(
            txn,
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks(len(columns))})"
            f" RETURNING {returning}",
            [values[c] for c in columns],
        )
        row: Row = txn.fetchone()
        return row

    # -- lifecycle ----------------------------------------------------------

    async def open(self) -> int:
        """Apply pending migrations; return the schema version now in use."""
        # Alone in its transaction: the migration lock starts it.
        version: int = await self._pool.runInteraction(self._migrate_txn, time.time())
        return version

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
