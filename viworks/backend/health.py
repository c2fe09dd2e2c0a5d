"""Whether the store takes writes: what ``/api/v1/health`` reports as ``store``.

A backend whose database no longer takes writes (disk full, a read-only file or
file system, PostgreSQL in a read-only transaction or a standby) cannot take a
command or record a result, so "healthy" would be a lie that keeps a load
balancer sending it work. The store is asked to commit a write that changes
nothing viworks reads (``probe_write``); the answer is kept ``TTL`` seconds, and
callers arriving while a probe runs share it, so health checks cannot load the
database however often they come.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from viworks.backend.store import Store
from viworks.logs import Logger


class StoreHealth:
    """The store's write health: ``OK``, ``READ_ONLY`` or ``UNAVAILABLE``."""

    OK = "ok"
    READ_ONLY = "read-only"
    UNAVAILABLE = "unavailable"
    #: Seconds a probe's answer is kept.
    TTL = 2.0
    #: A probe not answered by then counts as unavailable.
    TIMEOUT = 5.0

    log = Logger()

    def __init__(self, store: Store, clock: IReactorTime) -> None:
        self.store = store
        self.clock = clock
        self.probes = 0
        self._state = self.OK
        self._checked_at: float | None = None
        self._waiters: list[Deferred] | None = None

    async def state(self) -> str:
        """The state as of at most ``TTL`` seconds ago (probing now if older)."""
        now = self.clock.seconds()
        if self._checked_at is not None and now - self._checked_at < self.TTL:
            return self._state
        waiter: Deferred = Deferred()
        if self._waiters is None:
            self._waiters = [waiter]
            Deferred.fromCoroutine(self._probe())
        else:
            self._waiters.append(waiter)
        return await waiter

    async def _probe(self) -> None:
        self.probes += 1
        probe = Deferred.fromCoroutine(self.store.probe_write())
        probe.addTimeout(self.TIMEOUT, self.clock)
        try:
            await probe
            state, error = self.OK, None
        except Exception as e:
            state = self.READ_ONLY if self.store.unwritable(e) else self.UNAVAILABLE
            error = e
        if state != self._state:
            if error is None:
                self.log.info("store: takes writes again")
            else:
                self.log.error(
                    "store: {state}: a write probe failed: {error}", state=state, error=error
                )
        self._state, self._checked_at = state, self.clock.seconds()
        waiters, self._waiters = self._waiters or [], None
        for waiter in waiters:
            waiter.callback(state)
