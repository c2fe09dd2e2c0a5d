"""The transport's limit, measured in the same run: a bare Autobahn mTLS WebSocket echo
(``bench.echo``) and a bare twisted.web HTTP endpoint, driven from this process."""

from __future__ import annotations

import time
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

from bench.common import (
    client_tls,
    cpu_seconds,
    http_connect,
    rss_bytes,
    sleep,
    summary_ms,
    until,
)


class EchoClient(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.factory.opened.append(self)
        self.waiter: defer.Deferred | None = None
        self.on_echo = None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.on_echo is not None:
            self.on_echo(payload)
        elif self.waiter is not None:
            d, self.waiter = self.waiter, None
            d.callback(payload)

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        self.factory.closed += 1

    def echo(self, payload: bytes) -> defer.Deferred:
        self.waiter = defer.Deferred()
        self.sendMessage(payload)
        return self.waiter


def client_factory(reactor: Any, port: int, heartbeat: float) -> WebSocketClientFactory:
    factory = WebSocketClientFactory(f"wss://localhost:{port}/ws/agent", reactor=reactor)
    factory.protocol = EchoClient
    factory.opened = []
    factory.closed = 0
    factory.setProtocolOptions(
        maxMessagePayloadSize=1 << 20,
        maxFramePayloadSize=1 << 20,
        autoPingInterval=heartbeat,
        autoPingTimeout=heartbeat,
        openHandshakeTimeout=10,
        closeHandshakeTimeout=2,
    )
    return factory


def connect(reactor: Any, factory: Any, tls: Any, port: int) -> defer.Deferred:
    endpoint = wrapClientTLS(tls, HostnameEndpoint(reactor, "localhost", port, timeout=10))
    return endpoint.connect(factory)


async def ws_round_trips(reactor: Any, client: EchoClient, payload: bytes, n: int) -> dict:
    for _ in range(min(100, n)):
        await client.echo(payload)
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        await client.echo(payload)
        samples.append(time.perf_counter() - t)
    return summary_ms(samples)


async def ws_messages_per_second(
    reactor: Any, client: EchoClient, payload: bytes, seconds: float, window: int = 100
) -> float:
    """Echoes per second on one connection with ``window`` messages in flight."""
    count = 0
    done = defer.Deferred()
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()

    def on_echo(_payload: bytes) -> None:
        nonlocal count
        count += 1
        if time.perf_counter() < deadline:
            client.sendMessage(payload)
        elif not done.called:
            done.callback(None)

    client.on_echo = on_echo
    for _ in range(window):
        client.sendMessage(payload)
    await done
    elapsed = time.perf_counter() - started
    # Let the rest of the window drain before the connection is used again.
    await sleep(reactor, 0.3)
    client.on_echo = None
    return count / elapsed


async def http_round_trips(reactor: Any, port: int, n: int) -> dict:
    conn = await http_connect(reactor, port)
    body = {"verb": "ping", "args": {}}
    for _ in range(min(100, n)):
        await conn.request("POST", "/x", body)
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        await conn.request("POST", "/x", body)
        samples.append(time.perf_counter() - t)
    conn.transport.loseConnection()
    return summary_ms(samples)


async def http_requests_per_second(reactor: Any, port: int, conns: int, seconds: float) -> float:
    connections = [await http_connect(reactor, port) for _ in range(conns)]
    count = 0
    deadline = time.perf_counter() + seconds
    body = {"verb": "ping", "args": {}}

    async def loop(conn: Any) -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await conn.request("POST", "/x", body)
            count += 1

    started = time.perf_counter()
    await defer.gatherResults([defer.Deferred.fromCoroutine(loop(c)) for c in connections])
    elapsed = time.perf_counter() - started
    for c in connections:
        c.transport.loseConnection()
    return count / elapsed


async def handshakes(
    reactor: Any, server_pid: int, port: int, pki_dir: str, ids: list[str], heartbeat: float,
    idle_seconds: float, timeout: float,
) -> dict:  # fmt: skip
    """Connect ``len(ids)`` clients at once; handshakes/s, server CPU and RSS per connection."""
    tls = [client_tls(pki_dir, agent_id) for agent_id in ids]
    factory = client_factory(reactor, port, heartbeat)
    rss0 = rss_bytes(server_pid)
    cpu0 = cpu_seconds(server_pid)
    started = time.perf_counter()
    for options in tls:
        d = connect(reactor, factory, options, port)
        d.addErrback(lambda _f: None)
    ok = await until(reactor, lambda: len(factory.opened) >= len(ids), timeout, step=0.01)
    elapsed = time.perf_counter() - started
    cpu1 = cpu_seconds(server_pid)
    opened = len(factory.opened)
    await sleep(reactor, 1.0)
    rss1 = rss_bytes(server_pid)
    cpu2 = cpu_seconds(server_pid)
    await sleep(reactor, idle_seconds)
    cpu3 = cpu_seconds(server_pid)
    for proto in factory.opened:
        proto.sendClose()
    await until(reactor, lambda: factory.closed >= opened, 15.0, step=0.05)
    return {
        "connections": len(ids),
        "opened": opened,
        "all_opened": ok,
        "seconds": elapsed,
        "handshakes_per_s": opened / elapsed if elapsed else None,
        "server_cpu_s": cpu1 - cpu0,
        "server_rss_before": rss0,
        "server_rss_after": rss1,
        "rss_per_connection": (rss1 - rss0) / max(1, opened),
        "idle_cpu_s": cpu3 - cpu2,
        "idle_seconds": idle_seconds,
    }


async def run(
    reactor: Any, echo: Any, pki_dir: str, ids: list[str], payload: bytes, cfg: dict
) -> dict:
    """All baseline figures against the running ``echo`` server process."""
    hb = cfg["heartbeat"]
    out: dict[str, Any] = {"echo_process_rss_idle": rss_bytes(echo.pid)}
    factory = client_factory(reactor, echo.ws_port, hb)
    client = await connect(reactor, factory, client_tls(pki_dir, ids[0]), echo.ws_port)
    await until(reactor, lambda: factory.opened, 10.0)
    out["payload_bytes"] = len(payload)
    out["ws_rtt_ms"] = await ws_round_trips(reactor, client, payload, cfg["rtt_samples"])
    out["ws_messages_per_s"] = await ws_messages_per_second(
        reactor, client, payload, cfg["msg_seconds"]
    )
    client.sendClose()
    out["http_rtt_ms"] = await http_round_trips(reactor, echo.http_port, cfg["rtt_samples"])
    out["http_requests_per_s"] = await http_requests_per_second(
        reactor, echo.http_port, cfg["http_conns"], cfg["msg_seconds"]
    )
    out["http_conns"] = cfg["http_conns"]
    await sleep(reactor, 0.5)
    out["handshake"] = await handshakes(
        reactor, echo.pid, echo.ws_port, pki_dir, ids, hb, cfg["echo_idle_seconds"],
        cfg["storm_timeout"],
    )  # fmt: skip
    return out
