"""Slots for running verbs: how many at once, and the queue of those waiting.

At most ``max_concurrency`` executions run at once (``None``: no limit), at most
``Verb.concurrency`` of one verb, and one at a time per ``Verb.serialize`` key. An
execution that cannot run yet waits in a FIFO queue of at most ``queue_limit`` entries
(``None``: unbounded). When a slot frees, the first waiting execution whose limits allow
it starts (one blocked by its own verb's limit or lock does not hold up the others).
Cancelling a wait removes it from the queue: it never holds a slot.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred

from viworks.gateway.verbs.model import Verb
from viworks.logs import Logger

__all__ = ["Admission"]

log = Logger()


class _Waiter:
    """An execution waiting for a slot; ``admitted`` fires once it holds one."""

    __slots__ = ("admitted", "verb")

    def __init__(self, verb: Verb, admitted: Deferred[None]) -> None:
        self.verb = verb
        self.admitted = admitted


class Admission:
    """The catalog's slots: take one now (:meth:`take`), or :meth:`wait` for one;
    :meth:`release` it when the execution ends."""

    def __init__(self, max_concurrency: int | None = None, queue_limit: int | None = None) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if queue_limit is not None and queue_limit < 0:
            raise ValueError("queue_limit must not be negative")
        self.max_concurrency = max_concurrency
        self.queue_limit = queue_limit
        self._running = 0
        self._running_per_verb: dict[str, int] = {}
        self._busy_keys: set[str] = set()
        self._waiting: deque[_Waiter] = deque()

    @property
    def running(self) -> int:
        """Executions holding a slot."""
        return self._running

    @property
    def queued(self) -> int:
        """Executions waiting for a slot."""
        return len(self._waiting)

    @property
    def full(self) -> bool:
        """True when no more executions may wait."""
        return self.queue_limit is not None and len(self._waiting) >= self.queue_limit

    def take(self, verb: Verb) -> bool:
        """Take a slot for ``verb`` now if its limits allow; False if it must wait."""
        if not self._can_run(verb):
            return False
        self._take(verb)
        return True

    def wait(self, verb: Verb) -> Deferred[None]:
        """Queue ``verb``; the Deferred fires once it holds a slot (cancel: it leaves the
        queue). The caller checks :attr:`full` first."""

        def forget(_d: Deferred[None]) -> None:
            self._waiting.remove(waiter)  # cancelled while waiting: it never starts

        waiter = _Waiter(verb, Deferred(forget))
        self._waiting.append(waiter)
        log.debug(
            "verb {verb} queued ({queued} waiting)", verb=verb.name, queued=len(self._waiting)
        )
        return waiter.admitted

    def release(self, verb: Verb) -> None:
        """Give back ``verb``'s slot and admit whoever waits and now may run."""
        self._running -= 1
        left = self._running_per_verb[verb.name] - 1
        if left:
            self._running_per_verb[verb.name] = left
        else:
            del self._running_per_verb[verb.name]
        if verb.serialize is not None:
            self._busy_keys.discard(verb.serialize)
        self._pump()

    def _can_run(self, verb: Verb) -> bool:
        if self.max_concurrency is not None and self._running >= self.max_concurrency:
            return False
        if (
            verb.concurrency is not None
            and self._running_per_verb.get(verb.name, 0) >= verb.concurrency
        ):
            return False
        return verb.serialize is None or verb.serialize not in self._busy_keys

    def _take(self, verb: Verb) -> None:
        self._running += 1
        self._running_per_verb[verb.name] = self._running_per_verb.get(verb.name, 0) + 1
        if verb.serialize is not None:
            self._busy_keys.add(verb.serialize)

    def _pump(self) -> None:
        """Admit, in FIFO order, every waiting execution whose limits now allow it."""
        admitted: list[_Waiter] = []
        still: deque[_Waiter] = deque()
        for waiter in self._waiting:
            if self._can_run(waiter.verb):
                self._take(waiter.verb)
                admitted.append(waiter)
            else:
                still.append(waiter)
        self._waiting = still
        # Fire only once the queue is consistent: an admitted execution may
        # finish synchronously and pump again.
        for waiter in admitted:
            waiter.admitted.callback(None)
