"""Agent sessions: the backend's end of each agent's WebSocket.

The TLS listener already refused clients without a certificate from our CA;
``AgentSession`` takes the agent's identity from that certificate, insists on a
HELLO that names the same agent, registers the session (its ``WelcomedSession``,
replacing an older one) and then moves frames between the agent and the command
ledger. Nothing an agent sends can crash the process or touch another agent's session.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from viworks import protocol
from viworks.backend import audit
from viworks.backend.agentlimits import (
    FLOOD_RETRY_AFTER,
    FLOOD_WINDOW,
    FrameBudget,
    telemetry_refusal,
)
from viworks.backend.dispatcher import Dispatcher
from viworks.backend.events import EventHub
from viworks.backend.ledger import CommandLedger
from viworks.backend.metrics import Metrics
from viworks.backend.registry import SessionRegistry
from viworks.backend.revocation import peer_cert_not_after, peer_cert_serial
from viworks.backend.secrecy import SecretParams
from viworks.backend.store import Store
from viworks.backend.store.batch import StoreClosed
from viworks.backend.welcomed import WelcomedSession
from viworks.logs import Logger, ThrottledWarnings
from viworks.net import SkipPeerCertificateDetails, no_delay
from viworks.ratelimit import TokenBucket
from viworks.schema import SchemaError, validate_verbs

HELLO_TIMEOUT = 10.0


# Autobahn's adapter and protocol classes declare a few attributes differently.
class AgentSession(SkipPeerCertificateDetails, WebSocketServerProtocol):  # type: ignore[misc]
    """One agent's connection; ``live`` once its HELLO is accepted."""

    log = Logger()
    factory: AgentSessionFactory

    live: WelcomedSession | None = None
    # The agent id of the client certificate (onConnect refuses a connection without one).
    _identity: str | None = None
    _hello_timer: IDelayedCall | None = None
    _refused = False
    # Hex serial of the agent's certificate and the end of its validity (None when unknown).
    cert_serial: str | None = None
    cert_not_after: float | None = None
    _frames: FrameBudget | None = None
    _complaints: ThrottledWarnings | None = None
    # When this session's last telemetry report was stored.
    _telemetry_at: float | None = None

    @property
    def identity(self) -> str:
        """The agent id of the client certificate (onConnect refuses a connection
        without one, so nothing later runs without it)."""
        return self._identity or "anonymous"

    @property
    def session_id(self) -> str | None:
        return None if self.live is None else self.live.session_id

    # -- Autobahn callbacks -------------------------------------------------

    def connectionMade(self) -> None:
        no_delay(self.transport)
        super().connectionMade()

    def onConnect(self, request: Any) -> None:
        if request.path != self.factory.ws_path:
            raise ConnectionDeny(ConnectionDeny.NOT_FOUND, "no WebSocket endpoint here")
        # The HTTP upgrade arrives after the TLS handshake, so the verified
        # peer certificate is available here (not in connectionMade).
        factory = self.factory
        if not factory.admission.take():
            # Shed load before any per-agent work; the hint spreads the retries.
            hint = factory.retry_hint()
            factory.metrics.handshakes_refused.inc()
            factory.metrics.session_refused("busy")
            self.log.info(
                "admission: refused {peer}, retry after {hint:.1f} s", peer=self.peer, hint=hint
            )
            raise ConnectionDeny(
                ConnectionDeny.SERVICE_UNAVAILABLE, protocol.retry_after_reason("busy", hint)
            )
        # identify(transport, request): the mutual-TLS listener reads the certificate,
        # the proxied listener the headers of a trusted nginx (viworks.backend.identity).
        identity = factory.identify(self.transport, request)
        if identity is None:
            factory.metrics.session_refused("no_certificate")
            self.log.warn("refused {peer}: no client certificate identity", peer=self.peer)
            self._audit_refused("anonymous", self.peer, reason="no client certificate identity")
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "a client certificate is required")
        serial = factory.cert_serial(self.transport, request)
        if serial is not None and serial in factory.revoked_serials:
            factory.metrics.session_refused("revoked")
            self.log.warn(
                "refused agent {agent_id} from {peer}: certificate {serial} is revoked",
                agent_id=identity,
                peer=self.peer,
                serial=serial,
            )
            self._audit_refused(
                identity, f"agent:{identity}", reason="certificate revoked", serial=serial
            )
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "the client certificate is revoked")
        self._identity = identity
        self.cert_serial = serial
        if serial is not None:
            # Every certificate an agent id connects with, not only the one whose HELLO
            # wins: `pki revoke AGENT_ID` revokes them all (a stolen second certificate too).
            self._run(factory.store.record_certificate(identity, serial, factory.clock.seconds()))
        self.cert_not_after = factory.cert_not_after(self.transport, request)

    def onOpen(self) -> None:
        factory = self.factory
        self._hello_timer = factory.clock.callLater(factory.hello_timeout, self._no_hello)
        self._frames = FrameBudget(
            factory.frame_rate, factory.frame_burst, factory.flood_limit, factory.clock
        )
        self._complaints = ThrottledWarnings(
            self.log, factory.clock, f"agent {self._identity} from {self.peer}"
        )

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._refused:
            # Closing after a refusal: nothing more this peer sends counts.
            return
        try:
            frame = protocol.decode(payload, isBinary)
        except protocol.FrameError as e:
            if not self._within_rate():
                return
            self.complain(
                "bad frame from {agent_id}: {code} {message}",
                agent_id=self._identity,
                code=e.code,
                message=e.message,
            )
            self.send_frame(protocol.error_frame(e.code, e.message, e.command_id))
            return
        # The answers an agent owes on a command the backend sent (its ack, its result)
        # are never dropped: at most one of each per command dispatched, and dropping
        # one would leave its command hanging until the agent reconnects.
        if not self._owed_answer(frame) and not self._within_rate():
            return
        self.factory.metrics.frame_in(frame.type)
        live = self.live
        if live is None:
            self._on_first_frame(frame)
            return
        handler = self._handlers.get(frame.type)
        if handler is None:
            self.send_frame(
                protocol.error_frame(
                    protocol.INVALID_FRAME, f"agents do not send {frame.type} frames"
                )
            )
            return
        self._run(handler(self, live, frame))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._complaints is not None:
            self._complaints.flush()
        self._stop_hello_timer()
        live = self.live
        if live is None:
            return
        self.log.info(
            "agent {agent_id} disconnected (session {session_id}, code {code}, {reason})",
            agent_id=live.agent_id,
            session_id=live.session_id,
            code=code,
            reason=reason,
        )
        factory = self.factory
        if factory.registry.unregister(live):
            factory.hub.publish(
                "agent.offline", {"agent_id": live.agent_id, "code": code, "reason": reason}
            )
            self._run(
                factory.store.mark_agent_offline(
                    live.agent_id, live.session_id, factory.clock.seconds()
                )
            )

    # -- what the registry and the ledger call -------------------------------

    def complain(self, log_format: str, **fields: object) -> None:
        """A warning this agent caused, throttled (``ThrottledWarnings``)."""
        if self._complaints is None:
            self.log.warn(log_format, **fields)
        else:
            self._complaints.warn(log_format, **fields)

    def send_frame(self, payload: bytes) -> None:
        if self.state == self.STATE_OPEN:
            self.factory.metrics.frame_out(payload)
            self.sendMessage(payload, isBinary=False)

    def close_replaced(self) -> None:
        self.log.warn(
            "agent {agent_id}: session {session_id} replaced by a newer connection",
            agent_id=self._identity,
            session_id=self.session_id,
        )
        # "replaced" is the contract; the agent then waits at least reconnect_max.
        self.sendClose(protocol.CLOSE_REPLACED, "replaced")

    def close_going_away(self, retry_after: float) -> None:
        """The backend is stopping: ask the agent to reconnect after ``retry_after`` s."""
        self.sendClose(
            protocol.CLOSE_SHUTDOWN, protocol.retry_after_reason("shutdown", retry_after)
        )

    def abort(self) -> None:
        self.dropConnection(abort=True)

    def close_revoked(self) -> None:
        """Its certificate was revoked (RevocationWatcher): close now, audited."""
        if self._refused:
            return
        self._refused = True
        agent_id = self._identity
        self.log.warn(
            "agent {agent_id}: certificate {serial} revoked, closing session {session_id}",
            agent_id=agent_id,
            serial=self.cert_serial,
            session_id=self.session_id,
        )
        self.factory.audit.record_later(
            "system",
            "session.closed",
            f"agent:{agent_id}",
            audit.OK,
            {"reason": "certificate revoked", "serial": self.cert_serial},
        )
        self.sendClose(protocol.CLOSE_POLICY, "certificate revoked")

    # -- flood control --------------------------------------------------------

    def _within_rate(self) -> bool:
        """Take a frame from the agent's budget; False (frame dropped) when it is spent."""
        if self._frames is None or self._frames.take():
            return True
        self._throttle(self._frames.dropped())
        return False

    def _owed_answer(self, frame: protocol.Frame) -> bool:
        return (
            frame.type in ("ack", "result")
            and self.live is not None
            and self.factory.ledger.expects(frame.type, frame["command_id"], self.live.agent_id)
        )

    def _throttle(self, drops: int) -> None:
        """A frame beyond the agent's rate was dropped (``drops`` within the window):
        say so; disconnect an agent that keeps on."""
        factory = self.factory
        agent_id = self.identity
        if drops <= factory.flood_limit:
            self.send_frame(
                protocol.error_frame(
                    protocol.RATE_LIMITED,
                    f"more than {factory.frame_rate:g} frames/s: frame dropped",
                )
            )
            return
        self._refused = True
        self._stop_hello_timer()
        self.log.warn(
            "agent {agent_id} from {peer}: flood ({drops} frames dropped in {window:g} s),"
            " disconnected",
            agent_id=agent_id,
            peer=self.peer,
            drops=drops,
            window=FLOOD_WINDOW,
        )
        factory.metrics.session_refused("flood")
        self._audit_refused(
            agent_id,
            f"agent:{agent_id}",
            reason="flood",
            dropped=drops,
            window=FLOOD_WINDOW,
            frame_rate=factory.frame_rate,
        )
        self.sendClose(
            protocol.CLOSE_FLOOD, protocol.retry_after_reason("flood", FLOOD_RETRY_AFTER)
        )

    def _audit_refused(self, actor: str, target: str | None, **detail: object) -> None:
        """Audit a refused connection (``connection.refused``; the detail names the peer
        unless it is the target)."""
        if target != self.peer:
            detail["peer"] = self.peer
        self.factory.audit.record_later(actor, "connection.refused", target, audit.REFUSED, detail)

    # -- frames ---------------------------------------------------------------

    def _refuse(self, code: str, message: str, close_code: int) -> None:
        self.log.warn(
            "refused agent {identity} from {peer}: {code} {message}",
            identity=self._identity,
            agent_id=self._identity,
            peer=self.peer,
            code=code,
            message=message,
        )
        self.factory.metrics.session_refused(code)
        self._refused = True
        self._stop_hello_timer()
        self.send_frame(protocol.error_frame(code, message))
        self.sendClose(close_code, message[:100])

    def _stop_hello_timer(self) -> None:
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()

    def _no_hello(self) -> None:
        self._refuse(protocol.HELLO_REQUIRED, "no hello received in time", protocol.CLOSE_POLICY)

    def _on_first_frame(self, frame: protocol.Frame) -> None:
        if frame.type != "hello":
            self._refuse(
                protocol.HELLO_REQUIRED, "the first frame must be hello", protocol.CLOSE_POLICY
            )
            return
        if frame["agent_id"] != self._identity:
            self._audit_refused(
                self.identity,
                f"agent:{self.identity}",
                reason="identity mismatch",
                hello=frame["agent_id"],
            )
            self._refuse(
                protocol.IDENTITY_MISMATCH,
                f"hello names {frame['agent_id']!r} but the certificate is {self._identity!r}",
                protocol.CLOSE_HELLO_REFUSED,
            )
            return
        if self.cert_serial is not None and self.cert_serial in self.factory.revoked_serials:
            # Revoked between the upgrade and the HELLO.
            self._stop_hello_timer()
            self.close_revoked()
            return
        try:
            # Bounded cost: counts and name lengths are capped, patterns must run on RE2.
            validate_verbs(frame["verbs"])
        except SchemaError as e:
            self._audit_refused(
                self.identity,
                f"agent:{self.identity}",
                reason="invalid verb schema",
                verb=e.verb,
                param=e.param,
                message=str(e),
            )
            self._refuse(protocol.INVALID_FRAME, str(e), protocol.CLOSE_HELLO_REFUSED)
            return
        # Secret by this agent's word is secret for every agent, from now on.
        self.factory.secrets.learn(frame["verbs"])
        self._stop_hello_timer()
        live = self.live = WelcomedSession(self, self.identity, uuid.uuid4().hex, frame["protocol"])
        replaced = self.factory.registry.register(live)
        self.factory.metrics.session_opened(live.agent_id)
        if replaced is not None:
            live.replacing(replaced, self.factory.audit)
            replaced.close_replaced()
        self._run(self._welcome(live, frame))

    async def _welcome(self, live: WelcomedSession, hello: protocol.Frame) -> None:
        factory = self.factory
        labels = hello.get("labels")
        agent = await factory.store.upsert_agent_online(
            live.agent_id,
            version=hello["version"],
            site=hello["site"],
            hostname=hello["hostname"],
            protocol=hello["protocol"],
            verbs=hello["verbs"],
            peer=self.peer,
            session_id=live.session_id,
            labels=labels if isinstance(labels, dict) else {},
            # Older agents do not say: they verify nothing.
            signing="on" if hello.get("signing") == "on" else "off",
            cert_serial=self.cert_serial,
            cert_not_after=self.cert_not_after,
            now=factory.clock.seconds(),
        )
        if not factory.registry.is_current(live):
            return
        self.log.info(
            "agent {agent_id} online (session {session_id}, version {version}, site {site})",
            agent_id=live.agent_id,
            session_id=live.session_id,
            version=hello["version"],
            site=hello["site"],
        )
        factory.hub.publish(
            "agent.online",
            {"agent_id": live.agent_id, "session_id": live.session_id, "epoch": agent.epoch},
        )
        self.send_frame(
            protocol.encode(
                "welcome",
                session_id=live.session_id,
                epoch=agent.epoch,
                heartbeat_interval=factory.heartbeat_interval,
                heartbeat_timeout=2 * factory.heartbeat_interval,
                server_time=factory.clock.seconds(),
                protocol=protocol.HELLO_PROTOCOL,
            )
        )
        await factory.dispatcher.deliver_pending(live)

    # Frames of a welcomed session. Fencing: a replaced session's late frames change nothing.

    async def _on_heartbeat(self, live: WelcomedSession, frame: protocol.Frame) -> None:
        await self.factory.store.touch_agent(live.agent_id, self.factory.clock.seconds())

    async def _on_ack(self, live: WelcomedSession, frame: protocol.Frame) -> None:
        if self.factory.registry.is_current(live):
            await self.factory.ledger.on_ack(live, frame["command_id"])

    async def _on_output(self, live: WelcomedSession, frame: protocol.Frame) -> None:
        if self.factory.registry.is_current(live):
            await self.factory.ledger.on_output(live, frame.fields)

    async def _on_result(self, live: WelcomedSession, frame: protocol.Frame) -> None:
        if self.factory.registry.is_current(live):
            await self.factory.ledger.on_result(live, frame.fields)

    async def _on_telemetry(self, live: WelcomedSession, frame: protocol.Frame) -> None:
        factory = self.factory
        now = factory.clock.seconds()
        refusal = telemetry_refusal(frame, now, self._telemetry_at, factory.telemetry_min_interval)
        if refusal is not None:
            reason, code, message = refusal
            factory.metrics.frames_refused.labels(reason).inc()
            self.complain(
                "agent {agent_id}: telemetry refused: {message}",
                agent_id=live.agent_id,
                message=message,
            )
            self.send_frame(protocol.error_frame(code, message))
            return
        self._telemetry_at = now
        await factory.store.record_telemetry(
            live.agent_id,
            now,
            frame["metrics"],
            keep=factory.telemetry_keep,
            max_bytes=factory.telemetry_history_bytes,
        )

    async def _on_error(self, live: WelcomedSession, frame: protocol.Frame) -> None:
        self.complain(
            "agent {agent_id} reports {code}: {message}",
            agent_id=live.agent_id,
            code=frame["code"],
            message=frame["message"],
        )

    _handlers = {
        "heartbeat": _on_heartbeat,
        "ack": _on_ack,
        "output": _on_output,
        "result": _on_result,
        "telemetry": _on_telemetry,
        "error": _on_error,
    }

    def _run(self, coro: Coroutine[Any, Any, object]) -> None:
        d = Deferred.fromCoroutine(coro)
        d.addErrback(self._handling_failed)

    def _handling_failed(self, failure: Failure) -> None:
        if failure.check(StoreClosed):
            # The backend is stopping: the frame is answered again after the reconnect.
            self.log.info(
                "agent {agent_id}: frame not handled, the store is closed (shutting down)",
                agent_id=self._identity,
            )
            return
        self.log.failure("agent {agent_id}: handling failed", failure, agent_id=self._identity)


class AgentSessionFactory(WebSocketServerFactory):
    """Builds ``AgentSession``s sharing the registry, the store and the command path.

    ``admission`` is the handshake budget (shared by every listener of a backend);
    ``identify(transport, request)`` names the agent (viworks.backend.identity).
    """

    protocol = AgentSession  # type: ignore[assignment]  # Autobahn types it loosely

    def __init__(
        self,
        *,
        registry: SessionRegistry,
        store: Store,
        ledger: CommandLedger,
        dispatcher: Dispatcher,
        hub: EventHub,
        secrets: SecretParams,
        metrics: Metrics,
        audit_log: audit.AuditLog,
        admission: TokenBucket,
        clock: IReactorTime,
        identify: Callable[[Any, Any], str | None],
        ws_path: str = "/ws/agent",
        heartbeat_interval: float = 15.0,
        max_message_size: int = 1 << 20,
        hello_timeout: float = HELLO_TIMEOUT,
        telemetry_keep: int = 2880,
        telemetry_history_bytes: int = 4 << 20,
        telemetry_min_interval: float = 1.0,
        agent_frame_rate: float = 50.0,
        cert_serial: Callable[[Any, Any], str | None] = peer_cert_serial,
        cert_not_after: Callable[[Any, Any], float | None] = peer_cert_not_after,
    ) -> None:
        super().__init__(reactor=clock)
        # Flood control: frames/s per agent, bursts of twice that; more drops than
        # the burst within FLOOD_WINDOW disconnects it.
        self.frame_rate = agent_frame_rate
        self.frame_burst = max(1.0, 2 * agent_frame_rate)
        self.flood_limit = int(self.frame_burst)
        # Revocation: the serial of a connecting agent's certificate, and the serials
        # refused (kept current by viworks.backend.revocation.RevocationWatcher).
        self.cert_serial = cert_serial
        self.cert_not_after = cert_not_after
        self.revoked_serials: set[str] = set()
        self.audit = audit_log
        self.registry = registry
        self.store = store
        self.ledger = ledger
        self.dispatcher = dispatcher
        self.hub = hub
        self.secrets = secrets
        self.clock = clock
        self.identify = identify
        self.ws_path = ws_path
        self.heartbeat_interval = heartbeat_interval
        self.hello_timeout = hello_timeout
        self.admission = admission
        # What one agent's telemetry may take: rows and bytes kept, one report per interval.
        self.telemetry_keep = telemetry_keep
        self.telemetry_history_bytes = telemetry_history_bytes
        self.telemetry_min_interval = telemetry_min_interval
        self.metrics = metrics
        metrics.watch_sessions(registry, admission)
        # Don't advertise our version; no status page on a plain GET.
        self.server = "viworks"
        self.setProtocolOptions(
            webStatus=False, **protocol.websocket_options(max_message_size, heartbeat_interval)
        )

    def retry_hint(self) -> float:
        """A reconnect delay for a refused agent, spread so that retries trickle in."""
        spread = max(2.0, len(self.registry) / self.admission.rate)
        return self.admission.wait_time() + random.uniform(1.0, spread)
