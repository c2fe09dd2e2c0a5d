"""Shared pieces of the benchmark harness: statistics, /proc readers, a tiny HTTP/1.1
keep-alive client for the reactor, the throw-away PKI and machine/version facts.

Everything here is bounded: every wait has a deadline and every loop a count.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- statistics ------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(p / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def summary_ms(seconds: list[float]) -> dict[str, Any]:
    ms = [s * 1000.0 for s in seconds]
    return {
        "n": len(ms),
        "p50": percentile(ms, 50),
        "p95": percentile(ms, 95),
        "p99": percentile(ms, 99),
        "max": max(ms) if ms else None,
    }


# -- processes ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (its own threads, not waited-for children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def raise_nofile(wanted: int = 1 << 20) -> tuple[int, int]:
    """Raise RLIMIT_NOFILE as far as allowed (children inherit it); return (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open") as f:
            wanted = min(wanted, int(f.read()))
    except OSError:
        pass
    for target in (wanted, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(target, soft), max(target, hard)))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sleep(reactor: Any, seconds: float) -> defer.Deferred:
    d: defer.Deferred = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


async def until(reactor: Any, predicate: Any, timeout: float, step: float = 0.05) -> bool:
    """Poll ``predicate`` (sync, or async returning a value) until truthy or ``timeout``."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / step) + 2):
        value = predicate()
        if isinstance(value, defer.Deferred) or hasattr(value, "__await__"):
            value = await value
        if value:
            return True
        if time.monotonic() >= deadline:
            return False
        await sleep(reactor, step)
    return False


# -- a minimal HTTP/1.1 keep-alive client --------------------------------------------------


class HttpConnection(Protocol):
    """One keep-alive connection, one request at a time (Content-Length or chunked)."""

    def __init__(self) -> None:
        self._buf = b""
        self._waiting: defer.Deferred | None = None
        self.closed = False

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        if self._waiting is not None:
            d, self._waiting = self._waiting, None
            d.errback(ConnectionError("connection lost"))

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> defer.Deferred:
        """Deferred of ``(status, parsed JSON body or None)``."""
        if self._waiting is not None:
            raise RuntimeError("one request at a time")
        data = b"" if body is None else json.dumps(body).encode()
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(data)}"]
        if body is not None:
            lines.append("Content-Type: application/json")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self._waiting = defer.Deferred()
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        return self._waiting

    def dataReceived(self, data: bytes) -> None:
        self._buf += data
        self._parse()

    def _parse(self) -> None:
        head_end = self._buf.find(b"\r\n\r\n")
        if head_end < 0 or self._waiting is None:
            return
        head = self._buf[:head_end].decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        headers = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        rest = self._buf[head_end + 4 :]
        if "content-length" in headers:
            n = int(headers["content-length"])
            if len(rest) < n:
                return
            body, self._buf = rest[:n], rest[n:]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts, pos = [], 0
            while True:
                eol = rest.find(b"\r\n", pos)
                if eol < 0:
                    return
                size = int(rest[pos:eol].split(b";")[0], 16)
                if len(rest) < eol + 2 + size + 2:
                    return
                parts.append(rest[eol + 2 : eol + 2 + size])
                pos = eol + 2 + size + 2
                if size == 0:
                    break
            body, self._buf = b"".join(parts), rest[pos:]
        else:
            body, self._buf = rest, b""
        d, self._waiting = self._waiting, None
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = body
        d.callback((status, parsed))


async def http_connect(reactor: Any, port: int) -> HttpConnection:
    conn = HttpConnection()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10), conn)
    return conn


# -- PKI ---------------------------------------------------------------------------------


def make_pki(directory: str) -> None:
    from viworks import pki

    pki.init_ca(directory, common_name="viworks bench CA")
    pki.issue_server(directory, "localhost", ["127.0.0.1"])


def issue_agents(directory: str, ids: list[str]) -> float:
    """Issue the agents' certificates (once each); returns the seconds it took."""
    from viworks import pki

    started = time.monotonic()
    for agent_id in ids:
        if not os.path.exists(os.path.join(directory, "agents", f"{agent_id}.crt")):
            pki.issue_agent(directory, agent_id)
    return time.monotonic() - started


def client_tls(directory: str, agent_id: str) -> Any:
    from viworks.tls import client_tls_options

    return client_tls_options(
        "localhost",
        os.path.join(directory, "agents", f"{agent_id}.crt"),
        os.path.join(directory, "agents", f"{agent_id}.key"),
        os.path.join(directory, "ca.crt"),
    )


# -- machine and versions ----------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_bytes": mem,
        "kernel": platform.release(),
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "somaxconn": _read_int("/proc/sys/net/core/somaxconn"),
    }


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def versions() -> dict[str, Any]:
    import autobahn
    import OpenSSL

    import twisted
    import viworks

    commit = None
    dirty = None
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no", "viworks"],
                cwd=ROOT, capture_output=True, text=True, timeout=10,
            ).stdout.strip()
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "python": sys.version.split()[0],
        "twisted": twisted.__version__,
        "autobahn": autobahn.__version__,
        "pyopenssl": OpenSSL.__version__,
        "openssl": OpenSSL.SSL.OpenSSL_version(OpenSSL.SSL.OPENSSL_VERSION).decode(),
        "viworks": viworks.__version__,
        "viworks_commit": commit,
        "viworks_dirty": dirty,
    }
