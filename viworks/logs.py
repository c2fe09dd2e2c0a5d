"""Log levels: every viworks ``Logger`` passes through one level filter.

twistd owns the log observers, so the configured ``log_level`` is applied where
our events (and Autobahn's, which our protocol classes log through) enter the
global publisher.

JSON lines instead of text: ``twistd --logger viworks.logs.json_observer ...`` writes
one JSON object per event to stdout (journald/Loki friendly). Events carry their
format fields, so ``agent_id``, ``command_id`` and ``job_id`` are keys to filter on.
"""

from __future__ import annotations

import sys

import txaio
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    jsonFileLogObserver,
)
from twisted.logger import Logger as _TwistedLogger

_levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_levels])


def Logger() -> _TwistedLogger:  # noqa: N802 - a drop-in for twisted.logger.Logger
    """A Twisted ``Logger`` whose events are dropped below the configured level."""
    # Named after the module that asks for it (not this one): log_namespace in JSON logs.
    namespace = sys._getframe(1).f_globals.get("__name__", "viworks")
    return _TwistedLogger(namespace=namespace, observer=_observer)


def json_observer() -> ILogObserver:
    """A twistd ``--logger``: every event as one line of JSON on stdout."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")


def set_log_level(name: str) -> None:
    """Apply a config ``log_level`` (debug, info, warn, error, critical)."""
    _levels.setLogLevelForNamespace("", LogLevel.levelWithName(name))
    txaio.set_global_log_level(name)
