"""Command deadlines: queued too long -> ``expired``, silent too long -> ``lost``.

One timer, set to the earliest of the next delivery deadline (a queued command's TTL)
and the next loss deadline (dispatched or running for longer than its timeout plus
``lost_grace``). Each sweep asks the store what is due, publishes the changes like any
other (``CommandStatuses.changed``) and re-arms from the store, so the deadlines of
commands created before a restart are kept too.

For ``startup_grace`` seconds after ``start`` nothing is declared lost: after an
outage, agents reconnecting report what finished meanwhile from their journals. A
result from a lost command's own agent still replaces ``lost`` later (the ledger).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from viworks.backend.commandevents import CommandStatuses
from viworks.backend.store import Store
from viworks.logs import Logger


class Deadlines:
    """Keeps commands' delivery and loss deadlines (see the module's doc)."""

    log = Logger()

    def __init__(
        self,
        store: Store,
        statuses: CommandStatuses,
        clock: IReactorTime,
        *,
        lost_grace: float,
        startup_grace: float,
    ) -> None:
        self.store = store
        self.statuses = statuses
        self.clock = clock
        self.lost_grace = lost_grace
        self.startup_grace = startup_grace
        # No command is declared lost before this time (set by start()).
        self._lose_from = 0.0
        self._timer: IDelayedCall | None = None
        self._running = False

    async def start(self) -> None:
        """Begin keeping deadlines (the store is open): sweep now, then when due."""
        self._running = True
        self._lose_from = self.clock.seconds() + self.startup_grace
        await self._sweep()

    def stop(self) -> None:
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def watch_loss(self, dispatched_at: float, timeout: float | None) -> None:
        """A command went out at ``dispatched_at``: sweep when it could be lost (a
        command without a timeout is never lost)."""
        if timeout is not None:
            self.wake_at(dispatched_at + timeout + self.lost_grace)

    def wake_at(self, when: float | None) -> None:
        """Sweep at ``when`` at the latest (None: nothing new to watch)."""
        if when is None or not self._running:
            return
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= when:
                return
            self._timer.cancel()
        delay = max(0.0, when - self.clock.seconds())
        self._timer = self.clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        d = Deferred.fromCoroutine(self._sweep())
        d.addErrback(self._sweep_failed)

    def _sweep_failed(self, failure: Failure) -> None:
        # After stop() the store may close under a sweep in flight: nothing to report.
        if self._running:
            self.log.failure("deadline sweep failed", failure)

    async def _sweep(self) -> None:
        now = self.clock.seconds()
        for command in await self.store.expire_due(now):
            self.log.info(
                "command {command_id} expired: not delivered to {agent_id} in time",
                command_id=command.command_id,
                agent_id=command.agent_id,
            )
            self.statuses.changed(command)
        # During the start-up grace agents may still be reconnecting: nothing is lost yet.
        lost = await self.store.lose_overdue(now, self.lost_grace) if now >= self._lose_from else []
        for command in lost:
            self.log.warn(
                "command {command_id} lost: no result from {agent_id} within its timeout",
                command_id=command.command_id,
                agent_id=command.agent_id,
            )
            self.statuses.changed(command)
        await self._rearm()

    async def _rearm(self) -> None:
        expiry = await self.store.next_expiry()
        loss = await self.store.next_loss_deadline()
        if loss is not None:
            loss = max(loss + self.lost_grace, self._lose_from)
        candidates = [t for t in (expiry, loss) if t is not None]
        self.wake_at(min(candidates) if candidates else None)
