"""Log levels: every viworks ``Logger`` passes through one level filter.

twistd owns the log observers, so the configured ``log_level`` is applied where
our events (and Autobahn's, which our protocol classes log through) enter the
global publisher.

JSON lines instead of text: ``twistd --logger viworks.logs.json_observer ...`` writes
one JSON object per event to stdout (journald/Loki friendly). Events carry their
format fields, so ``agent_id``, ``command_id`` and ``job_id`` are keys to filter on.
"""

from __future__ import annotations

import pprint
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
_ORDER = [LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical]
# Levels below the configured one: our loggers drop them before building the event.
_below: set = {LogLevel.debug}


class _Logger(_TwistedLogger):
    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        # The hot path has debug lines; without this each one would still build an
        # event and walk the filter only to be dropped (4% of the backend under load).
        if level in _below:
            return
        super().emit(level, format, **kwargs)


def Logger() -> _TwistedLogger:  # noqa: N802 - a drop-in for twisted.logger.Logger
    """A Twisted ``Logger`` whose events are dropped below the configured level."""
    # Named after the module that asks for it (not this one): log_namespace in JSON logs.
    namespace = sys._getframe(1).f_globals.get("__name__", "viworks")
    return _Logger(namespace=namespace, observer=_observer)


def json_observer() -> ILogObserver:
    """A twistd ``--logger``: every event as one line of JSON on stdout."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")


class LazyPformat:
    """``pprint.pformat(obj)``, computed only when a log line using it is written."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __format__(self, spec: str) -> str:
        return format(pprint.pformat(self.obj), spec)

    def __str__(self) -> str:
        return pprint.pformat(self.obj)

    __repr__ = __str__


def _lazy_autobahn_debug() -> None:
    # Autobahn pretty-prints its whole configuration for a debug line on every new
    # connection, whatever the log level: ~10% of the backend's CPU in a connect
    # storm. Its module-level pformat becomes lazy (the text is the same when
    # debug is on).
    from autobahn.websocket import protocol as websocket_protocol

    websocket_protocol.pformat = LazyPformat


def set_log_level(name: str) -> None:
    """Apply a config ``log_level`` (debug, info, warn, error, critical)."""
    txaio.use_twisted()  # idempotent; autobahn.twisted selects it too
    _lazy_autobahn_debug()
    level = LogLevel.levelWithName(name)
    _levels.setLogLevelForNamespace("", level)
    _below.clear()
    _below.update(_ORDER[: _ORDER.index(level)])
    txaio.set_global_log_level(name)
