"""Group commit: the store's interactions share transactions when they queue up.

Each store call used to be its own thread hop and its own commit; under load
the single SQLite thread spent its time committing and handing results back.
``BatchRunner`` keeps a FIFO of interactions and runs whatever has queued up
while the previous batch was in the database as ONE transaction, each
interaction inside its own savepoint: an interaction that raises is rolled back
alone and gets its own failure, the others commit. Callers see exactly what
they saw before (a Deferred per call, fired after the commit that made it
durable, in submission order); an idle store adds no delay (a lone call runs
at once, without a savepoint).

Inline mode (SQLite): a commit in WAL mode with ``synchronous=NORMAL`` is a
write to the page cache, cheaper than the two thread hops around it, so
batches run on a connection of the reactor thread itself: one reactor turn
after the first call queued, with every call queued by then (a state change
and the audit record written after it in the same turn share one commit). That
connection never waits: it has no busy timeout (a batch that finds the file
locked by another process goes to the pool thread, which waits) and does not
checkpoint (the pool thread does, every ``CHECKPOINT_EVERY`` batches). Calls
that may read many rows are queued with ``in_thread=True``; a batch holding
one runs in the pool thread.

Sharing a transaction makes lock waits between backends (PostgreSQL) possible
where single calls had none: a call that fails with an error the engine calls
transient (a deadlock, a serialization failure) rolls its whole batch back, and
the batch's calls run again, each in a transaction of its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.enterprise.adbapi import ConnectionPool, Transaction
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


@dataclass
class _Call:
    func: Callable[..., Any]
    args: tuple
    kw: dict
    done: Deferred
    in_thread: bool  # may read many rows: never inline
    alone: bool = False  # in a transaction of its own (after a transient failure)


class _Transient(Exception):
    """A call of a batch failed with a transient error: roll the batch back, split it."""


# Upper bound on interactions per transaction: keeps one batch's lock time short.
MAX_BATCH = 256
# Inline batches between two checkpoints (in the pool thread) of the WAL.
CHECKPOINT_EVERY = 200


class StoreClosed(Exception):
    """The store was closed before this call could run."""


class BatchRunner:
    """Runs interactions through ``pool``, one batch (one transaction) at a time.

    ``begin(txn)`` starts every batch's transaction (SQLite: take the write
    lock up front, so no interaction needs ``BEGIN`` of its own).
    """

    def __init__(
        self,
        pool: ConnectionPool,
        begin: Callable[[Transaction], None],
        max_batch: int = MAX_BATCH,
        transient: Callable[[BaseException], bool] = lambda error: False,
    ) -> None:
        self._transient = transient
        self._inline: Any = None
        self._clock: Any = None
        self._since_checkpoint = 0
        self._pool = pool
        self._begin = begin
        self._max_batch = max_batch
        self._queue: deque[_Call] = deque()
        self._busy = False
        self._closed = False
        self._drained: list[Deferred] = []
        # Batches run and the calls in them (viworks_store_transactions/calls_total).
        self.batches = 0
        self.interactions = 0

    def go_inline(self, connection: Any, clock: Any) -> None:
        """Run batches on ``connection`` in the reactor thread from now on (see above)."""
        self._inline = connection
        self._clock = clock

    @property
    def inline(self) -> bool:
        """True once batches run on the reactor thread (``go_inline``)."""
        return self._inline is not None

    def run(
        self, func: Callable[..., Any], *args: Any, in_thread: bool = False, **kw: Any
    ) -> Deferred:
        """Queue ``func(txn, *args, **kw)``; a Deferred firing with its result after commit.

        ``in_thread``: the call may take long (many rows); never run it inline.
        """
        d: Deferred = Deferred()
        if self._closed:
            d.errback(Failure(StoreClosed("the store is closed")))
            return d
        self._queue.append(_Call(func, args, kw, d, in_thread))
        if not self._busy:
            self._next()
        return d

    async def close(self) -> None:
        """Refuse new calls; return once every call queued so far has run."""
        self._closed = True
        while self._busy:
            drained: Deferred = Deferred()
            self._drained.append(drained)
            await drained

    def _next(self) -> None:
        if not self._queue:
            self._busy = False
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)
            return
        self._busy = True
        if self._inline is not None and not self._queue[0].in_thread:
            # Taken one reactor turn later: the calls the rest of this turn makes
            # (an audit record after a state change, say) join the same commit.
            self._clock.callLater(0, self._next_inline)
        else:
            self._in_thread(self._take())

    def _take(self) -> list[_Call]:
        take = 1 if self._queue[0].alone else min(len(self._queue), self._max_batch)
        batch = [self._queue.popleft() for _ in range(take)]
        self.batches += 1
        self.interactions += take
        return batch

    def _next_inline(self) -> None:
        batch = self._take()
        if any(call.in_thread for call in batch):
            self._in_thread(batch)
        else:
            self._run_inline(batch)

    def _in_thread(self, batch: list[_Call]) -> None:
        self._pool.runInteraction(self._batch_txn, batch).addBoth(self._done, batch)

    def _run_inline(self, batch: list[_Call]) -> None:
        connection = self._inline
        txn = Transaction(self._pool, connection)
        try:
            self._begin(txn)
        except Exception:
            # Locked by another process (or worse): the pool thread waits and reports.
            txn.close()
            self._in_thread(batch)
            return
        try:
            outcomes: Any = self._calls(txn, batch)
            txn.close()
            connection.commit()
        except Exception:
            outcomes = Failure()
            connection.rollback()
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_EVERY:
            self._since_checkpoint = 0
            d = self._pool.runInteraction(_checkpoint_txn)
            d.addErrback(lambda f: None)  # the next one retries; the WAL only grows meanwhile
        self._done(outcomes, batch)

    def _batch_txn(self, txn: Transaction, batch: list[_Call]) -> list[Any]:
        self._begin(txn)
        return self._calls(txn, batch)

    def _calls(self, txn: Transaction, batch: list[_Call]) -> list[Any]:
        if len(batch) == 1:
            call = batch[0]
            # A failure here rolls the whole (one-call) transaction back.
            return [call.func(txn, *call.args, **call.kw)]
        outcomes: list[Any] = []
        for call in batch:
            txn.execute("SAVEPOINT viworks_call")
            try:
                result = call.func(txn, *call.args, **call.kw)
            except Exception as e:
                if self._transient(e):
                    raise _Transient() from e
                outcomes.append(Failure())
                txn.execute("ROLLBACK TO SAVEPOINT viworks_call")
            else:
                outcomes.append(result)
            txn.execute("RELEASE SAVEPOINT viworks_call")
        return outcomes

    def _done(self, outcomes: Any, batch: list[_Call]) -> None:
        if isinstance(outcomes, Failure) and outcomes.check(_Transient):
            # Rolled back: every call again, first in line, each in its own transaction.
            for call in reversed(batch):
                call.alone = True
                self._queue.appendleft(call)
            self._next()
            return
        if isinstance(outcomes, Failure):
            # Begin or commit failed: nothing of this batch is stored.
            outcomes = [outcomes] * len(batch)
        for call, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Failure):
                call.done.errback(outcome)
            else:
                call.done.callback(outcome)
        # Calls made by the callbacks above have queued up behind: the next batch.
        self._next()


def _checkpoint_txn(txn: Transaction) -> None:
    # PASSIVE: copies what it can without waiting for (or blocking) the writer.
    txn.execute("PRAGMA wal_checkpoint(PASSIVE)")
