"""A token bucket (pure, clock-injected): admission of agent sessions, later API limits."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``."""

    def __init__(self, rate: float, burst: float, clock: IReactorTime) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._tokens = burst
        self._stamp = clock.seconds()

    def _refill(self) -> None:
        now = self.clock.seconds()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def take(self) -> bool:
        """Spend one token if there is one."""
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def idle(self) -> bool:
        """True when the bucket is full: the same as a bucket never used."""
        self._refill()
        return self._tokens >= self.burst

    def available(self) -> float:
        """Tokens in the bucket now."""
        self._refill()
        return self._tokens

    def wait_time(self) -> float:
        """Seconds until the next token."""
        self._refill()
        return max(0.0, (1 - self._tokens) / self.rate)
