"""Why the backend link is down, logged on the first failure and then once a minute (Clock)."""

from __future__ import annotations

import os
from typing import Any

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import error
from twisted.internet.defer import fail
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from viworks import protocol
from viworks.gateway import outage
from viworks.gateway.journal import Journal
from viworks.gateway.link import BackendLink
from viworks.gateway.reconnect import ReportingEndpoint


class Captured:
    """The viworks.gateway log lines (level, text) published while a test runs."""

    def __init__(self, testcase: unittest.TestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self, level: LogLevel | None = None) -> list[str]:
        return [
            formatEvent(e)
            for e in self.events
            if e.get("log_namespace", "").startswith("viworks.gateway")
            and (level is None or e["log_level"] == level)
        ]


class WhyTests(unittest.TestCase):
    """The sentences for what Twisted, pyOpenSSL and Autobahn report."""

    def test_connect_failures(self) -> None:
        """Refused, DNS and timeouts name the address; anything else keeps its message."""
        why = outage.why_connect_failed
        refused = why(Failure(error.ConnectionRefusedError()), "backend.example", 8081)
        self.assertIn("connection to backend.example:8081 refused", refused)
        self.assertEqual(
            why(Failure(error.DNSLookupError("x")), "backend.example", 8081),
            "cannot resolve backend.example",
        )
        self.assertIn("no answer from", why(Failure(error.TimeoutError()), "b", 1))
        self.assertIn("No route", why(Failure(error.NoRouteError()), "b", 1))

    def test_tls_failures(self) -> None:
        """Which side refused the certificate, and a hostname mismatch, are told apart."""
        ours = SSL.Error([("SSL routines", "", "tlsv1 alert unknown ca")])
        self.assertIn("the backend refused our certificate", outage.why_tls_failed(ours, "b"))
        theirs = SSL.Error([("SSL routines", "", "certificate verify failed")])
        self.assertIn(
            "we do not trust the backend's certificate", outage.why_tls_failed(theirs, "b")
        )
        name = outage.why_tls_failed(VerificationError(errors=["DNSMismatch"]), "b.example")
        self.assertIn("not valid for b.example", name)
        other = SSL.Error([("SSL routines", "", "wrong version number")])
        self.assertEqual(
            outage.why_tls_failed(other, "b"), "TLS handshake failed (wrong version number)"
        )

    def test_closes(self) -> None:
        """A refused upgrade gives its HTTP status; a close its code, name and reason."""
        refused = (
            'connection was closed uncleanly ("WebSocket connection upgrade failed [403]:'
            ' Forbidden")'
        )
        self.assertEqual(
            outage.why_closed(1006, refused),
            "the backend refused the WebSocket upgrade: HTTP 403 Forbidden",
        )
        self.assertEqual(
            outage.why_closed(protocol.CLOSE_HELLO_REFUSED, "hello names 'a' but the cert is 'b'"),
            "the link was closed with code 4001 (hello refused: hello names 'a' but"
            " the cert is 'b')",
        )
        dropped = 'connection was closed uncleanly ("peer dropped the TCP connection without ...")'
        self.assertIn("dropped", outage.why_closed(1006, dropped))


class OutageLogTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.log = outage.OutageLog(self.clock)
        self.captured = Captured(self)

    def test_first_then_once_a_minute_then_recovery(self) -> None:
        """Warn at once, stay quiet for a minute, warn with the count, info when back."""
        self.log.failed("connection refused", 1.5)
        self.assertEqual(
            self.captured.lines(LogLevel.warn),
            ["backend link down: connection refused; next attempt in 1.5 s"],
        )
        for _ in range(10):
            self.clock.advance(5)
            self.log.failed("connection refused", 5.0)
        self.assertEqual(len(self.captured.lines(LogLevel.warn)), 1)
        self.clock.advance(15)  # 65 s after the first line
        self.log.failed("TLS: nope", 30.0)
        self.assertEqual(
            self.captured.lines(LogLevel.warn)[1],
            "backend link still down (12 failures in 65 s): TLS: nope; next attempt in 30.0 s",
        )
        self.clock.advance(10)
        self.log.recovered()
        self.assertEqual(
            self.captured.lines(LogLevel.info), ["backend link up again after 75 s (12 failures)"]
        )
        self.log.recovered()  # not down: nothing more
        self.log.failed("connection refused", 1.0)  # a new outage starts with a warning
        self.assertEqual(len(self.captured.lines(LogLevel.warn)), 3)


class LinkOutageTests(unittest.TestCase):
    """BackendLink feeds the outage log from its endpoint, its protocol and its retry policy."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        path = os.path.join(self.mktemp(), "journal.db")
        os.makedirs(os.path.dirname(path))
        self.link = BackendLink(
            reactor=self.clock,
            backend_url="wss://backend.test:8081/ws/agent",
            agent_id="gw-1",
            site="test",
            hostname="host",
            catalog=None,
            journal=Journal(path, clock=self.clock),
            tls_options=None,
            reconnect_initial=2.0,
            reconnect_max=2.0,
        )
        self.addCleanup(self.link.journal.close)
        self.captured = Captured(self)

    def test_connect_failure_logged_with_delay(self) -> None:
        """A refused connection is logged with the address and the next delay."""

        class Refusing:
            def connect(self, factory: Any) -> Any:
                return fail(error.ConnectionRefusedError())

        endpoint = ReportingEndpoint(Refusing(), self.link._connect_failed)
        self.failureResultOf(endpoint.connect(None), error.ConnectionRefusedError)
        self.assertEqual(self.link._retry_delay(1), 2.0)
        [line] = self.captured.lines(LogLevel.warn)
        self.assertEqual(
            line,
            "backend link down: connection to backend.test:8081 refused (is the backend"
            " running and listening there?); next attempt in 2.0 s",
        )

    def test_close_logged_and_no_scheduling_noise(self) -> None:
        """A close code is the reason given; Twisted's "Scheduling retry" line is gone."""
        self.link.connection_closed(object(), protocol.CLOSE_SHUTDOWN, "shutdown; retry-after=3.0")
        self.assertEqual(self.link._retry_delay(1), 3.0)
        [line] = self.captured.lines(LogLevel.warn)
        self.assertIn("code 4003 (backend shutting down: shutdown; retry-after=3.0)", line)
        self.assertIn("next attempt in 3.0 s", line)
        self.link.client_service._log.info("Scheduling retry {attempt}", attempt=1)
        self.assertEqual([e for e in self.captured.events if "Scheduling" in formatEvent(e)], [])
