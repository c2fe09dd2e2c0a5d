"""Failed API authentications: a rate limit per source address, audited in aggregate.

Anybody who can reach the API can send requests without a valid token, and each
refusal used to be one audit record (1,000 POSTs wrote 1,000 records in seconds).
Here every failed authentication takes a token from its source's bucket
(``[api] auth_failure_rate`` per second, ``auth_failure_burst`` at once); past it
the answer is 429 with Retry-After instead of 401. A valid token is never refused
because its address failed before: operators behind one NAT or nginx address keep
working while somebody else there hammers the API.

Refusals are audited in aggregate: one ``api.refused`` record per source and
interval (``auth_failure_audit_interval`` seconds from the source's first refusal)
with the count, how many were rate-limited, the first and last path and the names
of revoked or expired tokens seen; written when the interval ends, and at shutdown.

Memory is bounded: at most ``auth_failure_sources`` sources are tracked. A source
whose bucket is full again and has nothing left to audit is the same as one never
seen, so the least recently seen one is dropped for a newcomer; when that one is
still active, newcomers share one overflow entry (source ``*``) with one bucket,
so an attack from many addresses is throttled as a whole and evicts nobody. IPv6
sources count per /64: one host commonly holds a whole /64.

The source is the TCP peer. Only when the peer is one of ``[backend]
trusted_proxies`` is ``X-Forwarded-For`` believed: its rightmost address that is
not a trusted proxy is the client (a client can prepend anything; our proxies
append the address they saw).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from viworks.backend import audit
from viworks.backend.identity import in_networks
from viworks.logs import Logger
from viworks.ratelimit import TokenBucket
from viworks.timeutil import rfc3339

OVERFLOW = "*"
ACTION = "api.refused"
# Paths are attacker input: kept short in the audit record.
MAX_PATH = 200
# Revoked or expired token names listed per source and interval.
MAX_TOKEN_NAMES = 10


def source_key(host: str) -> str:
    """The address failures are counted under: IPv4 as is, IPv6 per /64."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network((address, 64), strict=False))
    return str(address)


def request_source(request: Any, trusted_proxies: Iterable[Any]) -> str:
    """Where ``request`` comes from (``source_key``), trusting only our proxies' headers."""
    host = getattr(request.getClientAddress(), "host", None)
    if host is None:
        return "local"  # a UNIX socket
    trusted = list(trusted_proxies)
    if trusted and in_networks(host, trusted):
        lines = request.requestHeaders.getRawHeaders(b"x-forwarded-for") or []
        hops = [hop.strip() for line in lines for hop in line.decode("latin-1").split(",")]
        for hop in reversed(hops):
            if not in_networks(hop, trusted):
                # Appended by a trusted proxy, so an address; anything else: the peer.
                if _is_address(hop):
                    host = hop
                break
    return source_key(host)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class _Source:
    """One source's bucket and what it has not yet had audited."""

    __slots__ = (
        "bucket",
        "count",
        "limited",
        "first_at",
        "last_at",
        "first_path",
        "last_path",
        "names",
    )

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.limited = 0
        self.first_at = self.last_at = 0.0
        self.first_path = self.last_path = ""
        self.names: list[str] = []


class AuthFailures:
    """Counts failed authentications per source; answers whether to rate-limit them."""

    log = Logger()

    def __init__(
        self,
        audit_log: audit.AuditLog,
        clock: IReactorTime,
        *,
        rate: float = 1.0,
        burst: int = 20,
        max_sources: int = 4096,
        interval: float = 60.0,
    ) -> None:
        self.audit = audit_log
        self.clock = clock
        self.rate, self.burst = rate, burst
        self.max_sources = max_sources
        self.interval = interval
        # Least recently seen first.
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._timer: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._sources)

    def refuse(self, source: str, path: str, token_name: str | None = None) -> float | None:
        """Count a failed authentication; None to answer 401, else seconds to wait (429)."""
        entry = self._entry(source)
        now = self.clock.seconds()
        path = path[:MAX_PATH]
        if not entry.count:
            entry.first_at, entry.first_path = now, path
        entry.count += 1
        entry.last_at, entry.last_path = now, path
        if (
            token_name is not None
            and token_name not in entry.names
            and len(entry.names) < MAX_TOKEN_NAMES
        ):
            entry.names.append(token_name)
        if self._timer is None:
            self._timer = self.clock.callLater(self.interval, self._interval_over)
        if entry.bucket.take():
            return None
        entry.limited += 1
        return entry.bucket.wait_time()

    def _entry(self, source: str) -> _Source:
        entry = self._sources.get(source)
        if entry is not None:
            self._sources.move_to_end(source)
            return entry
        if len(self._sources) >= self.max_sources:
            oldest_source, oldest = next(iter(self._sources.items()))
            if oldest.count or not oldest.bucket.idle():
                # Every tracked source is still active: newcomers share one entry.
                return self._overflow()
            del self._sources[oldest_source]
        entry = self._sources[source] = _Source(TokenBucket(self.rate, self.burst, self.clock))
        return entry

    def _overflow(self) -> _Source:
        entry = self._sources.get(OVERFLOW)
        if entry is None:
            # The one entry allowed beyond max_sources.
            entry = self._sources[OVERFLOW] = _Source(
                TokenBucket(self.rate, self.burst, self.clock)
            )
        return entry

    def _interval_over(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> Deferred:
        """Write one ``api.refused`` record per source with refusals; forget idle sources."""
        writes = []
        for source, entry in list(self._sources.items()):
            if entry.count:
                writes.append(self._record(source, entry))
                entry.reset()
            elif entry.bucket.idle():
                del self._sources[source]
        return gatherResults(writes)

    def _record(self, source: str, entry: _Source) -> Deferred:
        if entry.limited:
            self.log.warn(
                "API: {count} failed authentications from {source} ({limited} rate-limited)",
                count=entry.count,
                source=source,
                limited=entry.limited,
            )
        return self.audit.record_later(
            "anonymous",
            ACTION,
            source,
            audit.REFUSED,
            {
                "source": source,
                "count": entry.count,
                "limited": entry.limited,
                "interval": self.interval,
                "first_at": rfc3339(entry.first_at),
                "last_at": rfc3339(entry.last_at),
                "first_path": entry.first_path,
                "last_path": entry.last_path,
                # Revoked or expired tokens used ("token" keys are redacted).
                "actors": list(entry.names),
            },
        )

    async def stop(self) -> None:
        """Shutdown: write what is pending now instead of at the end of the interval."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        await self.flush()
