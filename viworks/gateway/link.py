"""The gateway's one outbound link to the backend.

``BackendLink`` keeps a mutual-TLS WebSocket open with ``ClientService``
(reconnecting forever with jittered exponential backoff), says HELLO after every
connect, runs the commands it receives through the ``VerbCatalog`` and sends the
results back. Results finished while the link is down wait in an outbox and go
out, in order, after the next welcome.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.application.internet import ClientService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from viworks import __version__, protocol
from viworks.config import parse_wss_url
from viworks.logs import Logger
from viworks.tls import enforce_pins

FINISHED_MEMORY = 1000


def jittered_backoff(
    initial: float, maximum: float, rand: Callable[[], float] = random.random
) -> Callable[[int], float]:
    """A ``ClientService`` retry policy: a random delay in [initial, initial * 2**n] capped at
    ``maximum``, so a fleet that lost its backend does not come back in lock-step."""

    def policy(failed_attempts: int) -> float:
        ceiling = min(maximum, initial * 2 ** min(failed_attempts, 32))
        return initial + rand() * (ceiling - initial)

    return policy


@implementer(IHandshakeListener)
class AgentLinkProtocol(WebSocketClientProtocol):
    """The agent's end of one connection; all state lives in the ``BackendLink``."""

    log = Logger()

    def handshakeCompleted(self) -> None:
        # Chain and hostname were verified by TLS; the pin check comes on top.
        if not enforce_pins(self.transport, self.factory.link.pins):
            self.log.error("backend key does not match backend_spki_pins: connection aborted")

    def onOpen(self) -> None:
        self.factory.link.connection_opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.link.frame_received(self, payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.link.connection_closed(self, code, reason)

    def send_frame(self, payload: bytes) -> None:
        self.sendMessage(payload, isBinary=False)


class BackendLink(MultiService):
    """Connect, introduce ourselves, execute commands, report results."""

    log = Logger()

    def __init__(
        self,
        *,
        reactor: Any,
        backend_url: str,
        agent_id: str,
        site: str,
        hostname: str,
        catalog: Any,
        tls_options: Any,
        pins: list[str] = (),
        labels: dict | None = None,
        heartbeat_interval: float = 15.0,
        reconnect_initial: float = 1.0,
        reconnect_max: float = 60.0,
        max_message_size: int = 1 << 20,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.agent_id = agent_id
        self.site = site
        self.hostname = hostname
        self.labels = labels or {}
        self.catalog = catalog
        self.pins = list(pins)
        self.heartbeat_interval = heartbeat_interval
        self.session_id: str | None = None
        self._current: AgentLinkProtocol | None = None
        self._outbox: deque[bytes] = deque()
        self._running: dict[str, Any] = {}  # command id -> VerbExecution
        # Results of recently finished commands, so a redelivery (the ack was
        # lost with the link) is answered without running the verb again.
        self._finished: OrderedDict[str, bytes] = OrderedDict()
        self._heartbeat = LoopingCall(self._send_heartbeat)
        self._heartbeat.clock = reactor

        host, port, _path = parse_wss_url(backend_url)
        factory = WebSocketClientFactory(backend_url, reactor=reactor)
        factory.protocol = AgentLinkProtocol
        factory.link = self
        factory.setProtocolOptions(
            maxMessagePayloadSize=max_message_size,
            maxFramePayloadSize=max_message_size,
            autoPingInterval=heartbeat_interval,
            autoPingTimeout=heartbeat_interval,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=2,
        )
        endpoint = wrapClientTLS(tls_options, HostnameEndpoint(reactor, host, port, timeout=10))
        self.client_service = ClientService(
            endpoint,
            factory,
            retryPolicy=jittered_backoff(reconnect_initial, reconnect_max),
            clock=reactor,
        )
        self.client_service.setServiceParent(self)

    @property
    def connected(self) -> bool:
        """True between the backend's welcome and the link going down."""
        return self.session_id is not None

    def stopService(self) -> Deferred:
        if self._heartbeat.running:
            self._heartbeat.stop()
        for execution in list(self._running.values()):
            execution.cancel()
        return super().stopService()

    # -- connection events ----------------------------------------------------------

    def connection_opened(self, proto: AgentLinkProtocol) -> None:
        self._current = proto
        proto.send_frame(
            protocol.encode(
                "hello",
                agent_id=self.agent_id,
                version=__version__,
                site=self.site,
                hostname=self.hostname,
                protocol=protocol.PROTOCOL_VERSION,
                labels=self.labels,
                verbs=self.catalog.describe(),
            )
        )

    def connection_closed(self, proto: AgentLinkProtocol, code: int | None, reason: Any) -> None:
        if proto is not self._current:
            return
        self.log.info("link to backend closed (code {code}, {reason})", code=code, reason=reason)
        self._current = None
        self.session_id = None
        if self._heartbeat.running:
            self._heartbeat.stop()

    def frame_received(self, proto: AgentLinkProtocol, payload: bytes, is_binary: bool) -> None:
        try:
            frame = protocol.decode(payload, is_binary)
        except protocol.FrameError as e:
            self.log.warn(
                "bad frame from backend: {code} {message}", code=e.code, message=e.message
            )
            proto.send_frame(protocol.error_frame(e.code, e.message, e.command_id))
            return
        if frame.type == "welcome":
            self._on_welcome(frame)
        elif frame.type == "command":
            self._on_command(proto, frame)
        elif frame.type == "error":
            self.log.warn(
                "backend reports {code}: {message}", code=frame["code"], message=frame["message"]
            )
        elif frame.type != "heartbeat":
            proto.send_frame(
                protocol.error_frame(protocol.INVALID_FRAME, f"agents do not accept {frame.type}")
            )

    def _on_welcome(self, frame: protocol.Frame) -> None:
        self.session_id = frame["session_id"]
        # The backend decides the heartbeat pace for its whole fleet.
        self.heartbeat_interval = frame["heartbeat_interval"]
        self.log.info("connected to backend, session {session_id}", session_id=self.session_id)
        while self._outbox and self._current is not None:
            self._current.send_frame(self._outbox.popleft())
        if self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat.start(self.heartbeat_interval, now=False)

    def _send_heartbeat(self) -> None:
        self._send(protocol.encode("heartbeat", ts=self.reactor.seconds()), spool=False)

    def _send(self, payload: bytes, spool: bool = True) -> None:
        if self._current is not None and self.connected:
            self._current.send_frame(payload)
        elif spool:
            self._outbox.append(payload)

    # -- commands -------------------------------------------------------------------

    def _on_command(self, proto: AgentLinkProtocol, frame: protocol.Frame) -> None:
        command_id = frame["command_id"]
        proto.send_frame(protocol.encode("ack", command_id=command_id))
        if command_id in self._running:
            # A redelivery of something we are already running: the ack was enough.
            return
        if command_id in self._finished:
            proto.send_frame(self._finished[command_id])
            return
        started_at = self.reactor.seconds()
        self.log.info(
            "command {command_id}: {verb} started", command_id=command_id, verb=frame["verb"]
        )
        execution = self.catalog.start(frame["verb"], frame["args"], frame["timeout"])
        self._running[command_id] = execution
        d = execution.outcome
        d.addCallback(self._report, command_id, started_at)
        d.addErrback(
            lambda f: self.log.failure("command {command_id} failed", f, command_id=command_id)
        )
        d.addBoth(lambda _: self._running.pop(command_id, None))

    def _report(self, outcome: Any, command_id: str, started_at: float) -> None:
        self.log.info(
            "command {command_id} finished: {status}", command_id=command_id, status=outcome.status
        )
        payload = protocol.encode(
            "result",
            command_id=command_id,
            status=outcome.status,
            exit_code=outcome.exit_code,
            result=outcome.result,
            stdout=outcome.stdout,
            stderr=outcome.stderr,
            stdout_truncated=outcome.stdout_truncated,
            stderr_truncated=outcome.stderr_truncated,
            error=outcome.error,
            started_at=started_at,
            finished_at=self.reactor.seconds(),
        )
        self._finished[command_id] = payload
        while len(self._finished) > FINISHED_MEMORY:
            self._finished.popitem(last=False)
        self._send(payload)
