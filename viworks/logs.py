"""Log levels: every viworks ``Logger`` passes through one level filter.

twistd owns the log observers, so the configured ``log_level`` is applied where
our events (and Autobahn's, which our protocol classes log through) enter the
global publisher.
"""

from __future__ import annotations

import txaio
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from twisted.logger import Logger as _TwistedLogger

_levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_levels])


def Logger() -> _TwistedLogger:  # noqa: N802 - a drop-in for twisted.logger.Logger
    """A Twisted ``Logger`` whose events are dropped below the configured level."""
    return _TwistedLogger(observer=_observer)


def set_log_level(name: str) -> None:
    """Apply a config ``log_level`` (debug, info, warn, error, critical)."""
    _levels.setLogLevelForNamespace("", LogLevel.levelWithName(name))
    txaio.set_global_log_level(name)
