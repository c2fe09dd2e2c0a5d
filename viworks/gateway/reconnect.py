"""Reconnecting to the backend: the retry policy and the ``ClientService`` pieces around it.

The link (``link.py``) reconnects forever through a ``ClientService``. Its delays come from
``ReconnectPolicy`` (full jitter, hints from the backend); ``ReportingEndpoint`` tells the
link why an attempt failed, so that the outage log (``outage.py``) can say it; and
``QuietClientService`` keeps Twisted from logging every scheduled retry on top.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from twisted.logger import Logger as TwistedLogger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["QuietClientService", "ReconnectPolicy", "ReportingEndpoint"]


class ReconnectPolicy:
    """A ``ClientService`` retry policy with full jitter and hints from the backend.

    Each delay is random over the whole window [initial, min(maximum, initial *
    2**failures)], so a fleet that lost its backend does not return in
    lock-step. The failure count is reset only by a welcome (``succeeded``), not
    by a TCP or TLS connection: a backend that refuses us after the handshake
    must not be hammered. ``at_least`` raises the next delay (retry-after hints,
    or reconnect_max after being replaced by another connection).
    """

    def __init__(
        self, initial: float, maximum: float, rand: Callable[[], float] = random.random
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.rand = rand
        self.failures = 0
        self._floor = 0.0

    def __call__(self, _attempt: int) -> float:
        ceiling = min(self.maximum, self.initial * 2 ** min(self.failures, 32))
        delay = self.initial + self.rand() * (ceiling - self.initial)
        self.failures += 1
        delay, self._floor = max(delay, self._floor), 0.0
        return delay

    def succeeded(self) -> None:
        self.failures = 0

    def at_least(self, seconds: float) -> None:
        self._floor = max(self._floor, seconds)


class QuietClientService(ClientService):
    """A ``ClientService`` without its "Scheduling retry N" line for every attempt.

    The link logs why it is down and when it tries again (``outage.OutageLog``);
    Twisted's warnings still get through.
    """

    _log = TwistedLogger(
        observer=FilteringLogObserver(
            globalLogPublisher, [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)]
        )
    )


@implementer(IStreamClientEndpoint)
class ReportingEndpoint:
    """An endpoint that tells ``on_failure`` why a connection attempt failed."""

    def __init__(self, endpoint: Any, on_failure: Callable[[Failure], None]) -> None:
        self._endpoint = endpoint
        self._on_failure = on_failure

    def connect(self, factory: Any) -> Deferred:
        def report(failure: Failure) -> Failure:
            self._on_failure(failure)
            return failure

        return self._endpoint.connect(factory).addErrback(report)
