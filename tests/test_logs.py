"""The level filter every viworks Logger goes through (viworks/logs.py)."""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.logger import (
    eventAsJSON,
    formatEvent,
    formatEventAsClassicLogText,
    globalLogPublisher,
)
from twisted.trial import unittest

from viworks import logs


class _Observed(unittest.TestCase):
    """Collects the events logged by this module's Logger."""

    def setUp(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.addCleanup(logs.set_log_level, "info")
        self.log = logs.Logger()

    def seen(self) -> list[str]:
        return [e["log_format"] for e in self.events if e.get("log_namespace") == __name__]


class LevelTests(_Observed):
    def test_levels_below_the_configured_one_are_dropped(self) -> None:
        """info drops debug; warn drops info too; debug lets everything through."""
        logs.set_log_level("info")
        self.log.debug("d1")
        self.log.info("i1")
        logs.set_log_level("warn")
        self.log.info("i2")
        self.log.warn("w2")
        logs.set_log_level("debug")
        self.log.debug("d3")
        self.assertEqual(self.seen(), ["i1", "w2", "d3"])

    def test_namespace_is_the_calling_module(self) -> None:
        self.log.info("hello")
        self.assertEqual(self.seen(), ["hello"])


class ThrottledWarningsTests(_Observed):
    def test_a_source_logs_at_most_its_burst_per_window_then_a_count(self) -> None:
        """Past the burst, warnings are counted, and the next window starts with one
        line saying how many were left out (an agent cannot fill the disk with logs)."""
        clock = Clock()
        warnings = logs.ThrottledWarnings(self.log, clock, "agent gw-1", burst=3, window=60)
        for i in range(1000):
            warnings.warn("refused frame {i}", i=i)
        self.assertEqual(self.seen(), ["refused frame {i}"] * 3)
        clock.advance(60)
        warnings.warn("refused frame {i}", i=1000)
        texts = [formatEvent(e) for e in self.events if e.get("log_namespace") == __name__]
        self.assertIn("997 more warnings caused by agent gw-1 left out", texts[3])
        self.assertEqual(texts[4], "refused frame 1000")

    def test_flush_reports_what_is_left_out_once(self) -> None:
        """A session that closes says what it left out; nothing when nothing was."""
        warnings = logs.ThrottledWarnings(self.log, Clock(), "agent gw-1", burst=1)
        warnings.flush()
        warnings.warn("a")
        warnings.warn("b")
        warnings.flush()
        warnings.flush()
        self.assertEqual(len(self.seen()), 2)


class AutobahnDebugTests(unittest.TestCase):
    def test_autobahn_debug_formatting_is_lazy(self) -> None:
        """Autobahn's per-connection pformat is deferred to when a line is written,
        and writes the same text then."""
        from pprint import pformat

        from autobahn.websocket import protocol as websocket_protocol

        logs.set_log_level("info")
        value = [("autoPingInterval", 15.0, "AgentSessionFactory")] * 3
        lazy = websocket_protocol.pformat(value)
        self.assertIsInstance(lazy, logs.LazyPformat)
        written = formatEvent({"log_format": "\n{attrs}", "attrs": lazy})
        self.assertEqual(written, "\n" + pformat(value))


class EscapingTests(unittest.TestCase):
    """Fields of our log events are written escaped in text logs (agent text is in them)."""

    def setUp(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.log = logs.Logger()

    def test_control_characters_escaped_in_text(self) -> None:
        """CR, LF, ESC, other C0/C1 controls, DEL and U+2028 in a field are written as
        escapes; format specs, !r and called fields still work; JSON keeps the raw value."""
        forged = "1.0\r\n2026-01-01T00:00:00+0000 [x#info] fake\x1b[31m\x00\x7f\x85\u2028"
        self.log.info(
            "version {version} after {delay:.1f} s, {quoted!r} {count()} {when.year}",
            version=forged,
            delay=2.25,
            quoted="a\nb",
            count=lambda: 3,
            when=__import__("datetime").date(2026, 1, 2),
        )
        [event] = [e for e in self.events if e.get("log_namespace") == __name__]
        text = formatEventAsClassicLogText(event)
        self.assertEqual(text.count("\n"), 1)
        self.assertIn(
            "version 1.0\\r\\n2026-01-01T00:00:00+0000 [x#info] fake\\x1b[31m\\x00\\x7f\\x85"
            "\\u2028 after 2.2 s, 'a\\nb' 3 2026\n",
            text,
        )
        self.assertEqual(json.loads(eventAsJSON(event))["version"], forged)

    def test_printable_text_unchanged(self) -> None:
        """Printable text (accents, non-Latin scripts, quotes, backslashes) is written as is."""
        text = 'héllo Привет 日本 "q" C:\\path'
        self.assertIs(logs.escape_controls(text), text)
