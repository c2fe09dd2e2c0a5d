"""Log levels: every viworks ``Logger`` passes through one level filter.

twistd owns the log observers, so the configured ``log_level`` is applied where
our events (and Autobahn's, which our protocol classes log through) enter the
global publisher.

JSON lines instead of text: ``twistd --logger viworks.logs.json_observer ...`` writes
one JSON object per event to stdout (journald/Loki friendly). Events carry their
format fields, so ``agent_id``, ``command_id`` and ``job_id`` are keys to filter on.

Log lines carry text from agents (their HELLO, their error messages), so no field
may forge a line: every field of our events is formatted once, with control
characters escaped (``\r`` -> ``\\r``, ESC -> ``\\x1b``), into the event's
``log_flattened``, which Twisted's text formatting uses in place of the raw values
(JSON output keeps the raw values: JSON escapes them itself).
"""

from __future__ import annotations

import pprint
import sys
from string import Formatter
from typing import Any

import txaio
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    jsonFileLogObserver,
)
from twisted.logger import Logger as _TwistedLogger

# The keys Twisted's flatFormat looks fields up by ("name!s:spec"); not re-exported.
from twisted.logger._flatten import KeyFlattener
from zope.interface import provider

#: C0 controls, DEL, C1 controls, the Unicode line and paragraph separators and the
#: bidirectional overrides: what could end a line, repaint a terminal or reorder text.
_ESCAPES: dict[int, str] = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
_ESCAPES.update(
    {c: f"\\u{c:04x}" for c in (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))}
)
_formatter = Formatter()


def escape_controls(text: str) -> str:
    """``text`` with each control character written as an escape (``\\n``, ``\\x1b``)."""
    # Every character escaped is one str.isprintable() refuses: the common case is one scan.
    return text if text.isprintable() else text.translate(_ESCAPES)


def _flatten_escaped(event: LogEvent) -> None:
    """Format each field of ``event`` for text output, escaped, into ``log_flattened``."""
    log_format = event.get("log_format")
    if not isinstance(log_format, str) or "log_flattened" in event:
        return
    flattened: dict[str, Any] = {}
    keys = KeyFlattener()
    try:
        for _text, name, spec, conversion in _formatter.parse(log_format):
            if name is None:
                continue
            if conversion not in (None, "s", "r"):
                return  # flatFormat would not find "!a": leave the event to Twisted
            # The same keys as twisted.logger.flattenEvent, so flatFormat finds them.
            flat_key = keys.flatKey(name, spec, "r" if conversion == "r" else "s")
            structured_key = keys.flatKey(name, spec, "")
            if flat_key in flattened:
                continue
            call = name.endswith("()")
            value = _formatter.get_field(name[:-2] if call else name, (), event)[0]
            if call:
                value = value()
            text = _formatter.format_field(_formatter.convert_field(value, conversion), spec or "")
            flattened[flat_key] = escape_controls(text)
            flattened[structured_key] = value
    except Exception:
        return  # a broken log call: Twisted's own formatting reports it
    event["log_flattened"] = flattened


@provider(ILogObserver)
def _escaped(event: LogEvent) -> None:
    _flatten_escaped(event)
    globalLogPublisher(event)


_levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(_escaped, [_levels])
_ORDER = [LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical]
# Levels below the configured one: our loggers drop them before building the event.
_below: set = {LogLevel.debug}


class _Logger(_TwistedLogger):
    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        # The hot path has debug lines; without this each one would still build an
        # event and walk the filter only to be dropped (docs/benchmarks.md: "Figures
        # behind the code").
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
    # connection, whatever the log level: a large part of the backend's CPU in a
    # connect storm (docs/benchmarks.md). Its module-level pformat becomes lazy (the
    # text is the same when debug is on).
    from autobahn.websocket import protocol as websocket_protocol

    # A class where a function was: it is only ever called with one object to format.
    websocket_protocol.pformat = LazyPformat  # type: ignore[assignment]


def set_log_level(name: str) -> None:
    """Apply a config ``log_level`` (debug, info, warn, error, critical)."""
    txaio.use_twisted()  # idempotent; autobahn.twisted selects it too
    _lazy_autobahn_debug()
    level = LogLevel.levelWithName(name)
    _levels.setLogLevelForNamespace("", level)
    _below.clear()
    _below.update(_ORDER[: _ORDER.index(level)])
    txaio.set_global_log_level(name)  # type: ignore[attr-defined]  # txaio's stubs lack it


class ThrottledWarnings:
    """Warnings one untrusted source causes, at most ``burst`` per ``window`` seconds.

    An agent can make the backend refuse frames all day within its frame budget;
    logging each refusal would let it fill the disk with log lines. Past the burst,
    refusals are counted, and one line per window says how many were left out.
    """

    def __init__(
        self, log: _TwistedLogger, clock: Any, source: str, burst: int = 10, window: float = 60.0
    ) -> None:
        self.log = log
        self.clock = clock
        self.source = source
        self.burst = burst
        self.window = window
        self._until = -1.0
        self._logged = 0
        self._suppressed = 0

    def warn(self, log_format: str, **fields: Any) -> None:
        now = self.clock.seconds()
        if now >= self._until:
            self.flush()
            self._until = now + self.window
            self._logged = 0
        if self._logged < self.burst:
            self._logged += 1
            self.log.warn(log_format, **fields)
        else:
            self._suppressed += 1

    def flush(self) -> None:
        """Say how many warnings were left out since the last line (if any)."""
        if self._suppressed:
            self.log.warn(
                "{suppressed} more warnings caused by {source} left out of the log in"
                " {window:g} s (at most {burst} per window)",
                suppressed=self._suppressed,
                source=self.source,
                window=self.window,
                burst=self.burst,
            )
            self._suppressed = 0
