"""Why the backend link is down, in words an operator can act on, logged without flooding.

The ``why_*`` functions are pure: they turn what Twisted, pyOpenSSL and Autobahn
report (a connect failure, a TLS error, a refused upgrade, a close code) into one
sentence. ``OutageLog`` writes the first failure at once and then at most one line
a minute while the link stays down, each with the delay before the next attempt,
and says when the link is back.
"""

from __future__ import annotations

import re
from typing import Any

from service_identity import VerificationError
from twisted.internet import error

from viworks import protocol
from viworks.files import one_line
from viworks.logs import Logger

#: Seconds between two "still down" lines while an outage lasts.
REPEAT_INTERVAL = 60.0

# TLS alerts the backend sends when it refuses OUR certificate.
_CERTIFICATE_ALERTS = (
    "unknown ca",
    "bad certificate",
    "certificate required",
    "certificate revoked",
    "certificate expired",
    "certificate unknown",
    "unsupported certificate",
)

_CLOSE_NAMES = {
    1000: "normal closure",
    1001: "going away",
    1002: "protocol error",
    1007: "invalid UTF-8",
    1008: "policy violation",
    1009: "message too big",
    1011: "internal error",
    protocol.CLOSE_POLICY: "policy",
    protocol.CLOSE_HELLO_REFUSED: "hello refused",
    protocol.CLOSE_REPLACED: "replaced",
    protocol.CLOSE_SHUTDOWN: "backend shutting down",
    protocol.CLOSE_FLOOD: "flood",
}

_UPGRADE_REFUSED = re.compile(r"upgrade failed \[(\d{3})\]: ([^\"]*)")
_DROPPED = "peer dropped the TCP connection"


def why_connect_failed(failure: Any, host: str, port: int) -> str:
    """A connection attempt that never reached the backend (no TCP connection)."""
    value = failure.value
    where = f"{host}:{port}"
    if isinstance(value, error.ConnectionRefusedError):
        return f"connection to {where} refused (is the backend running and listening there?)"
    if isinstance(value, error.DNSLookupError):
        return f"cannot resolve {host}"
    if isinstance(value, error.TimeoutError | error.TCPTimedOutError):
        return f"no answer from {where} (connection timed out)"
    return f"cannot connect to {where}: {one_line(value)}"


def why_tls_failed(value: Exception, host: str) -> str:
    """A TLS failure: an ``SSL.Error`` or service_identity's ``VerificationError``."""
    if isinstance(value, VerificationError):
        return f"TLS: the backend's certificate is not valid for {host} ({one_line(value)})"
    reasons = [
        str(item[2])
        for item in (value.args[0] if value.args and isinstance(value.args[0], list) else [])
        if isinstance(item, tuple) and len(item) == 3
    ]
    text = "; ".join(reasons) or one_line(value)
    if "certificate verify failed" in text:
        return (
            "TLS: we do not trust the backend's certificate: it is not issued by the CA in"
            f" [tls] ca, or has expired, or is not valid yet ({text})"
        )
    if any(alert in text for alert in _CERTIFICATE_ALERTS):
        return (
            "TLS: the backend refused our certificate: is [tls] cert issued by the backend's"
            f" client_ca, unexpired and not revoked? ({text})"
        )
    return f"TLS handshake failed ({text})"


def why_closed(code: int | None, reason: str | None) -> str:
    """A WebSocket that closed, or was refused at the upgrade (code 1006, unclean)."""
    reason = reason or ""
    refused = _UPGRADE_REFUSED.search(reason)
    if refused is not None:
        status, text = refused.groups()
        return f"the backend refused the WebSocket upgrade: HTTP {status} {text.strip()}"
    if code in (None, 1006):
        if _DROPPED in reason:
            return "the connection was dropped without a WebSocket close"
        return f"the connection was lost ({reason or 'no reason given'})"
    name = _CLOSE_NAMES.get(code, "")
    # Usually the backend's code; Autobahn's own (1002, 1007, 1009) when we closed.
    return f"the link was closed with code {code}" + (
        f" ({name}: {reason})" if name else f" ({reason})"
    )


class OutageLog:
    """Logs an outage of the link: the first failure, then at most once a minute, then the end.

    ``failed(why, delay)`` is called for every failure (a failed attempt, or the
    close of a live link), ``recovered()`` when the backend welcomes us again.
    """

    log = Logger()

    def __init__(self, clock: Any, repeat_interval: float = REPEAT_INTERVAL) -> None:
        self.clock = clock
        self.repeat_interval = repeat_interval
        self.attempts = 0  # failures since the link was last up
        self._since = 0.0
        self._logged_at = 0.0

    @property
    def down(self) -> bool:
        return self.attempts > 0

    def failed(self, why: str, delay: float) -> None:
        now = self.clock.seconds()
        self.attempts += 1
        if self.attempts == 1:
            self._since = self._logged_at = now
            self.log.warn(
                "backend link down: {why}; next attempt in {delay:.1f} s", why=why, delay=delay
            )
        elif now - self._logged_at >= self.repeat_interval:
            self._logged_at = now
            self.log.warn(
                "backend link still down ({failures} failures in {elapsed:.0f} s): {why};"
                " next attempt in {delay:.1f} s",
                failures=self.attempts,
                elapsed=now - self._since,
                why=why,
                delay=delay,
            )
        else:
            self.log.debug(
                "backend link failure {failures}: {why}; next attempt in {delay:.1f} s",
                failures=self.attempts,
                why=why,
                delay=delay,
            )

    def recovered(self) -> None:
        if not self.down:
            return
        self.log.info(
            "backend link up again after {elapsed:.0f} s ({failures} failures)",
            failures=self.attempts,
            elapsed=self.clock.seconds() - self._since,
        )
        self.attempts = 0
