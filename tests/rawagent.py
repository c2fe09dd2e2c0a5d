"""A raw agent for hostile tests: one agent's real certificate, frames of the test's choosing.

It is the attacker of issue 12: mutual TLS and the WebSocket upgrade are genuine (the
backend cannot tell it from a gateway), then it sends whatever frames a test writes,
with none of the product link's checks, and records what the backend answers.
"""

from __future__ import annotations

import os
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

from tests.stack import eventually
from viworks import protocol
from viworks.tls import client_tls_options


class RawAgent(WebSocketClientProtocol):
    """The client end: sends frames as told, records the frames and the close it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[protocol.Frame] = []
        self.closed: tuple[int | None, str | None] | None = None
        self.opened: Deferred = Deferred()

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.frames.append(protocol.decode(payload, isBinary))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed = (code, reason)
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"refused: {code} {reason}"))

    def send(self, frame_type: str, **fields: Any) -> None:
        self.sendMessage(protocol.encode(frame_type, **fields))

    def hello(self, agent_id: str, verbs: dict, **fields: Any) -> None:
        """A HELLO as a gateway sends it, any field replaced by ``fields``."""
        hello = {
            "agent_id": agent_id,
            "version": "0.1.0",
            "site": "test",
            "hostname": agent_id,
            "protocol": protocol.PROTOCOL_VERSION,
            "verbs": verbs,
            "labels": {},
            **fields,
        }
        self.send("hello", **hello)

    def of_type(self, frame_type: str) -> list[protocol.Frame]:
        return [f for f in self.frames if f.type == frame_type]

    async def until(self, predicate: Any, timeout: float = 15.0) -> None:
        await eventually(predicate, timeout=timeout, step=0.02)

    def close(self) -> Deferred:
        """Close (if still open); fires once closed."""
        return Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        if self.closed is None:
            self.sendClose(1000)
            await self.until(lambda: self.closed is not None)


async def connect(reactor: Any, port: int, ca_dir: str, agent_id: str) -> RawAgent:
    """A WebSocket to ``wss://localhost:port/ws/agent`` holding ``agent_id``'s certificate
    from the ``viworks pki`` directory ``ca_dir``; fires once it is open."""
    agents = os.path.join(ca_dir, "agents")
    tls = client_tls_options(
        "localhost",
        os.path.join(agents, f"{agent_id}.crt"),
        os.path.join(agents, f"{agent_id}.key"),
        os.path.join(ca_dir, "ca.crt"),
    )
    factory = WebSocketClientFactory(f"wss://localhost:{port}/ws/agent", reactor=reactor)
    factory.protocol = RawAgent
    # No pings: a test that stops reading must not be dropped by its own client.
    factory.setProtocolOptions(autoPingInterval=0, openHandshakeTimeout=10)
    endpoint = wrapClientTLS(tls, HostnameEndpoint(reactor, "127.0.0.1", port, timeout=10))
    agent = await endpoint.connect(factory)
    return await agent.opened
