"""A rogue agent for hostile tests: a bare mutual-TLS WebSocket client holding one agent's
real certificate, sending exactly the frames a test tells it to (none of the product's
link rules: no caps, no journal, no pacing).
"""

from __future__ import annotations

import json
import os
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

from tests.stack import eventually
from viworks import protocol
from viworks.tls import client_tls_options

PING = {"ping": {"params": {}, "description": "liveness", "changes_state": False}}


class RogueAgent(WebSocketClientProtocol):
    """Records every frame the backend sends (as JSON objects) and how it closed."""

    factory: WebSocketClientFactory

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[dict] = []
        self.closed: tuple[int | None, str | None] | None = None

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.frames.append(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed = (code, reason)

    def send(self, frame_type: str, **fields: Any) -> None:
        self.sendMessage(protocol.encode(frame_type, **fields))

    def hello(self, agent_id: str, verbs: dict = PING) -> None:
        self.send(
            "hello",
            agent_id=agent_id,
            version="6.6.6",
            site="test",
            hostname="rogue",
            protocol=protocol.PROTOCOL_VERSION,
            verbs=verbs,
        )

    def of_type(self, frame_type: str) -> list[dict]:
        return [f for f in self.frames if f.get("type") == frame_type]

    def error_codes(self) -> list[str]:
        return [f["code"] for f in self.of_type("error")]

    async def frame(self, frame_type: str, count: int = 1, timeout: float = 15.0) -> list[dict]:
        """The first ``count`` frames of that type, waiting for them (bounded)."""
        await eventually(lambda: len(self.of_type(frame_type)) >= count, timeout)
        return self.of_type(frame_type)[:count]


async def connect_rogue(reactor: Any, port: int, pki_dir: str, agent_id: str) -> RogueAgent:
    """Connect to the backend's agent listener with ``agent_id``'s certificate and key
    from a ``viworks pki`` directory, say HELLO and wait for the welcome."""
    factory = WebSocketClientFactory(f"wss://localhost:{port}/ws/agent", reactor=reactor)
    factory.protocol = RogueAgent
    factory.opened = Deferred()
    factory.setProtocolOptions(
        maxMessagePayloadSize=0, maxFramePayloadSize=0, autoPingInterval=0, openHandshakeTimeout=10
    )
    tls = client_tls_options(
        "localhost",
        os.path.join(pki_dir, "agents", f"{agent_id}.crt"),
        os.path.join(pki_dir, "agents", f"{agent_id}.key"),
        os.path.join(pki_dir, "ca.crt"),
    )
    endpoint = wrapClientTLS(tls, HostnameEndpoint(reactor, "localhost", port, timeout=10))
    await endpoint.connect(factory)
    rogue: RogueAgent = await factory.opened
    rogue.hello(agent_id)
    await rogue.frame("welcome")
    return rogue
