"""The level filter every viworks Logger goes through (viworks/logs.py)."""

from __future__ import annotations

from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from viworks import logs


class LevelTests(unittest.TestCase):
    def setUp(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.addCleanup(logs.set_log_level, "info")
        self.log = logs.Logger()

    def seen(self) -> list[str]:
        return [e["log_format"] for e in self.events if e.get("log_namespace") == __name__]

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
