"""The gateway's one outbound link to the backend.

``BackendLink`` keeps a mutual-TLS WebSocket open with ``ClientService``
(reconnecting forever with jittered exponential backoff), says HELLO after every
connect, runs the commands it receives through the ``VerbCatalog`` and sends the
results back.

Exactly-once in effect: every command id is written to the ``Journal`` before
it is acknowledged or run, and every result before it is sent. A redelivered id
is answered from the journal; results the backend has not acknowledged are
replayed, in order, after each welcome (including those of a previous process).
A journal file deleted or replaced under the running gateway would break that
promise: new commands are then refused (``JOURNAL_UNAVAILABLE``).

At start-up, before connecting, the process groups a previous life of the
gateway left running are ended (``procgroups.py``), so their commands are
reported ``lost`` only once nothing of them runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import connectionDone
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from viworks import __version__, lifecycle, protocol, signing
from viworks.gateway import outage
from viworks.gateway.journal import Journal, JournalEntry
from viworks.gateway.output import OutputBuffer
from viworks.gateway.procgroups import ProcessGroups
from viworks.gateway.reconnect import QuietClientService, ReconnectPolicy, ReportingEndpoint
from viworks.gateway.telemetry import TelemetryCollector
from viworks.gateway.verbs.catalog import VerbCatalog, VerbExecution
from viworks.gateway.verbs.model import VerbOutcome
from viworks.logs import Logger
from viworks.net import SkipPeerCertificateDetails, no_delay
from viworks.netaddr import parse_wss_url
from viworks.tls import enforce_pins

STOP_GRACE = 10.0
#: Seconds between checks that the journal's path still names the file opened
#: (every new command checks too).
JOURNAL_CHECK_INTERVAL = 5.0
JOURNAL_UNAVAILABLE = "JOURNAL_UNAVAILABLE"


# The ignore: Autobahn's own two bases of WebSocketClientProtocol disagree on the types
# of ``peer`` and ``_transport_details``; mypy reports it on any class with a second base.
@implementer(IHandshakeListener)
class AgentLinkProtocol(SkipPeerCertificateDetails, WebSocketClientProtocol):  # type: ignore[misc]
    """The agent's end of one connection; all state lives in the ``BackendLink``."""

    log = Logger()
    #: Why this connection failed below the WebSocket (TLS, pins), for the outage log.
    lost_why: str | None = None

    def connectionMade(self) -> None:
        no_delay(self.transport)
        super().connectionMade()

    def handshakeCompleted(self) -> None:
        # Chain and hostname were verified by TLS; the pin check comes on top.
        if not enforce_pins(self.transport, self.factory.link.pins):
            self.lost_why = (
                "TLS: the backend's key matches none of [tls] backend_spki_pins"
                " (connection aborted)"
            )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(SSL.Error, VerificationError):
            if self.lost_why is None:
                self.lost_why = outage.why_tls_failed(reason.value, self.factory.host)
            # Autobahn logs a TLS error at error level on every attempt; the outage
            # log already says it (at most once a minute), so Autobahn gets a plain loss.
            reason = Failure(ConnectionLost(self.lost_why))
        super().connectionLost(reason)

    def onOpen(self) -> None:
        self.factory.link.connection_opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.link.frame_received(self, payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.link.connection_closed(self, code, reason)

    def send_frame(self, payload: bytes) -> None:
        # A closing connection takes nothing more; the journal keeps what matters.
        if self.state == self.STATE_OPEN:
            self.sendMessage(payload, isBinary=False)


class AgentLinkFactory(WebSocketClientFactory):
    """Builds each connection's protocol, which reports to the ``BackendLink``."""

    protocol = AgentLinkProtocol
    noisy = False  # no "Starting factory" line for every attempt

    def __init__(self, link: BackendLink, url: str, reactor: Any) -> None:
        super().__init__(url, reactor=reactor)
        self.link = link


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
        catalog: VerbCatalog,
        journal: Journal,
        tls_options: Any,
        pins: Sequence[str] = (),
        labels: dict[str, str] | None = None,
        heartbeat_interval: float = 15.0,
        reconnect_initial: float = 1.0,
        reconnect_max: float = 60.0,
        max_message_size: int = 1 << 20,
        telemetry_interval: float = 30.0,
        verifier: signing.Verifier | None = None,
        groups: ProcessGroups | None = None,
    ) -> None:
        super().__init__()
        # None: [signing] is not configured and commands run unverified.
        self.verifier = verifier
        self.reactor = reactor
        self.agent_id = agent_id
        self.site = site
        self.hostname = hostname
        self.labels = labels or {}
        self.catalog = catalog
        self.journal = journal
        # The verbs' process groups (None: not recorded, nothing ended at start-up).
        self.groups = groups
        # Why the journal cannot be trusted any more (deleted, replaced), or None.
        self.journal_problem: str | None = None
        self._journal_watch = LoopingCall(self._check_journal)
        self._journal_watch.clock = reactor
        self._starting: Deferred | None = None
        self.pins = list(pins)
        # A ReloadableTLS in the services (SIGHUP swaps it for the next connect).
        self.tls_options = tls_options
        self.reconnect_max = reconnect_max
        self.heartbeat_interval = heartbeat_interval
        self.session_id: str | None = None
        self._current: AgentLinkProtocol | None = None
        self._running: dict[str, VerbExecution] = {}  # by command id
        self._heartbeat = LoopingCall(self._send_heartbeat)
        self._heartbeat.clock = reactor
        self.telemetry_interval = telemetry_interval
        self._telemetry = LoopingCall(self._send_telemetry)
        self._telemetry.clock = reactor
        self._telemetry_collector = TelemetryCollector(catalog)
        self._outputs: dict[str, OutputBuffer] = {}
        # Output chunks produced while disconnected; sent after the next welcome.
        self._output_spool: list[bytes] = []

        self.policy = ReconnectPolicy(reconnect_initial, reconnect_max)
        self.outage = outage.OutageLog(reactor)
        # Why the last attempt or connection failed, until the next retry is scheduled.
        self._why_down: str | None = None
        host, port, _path = parse_wss_url(backend_url)
        self._address = (host, port)
        factory = AgentLinkFactory(self, backend_url, reactor)
        factory.setProtocolOptions(
            **protocol.websocket_options(max_message_size, heartbeat_interval)
        )
        endpoint = ReportingEndpoint(
            wrapClientTLS(tls_options, HostnameEndpoint(reactor, host, port, timeout=10)),
            self._connect_failed,
        )
        # Parented (and so connected) by startService once leftovers are ended.
        self.client_service = QuietClientService(
            endpoint,
            factory,
            retryPolicy=self._retry_delay,
            clock=reactor,
        )

    def _connect_failed(self, failure: Failure) -> None:
        self._why_down = outage.why_connect_failed(failure, *self._address)

    def _retry_delay(self, attempt: int) -> float:
        """The policy's next delay, logged with why the link is down (``OutageLog``)."""
        delay = self.policy(attempt)
        why, self._why_down = self._why_down or "the connection was lost", None
        self.outage.failed(why, delay)
        return delay

    def set_verifier(self, verifier: signing.Verifier | None) -> None:
        """The keys checked from the next command on (SIGHUP); None turns checking off."""
        if verifier is None and self.verifier is not None:
            self.log.warn("command signing turned off by a reload: [signing] was removed")
        self.verifier = verifier

    def set_pins(self, pins: Any) -> None:
        """Pins for the next handshakes (SIGHUP); the open connection is not re-checked."""
        self.pins = list(pins)

    @property
    def connected(self) -> bool:
        """True between the backend's welcome and the link going down."""
        return self.session_id is not None

    def startService(self) -> None:
        if self.verifier is None:
            self.log.warn(
                "command signing is off: agent.toml has no [signing] section, so this agent"
                " runs any command its backend link delivers, without checking that the"
                " backend issued it"
            )
        for entry in self.journal.open():
            self.log.warn(
                "command {command_id} ({verb}) was running when the agent stopped: "
                "reporting it as lost",
                command_id=entry.command_id,
                verb=entry.verb,
            )
        super().startService()
        self._journal_watch.start(JOURNAL_CHECK_INTERVAL, now=False)
        self._starting = Deferred.fromCoroutine(self._connect_when_clean())
        self._starting.addErrback(lambda f: self.log.failure("gateway start-up failed", f))

    async def _connect_when_clean(self) -> None:
        """Connect once the process groups of a previous life are gone."""
        if self.groups is not None:
            try:
                await self.groups.end_leftovers()
            except Exception:
                self.log.failure("ending the previous process's verbs failed")
        if self.running:
            self.client_service.setServiceParent(self)

    def stopService(self) -> Deferred:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._starting is not None:
            await self._starting
        if self._journal_watch.running:
            self._journal_watch.stop()
        self._stop_timers()
        # Verbs still running are cancelled (TERM, then KILL) and their
        # "cancelled" results journalled, to be reported after the restart.
        outcomes = [execution.outcome for execution in self._running.values()]
        for execution in list(self._running.values()):
            execution.cancel()
        if outcomes:
            done = DeferredList(outcomes, consumeErrors=True)
            done.addTimeout(STOP_GRACE, self.reactor)
            await done.addErrback(lambda _: None)
        await super().stopService()
        self.journal.close()

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
                protocol=protocol.HELLO_PROTOCOL,
                labels=self.labels,
                verbs=self.catalog.describe(),
                signing="off" if self.verifier is None else "on",
            )
        )

    def connection_closed(self, proto: AgentLinkProtocol, code: int | None, reason: Any) -> None:
        # Hints apply even to a connection that never opened: a refusal at the
        # HTTP upgrade ("busy; retry-after=N") arrives on exactly such a one.
        if code == protocol.CLOSE_REPLACED:
            self.log.error(
                "another connection with agent id {agent_id} replaced this one: is a second "
                "gateway using the same identity? waiting {delay} s before reconnecting",
                agent_id=self.agent_id,
                delay=self.reconnect_max,
            )
            self.policy.at_least(self.reconnect_max)
        hint = protocol.parse_retry_after(reason)
        if hint is not None:
            self.policy.at_least(min(hint, self.reconnect_max * 10))
        self._why_down = getattr(proto, "lost_why", None) or outage.why_closed(code, reason)
        if proto is not self._current:
            return
        self._current = None
        self.session_id = None
        self._stop_timers()

    def _stop_timers(self) -> None:
        for loop in (self._heartbeat, self._telemetry):
            if loop.running:
                loop.stop()

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
        elif frame.type == "cancel":
            self._on_cancel(proto, frame)
        elif frame.type == "result_ack":
            self.journal.ack(frame["command_id"])
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
        self.policy.succeeded()
        self.outage.recovered()
        self.log.info(
            "connected to backend, session {session_id} (epoch {epoch})",
            session_id=self.session_id,
            epoch=frame["epoch"],
        )
        # An older backend (no "protocol": 1) signs what this agent no longer accepts.
        backend_protocol = frame.get("protocol", 1)
        if (
            self.verifier is not None
            and isinstance(backend_protocol, int)
            and backend_protocol < protocol.HELLO_PROTOCOL
        ):
            self.log.error(
                "the backend speaks protocol {theirs} and this agent {ours}: it signs commands"
                " in a form this agent refuses (INVALID_SIGNATURE); upgrade the backend first",
                theirs=backend_protocol,
                ours=protocol.HELLO_PROTOCOL,
            )
        spooled, self._output_spool = self._output_spool, []
        for payload in spooled:
            self._send(payload)
        for entry in self.journal.unacked():
            self._resend(entry)
        self.journal.prune()
        self._stop_timers()
        self._heartbeat.start(self.heartbeat_interval, now=False)
        self._telemetry.start(self.telemetry_interval, now=True)

    def _send_heartbeat(self) -> None:
        self._send(protocol.encode("heartbeat", ts=self.reactor.seconds()))

    def _send(self, payload: bytes) -> None:
        # While disconnected nothing is lost: results wait in the journal.
        if self._current is not None and self.connected:
            self._current.send_frame(payload)

    def _send_result(self, command_id: str, fields: dict[str, Any]) -> None:
        self._send(protocol.encode("result", command_id=command_id, **fields))

    def _resend(self, entry: JournalEntry) -> None:
        """Send a finished command's result again, as the journal recorded it."""
        if entry.result is not None:  # only running entries have none
            self._send_result(entry.command_id, entry.result)

    def _send_output(self, payload: bytes) -> None:
        if self._current is not None and self.connected:
            self._current.send_frame(payload)
        else:
            self._output_spool.append(payload)

    def _send_telemetry(self) -> Deferred:
        d = Deferred.fromCoroutine(self._telemetry_collector.collect())
        d.addCallback(
            lambda metrics: self._send(
                protocol.encode("telemetry", ts=self.reactor.seconds(), metrics=metrics)
            )
        )
        # A failed report must not stop the loop.
        d.addErrback(lambda f: self.log.failure("telemetry failed", f))
        return d

    # -- commands -------------------------------------------------------------------

    def _on_command(self, proto: AgentLinkProtocol, frame: protocol.Frame) -> None:
        command_id = frame["command_id"]
        known = self.journal.get(command_id)
        if known is not None:
            # A redelivery: answer from the journal, never run twice.
            if known.state == "finished":
                self._resend(known)
            else:
                proto.send_frame(protocol.encode("ack", command_id=command_id))
            return
        now = self.reactor.seconds()
        problem = self._check_journal()
        if problem is not None:
            # Not journalled: the file it would go to is not the one read at the next start.
            self._send_result(
                command_id,
                outcome_fields(
                    lifecycle.REJECTED,
                    now,
                    now,
                    {"code": JOURNAL_UNAVAILABLE, "message": f"{problem}; restart the gateway"},
                ),
            )
            return
        # Only a command the backend signed (for us, now, once) may go further.
        verifier = self.verifier
        refusal = None if verifier is None else self._check_signature(verifier, frame, now)
        if refusal is not None:
            pass
        elif frame.get("redacted"):
            refusal = (
                lifecycle.REJECTED,
                "SECRETS_UNAVAILABLE",
                "the backend no longer has this command's secret arguments",
            )
        elif frame["expires_at"] is not None and now > frame["expires_at"]:
            refusal = (lifecycle.EXPIRED, "EXPIRED", "the command arrived after its deadline")
        self.journal.accept(command_id, frame["verb"])
        if refusal is not None:
            status, code, message = refusal
            self._finish(
                command_id, outcome_fields(status, now, now, {"code": code, "message": message})
            )
            return
        proto.send_frame(protocol.encode("ack", command_id=command_id))
        self.log.debug(
            "command {command_id}: {verb} started", command_id=command_id, verb=frame["verb"]
        )
        output = OutputBuffer(command_id, self._send_output, self.reactor)
        self._outputs[command_id] = output
        execution = self.catalog.start(
            frame["verb"], frame["args"], frame["timeout"], on_output=output.add
        )
        self._running[command_id] = execution
        d = execution.outcome
        d.addCallback(
            lambda outcome: self._finish(
                command_id,
                outcome_fields(outcome.status, now, self.reactor.seconds(), outcome.error, outcome),
            )
        )
        d.addErrback(
            lambda f: self.log.failure("command {command_id} failed", f, command_id=command_id)
        )
        d.addBoth(lambda _: self._running.pop(command_id, None))

    def _authenticate(self, verifier: signing.Verifier, frame: protocol.Frame, now: float) -> None:
        """Verify a signed ``command`` or ``cancel`` (for us, now) and record its nonce (once).

        :raises signing.SignatureRefused: the frame must change nothing.
        """
        check = verifier.check_cancel if frame.type == "cancel" else verifier.check
        envelope = check(frame.fields, agent_id=self.agent_id, now=now)
        if not self.journal.remember_nonce(
            envelope.nonce, envelope.issued_at + verifier.window, now
        ):
            raise signing.SignatureRefused(
                signing.REPLAY_DETECTED, f"this {frame.type} frame's nonce was already used"
            )

    def _check_signature(
        self, verifier: signing.Verifier, frame: protocol.Frame, now: float
    ) -> tuple[str, str, str] | None:
        """The refusal of a command that is not the backend's, or None (nonce recorded)."""
        try:
            self._authenticate(verifier, frame, now)
        except signing.SignatureRefused as e:
            self.log.warn(
                "command {command_id} ({verb}) refused: {code}: {message}",
                command_id=frame["command_id"],
                verb=frame["verb"],
                code=e.code,
                message=e.message,
            )
            # Past its delivery deadline it is "expired", as for an unsigned agent.
            deadline = frame["expires_at"]
            passed = e.code == signing.EXPIRED and deadline is not None and now > deadline
            return (lifecycle.EXPIRED if passed else lifecycle.REJECTED, e.code, e.message)
        return None

    def _on_cancel(self, proto: AgentLinkProtocol, frame: protocol.Frame) -> None:
        command_id = frame["command_id"]
        if self.verifier is not None:
            # A cancel stops genuine work: only the backend's own (for us, now, once) may.
            try:
                self._authenticate(self.verifier, frame, self.reactor.seconds())
            except signing.SignatureRefused as e:
                self.log.warn(
                    "cancel for command {command_id} refused: {code}: {message}",
                    command_id=command_id,
                    code=e.code,
                    message=e.message,
                )
                proto.send_frame(protocol.error_frame(e.code, e.message, command_id))
                return
        execution = self._running.get(command_id)
        if execution is not None:
            # Its "cancelled" result follows when the process group is gone.
            execution.cancel()
            return
        known = self.journal.get(command_id)
        if known is not None:
            if known.state == "finished":
                self._resend(known)
            return
        # Never received. The backend sends a command before its cancel, also after a
        # reconnect, so this one is not the backend's to act on: recording it would
        # pre-cancel a later command with that id.
        self.log.warn("cancel for unknown command {command_id} ignored", command_id=command_id)
        proto.send_frame(
            protocol.error_frame(
                protocol.UNKNOWN_COMMAND, "this agent never received that command", command_id
            )
        )

    def _check_journal(self) -> str | None:
        """Why the journal cannot be trusted (logged when that changes), or None."""
        problem = self.journal.problem()
        if problem != self.journal_problem:
            if problem is not None:
                self.log.error(
                    "{problem}: refusing new commands ({code}) until the gateway is restarted;"
                    " exactly-once execution depends on the journal",
                    problem=problem,
                    code=JOURNAL_UNAVAILABLE,
                )
            else:
                self.log.info("journal {path} is back: accepting commands", path=self.journal.path)
            self.journal_problem = problem
        return problem

    def _finish(self, command_id: str, fields: dict) -> None:
        output = self._outputs.pop(command_id, None)
        if output is not None:
            output.flush()  # live output first, then the result
        self.log.info(
            "command {command_id} finished: {status}",
            command_id=command_id,
            status=fields["status"],
        )
        # Write-ahead: a result is journalled before it is sent.
        self.journal.finish(command_id, fields)
        self._send_result(command_id, fields)


def outcome_fields(
    status: str,
    started_at: float,
    finished_at: float,
    error: dict[str, str] | None,
    outcome: VerbOutcome | None = None,
) -> dict[str, Any]:
    """The ``result`` frame's fields (without the command id) for a verb outcome or a refusal."""
    fields = (outcome or _NOTHING_RAN).to_dict()
    fields.update(status=status, error=error, started_at=started_at, finished_at=finished_at)
    return fields


#: What a refused command reports besides its status and error: no exit code, no output.
_NOTHING_RAN = VerbOutcome(status="rejected")
