"""What one agent may send: frames per second (flood control) and telemetry reports.

Pure decisions over a clock; the session (``viworks.backend.sessions``) acts on them.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.interfaces import IReactorTime

from viworks import protocol
from viworks.ratelimit import TokenBucket

#: Drops are counted over this window; beyond the limit the agent is disconnected and
#: told to come back after FLOOD_RETRY_AFTER seconds.
FLOOD_WINDOW = 10.0
FLOOD_RETRY_AFTER = 60.0


class FrameBudget:
    """``rate`` frames/s from one agent in bursts of ``burst``. A frame beyond it is
    dropped; more than ``flood_limit`` drops within ``FLOOD_WINDOW`` s is a flood."""

    def __init__(self, rate: float, burst: float, flood_limit: int, clock: IReactorTime) -> None:
        self.flood_limit = flood_limit
        self.clock = clock
        self._bucket = TokenBucket(rate, burst, clock)
        self._drops: deque[float] = deque()

    def take(self) -> bool:
        """Take a frame from the budget; False when it is spent (drop the frame, and
        count the drop with ``dropped``)."""
        return self._bucket.take()

    def dropped(self) -> int:
        """Count a dropped frame; how many were dropped within the window."""
        now = self.clock.seconds()
        drops = self._drops
        drops.append(now)
        while drops and drops[0] <= now - FLOOD_WINDOW:
            drops.popleft()
        return len(drops)


def telemetry_refusal(
    frame: protocol.Frame, now: float, last: float | None, min_interval: float
) -> tuple[str, str, str] | None:
    """Why a telemetry report is not stored, as (metric reason, error code, message):
    too large, or sooner than ``min_interval`` after the last one stored (``last``)."""
    if frame.size > protocol.MAX_TELEMETRY_BYTES:
        return (
            "too_large",
            protocol.TOO_LARGE,
            f"telemetry reports are limited to {protocol.MAX_TELEMETRY_BYTES} bytes"
            f" (got {frame.size})",
        )
    if last is not None and now - last < min_interval:
        return (
            "too_often",
            protocol.RATE_LIMITED,
            f"telemetry is stored at most once every {min_interval:g} s",
        )
    return None
