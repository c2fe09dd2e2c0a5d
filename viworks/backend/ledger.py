"""The command ledger: every command from its creation to its final status.

Data flows API -> ledger -> session: the ledger validates a command against the
schemas its agent announced, records it in the store, and hands it to the
agent's live session (now, or when the agent next says HELLO). Results coming
back are recorded once; status changes are compare-and-set in the store, so a
late or duplicated frame can never overwrite a final status.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from viworks import lifecycle, protocol, signing
from viworks.backend.audit import AuditLog
from viworks.backend.events import EventHub
from viworks.backend.metrics import Metrics
from viworks.backend.model import Command, NewCommand
from viworks.backend.output_cap import STREAMS, OutputBudget, cap_text, utf8_size
from viworks.backend.registry import LiveSession, SessionRegistry
from viworks.backend.secrecy import SecretParams
from viworks.backend.store import IdempotencyConflict, Store
from viworks.logs import Logger
from viworks.schema import ArgsError, validate_args

MAX_TIMEOUT = 86400.0
MAX_TTL = 7 * 86400.0


class LedgerError(Exception):
    """A request the ledger refuses; the API maps it to an HTTP status."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


@dataclass
class InFlight:
    """What the ledger keeps in memory of a command it created, until it is final.

    It spares the hot path a store read per frame (whose command is this? when
    did it start?) and holds the unredacted args: secrets are never stored.
    """

    agent_id: str
    args: dict
    dispatched: bool = False  # sent to the agent (output is accepted from now on)
    started_at: float | None = None  # set by the agent's ack
    reported: bool = False  # its result has arrived (it is being recorded)


@dataclass(frozen=True)
class Idempotency:
    """An ``Idempotency-Key`` scoped to the token that sent it, with the request's digest."""

    token_name: str
    key: str
    request_hash: str


class CommandLedger:
    """Creates, delivers and completes commands; wakes up API waiters.

    Deadlines are kept by one timer set to the earliest of the next delivery
    deadline (TTL: queued -> expired) and the next loss deadline (dispatched or
    running for longer than timeout + ``lost_grace`` -> lost); it re-arms itself
    from the store, so it also covers commands created before a restart. For
    ``startup_grace`` seconds after ``start`` nothing is declared lost: after an
    outage, agents reconnecting report what finished meanwhile from their journals.
    A result from a lost command's own agent still replaces ``lost`` later.
    """

    log = Logger()

    def __init__(
        self,
        store: Store,
        registry: SessionRegistry,
        clock: IReactorTime,
        default_timeout: float = 60.0,
        default_ttl: float = 3600.0,
        lost_grace: float = 60.0,
        hub: EventHub | None = None,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        signing_key: Any = None,
        metrics: Metrics | None = None,
        audit: AuditLog | None = None,
        startup_grace: float = 0.0,
        secrets: SecretParams | None = None,
        max_output_bytes: int = 1 << 20,
    ) -> None:
        # Which parameters are secret for every agent (the sessions teach it each HELLO).
        self.secrets = secrets or SecretParams()
        # Final outcomes are audited; the API and the sessions share this log by default.
        self.audit = audit or AuditLog(store, clock)
        self.metrics = metrics or Metrics()
        # Every store call the ledger makes is timed (viworks_store_seconds).
        self.store = self.metrics.timed_store(store)
        self.registry = registry
        self.clock = clock
        # The Ed25519 key of [signing] (None: commands go out unsigned); set_signing_key swaps it.
        self.signing_key = signing_key
        self.default_timeout = default_timeout
        self.default_ttl = default_ttl
        self.lost_grace = lost_grace
        self.startup_grace = startup_grace
        # No command is declared lost before this time (set by start()).
        self._lose_from = 0.0
        self.hub = hub or EventHub()
        self._new_id = new_id
        # Unfinished commands made by this process (after a restart: read from the store).
        self._inflight: dict[str, InFlight] = {}
        # [backend] max_output_bytes per stream, and what each running command has used.
        self.max_output_bytes = max_output_bytes
        self._outputs: dict[str, OutputBudget] = {}
        # agent id -> (session id, verbs announced in that session's HELLO).
        self._verbs: dict[str, tuple[str, dict]] = {}
        self._waiters: dict[str, list[Deferred]] = {}
        self._timer: IDelayedCall | None = None
        self._running = False

    # -- deadlines ------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin keeping deadlines (after the store is open)."""
        self._running = True
        self._lose_from = self.clock.seconds() + self.startup_grace
        # What agents announced before this process started still counts.
        for agent in await self.store.list_agents():
            self.secrets.learn(agent.verbs)
        await self._sweep()

    def stop(self) -> None:
        """Stop keeping deadlines and answer every API waiter now (with None)."""
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        waiters, self._waiters = self._waiters, {}
        for pending in waiters.values():
            for waiter in pending:
                waiter.callback(None)

    def _wake_at(self, when: float | None) -> None:
        if when is None or not self._running:
            return
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= when:
                return
            self._timer.cancel()
        delay = max(0.0, when - self.clock.seconds())
        self._timer = self.clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        d = Deferred.fromCoroutine(self._sweep())
        # After stop() the store may close under a sweep in flight: nothing to report.
        d.addErrback(lambda f: self._running and self.log.failure("deadline sweep failed", f))

    async def _sweep(self) -> None:
        now = self.clock.seconds()
        for command in await self.store.expire_due(now):
            self.log.info(
                "command {command_id} expired: not delivered to {agent_id} in time",
                command_id=command.command_id,
                agent_id=command.agent_id,
            )
            self._changed(command)
        # During the start-up grace agents may still be reconnecting: nothing is lost yet.
        lost = await self.store.lose_overdue(now, self.lost_grace) if now >= self._lose_from else []
        for command in lost:
            self.log.warn(
                "command {command_id} lost: no result from {agent_id} within its timeout",
                command_id=command.command_id,
                agent_id=command.agent_id,
            )
            self._changed(command)
        await self._rearm()

    async def _rearm(self) -> None:
        expiry = await self.store.next_expiry()
        loss = await self.store.next_loss_deadline()
        if loss is not None:
            loss = max(loss + self.lost_grace, self._lose_from)
        candidates = [t for t in (expiry, loss) if t is not None]
        self._wake_at(min(candidates) if candidates else None)

    # -- submission -----------------------------------------------------------------------

    async def submit(
        self,
        agent_id: str,
        verb: Any,
        args: Any,
        timeout: Any = None,
        ttl: Any = None,
        idempotency: Idempotency | None = None,
    ) -> tuple[Command, bool]:
        """Validate and record a command, then deliver it if the agent is online.

        Returns ``(command, created)``; ``created`` is False when an earlier
        request with the same idempotency key made the command.
        """
        verbs = await self._verbs_of(agent_id)
        if not isinstance(verb, str) or verb not in verbs:
            raise LedgerError(
                422, "UNKNOWN_VERB", f"agent {agent_id!r} does not offer verb {verb!r}", "verb"
            )
        params = verbs[verb].get("params", {})
        if args is None:
            args = {}
        try:
            args = validate_args(params, args)
        except ArgsError as e:
            raise LedgerError(422, "INVALID_ARGS", e.message, e.field) from None
        timeout = _seconds("timeout", timeout, self.default_timeout, MAX_TIMEOUT)
        ttl = _seconds("ttl", ttl, self.default_ttl, MAX_TTL)
        now = self.clock.seconds()
        new = NewCommand(
            command_id=self._new_id(),
            agent_id=agent_id,
            verb=verb,
            args=self.secrets.redact(verb, params, args),
            timeout=timeout,
            created_at=now,
            expires_at=now + ttl,
        )
        # Agent online: stored as dispatched and sent in one go (one transaction less
        # on the way to the agent); otherwise queued until its next HELLO.
        dispatched_at = now if self.registry.get(agent_id) is not None else None
        if idempotency is None:
            command = await self.store.create_command(new, dispatched_at=dispatched_at)
            created = True
        else:
            try:
                command, created = await self.store.create_command_idempotent(
                    new,
                    token_name=idempotency.token_name,
                    key=idempotency.key,
                    request_hash=idempotency.request_hash,
                    dispatched_at=dispatched_at,
                )
            except IdempotencyConflict:
                raise LedgerError(
                    409,
                    "IDEMPOTENCY_CONFLICT",
                    "this Idempotency-Key was used for a different request",
                ) from None
        if not created:
            return command, False
        command_id = command.command_id
        inflight = self._inflight[command_id] = InFlight(agent_id, args)
        self.log.debug(
            "command {command_id} {verb} queued for {agent_id}",
            command_id=command_id,
            verb=verb,
            agent_id=agent_id,
        )
        self._wake_at(command.expires_at)
        if dispatched_at is not None:  # stored dispatched
            inflight.dispatched = True
            self.metrics.command_dispatched(command, dispatched_at)
            self._changed(command)
            self._wake_at(dispatched_at + timeout + self.lost_grace)
            # The session may have changed while the row was written: send to the
            # current one. None: the next HELLO's delivery sends it (dispatched ones too).
            session = self.registry.get(agent_id)
            if session is not None:
                self._send(session, command, args, dispatched_at)
        return command, True

    async def _verbs_of(self, agent_id: str) -> dict:
        """The verbs the agent offers: remembered per live session (they change only
        with a new HELLO), read from the store otherwise."""
        session = self.registry.get(agent_id)
        remembered = self._verbs.get(agent_id)
        if session is not None and remembered is not None:
            if remembered[0] == session.session_id:
                return remembered[1]
        agent = await self.store.get_agent(agent_id)
        if agent is None:
            raise LedgerError(404, "AGENT_NOT_FOUND", f"no agent {agent_id!r} is known")
        if session is not None and agent.session_id == session.session_id:
            self._verbs[agent_id] = (session.session_id, agent.verbs)
        return agent.verbs

    # -- delivery -------------------------------------------------------------------------

    async def deliver_pending(self, session: LiveSession) -> int:
        """Send an agent that just said HELLO everything waiting for it, oldest first.

        Commands still ``dispatched`` (sent, never acknowledged) went down with an
        earlier link and are sent again: the agent's journal answers a command it
        already has instead of running it twice.
        """
        sent = 0
        for command in await self.store.commands_in(
            session.agent_id, (lifecycle.DISPATCHED, lifecycle.QUEUED)
        ):
            if not self.registry.is_current(session):
                break
            if await self._dispatch(session, command):
                sent += 1
        # Cancellations asked for while the agent was away.
        for command in await self.store.cancels_pending(session.agent_id):
            self._send_cancel(session, command.command_id)
        return sent

    async def _dispatch(self, session: LiveSession, command: Command) -> Command | None:
        command_id = command.command_id
        now = self.clock.seconds()
        expires_at = command.expires_at
        if command.status == lifecycle.QUEUED and expires_at is not None and expires_at <= now:
            return None  # the deadline sweep expires it
        inflight = self._inflight.get(command_id)
        args = None if inflight is None else inflight.args
        # After a backend restart the secret args of an unfinished command are gone.
        redacted = args is None and await self._has_secrets(command)
        if redacted and command.status == lifecycle.QUEUED:
            await self._transition(
                command_id,
                lifecycle.FAILED,
                finished_at=now,
                error={
                    "code": "SECRETS_UNAVAILABLE",
                    "message": "the backend restarted before delivery; secret arguments "
                    "are never stored, submit the command again",
                },
            )
            return None
        # Compare-and-set on the status we read: of two racing dispatchers only one sends.
        updated = await self._transition(
            command_id, lifecycle.DISPATCHED, expected=(command.status,), dispatched_at=now
        )
        if updated is None:
            return None
        if inflight is not None:
            inflight.dispatched = True
        if command.status == lifecycle.QUEUED:
            self.metrics.command_dispatched(command, now)
        self._send(session, command, args, now, redacted=redacted)
        return updated

    def _send(
        self,
        session: LiveSession,
        command: Command,
        args: dict | None,
        now: float,
        redacted: bool = False,
    ) -> None:
        """Send the command frame (signed when signing is on) and watch for its loss."""
        command_id = command.command_id
        sent_args = command.args if args is None else args
        extra: dict[str, Any] = {}
        if redacted:
            extra["redacted"] = True  # a redelivery the agent may answer from its journal
        if self.signing_key is not None:
            # Signed at every delivery: a fresh nonce and issued_at each time.
            envelope = signing.envelope_for(
                command_id=command_id,
                agent_id=session.agent_id,
                verb=command.verb,
                args=sent_args,
                expires_at=command.expires_at,
                timeout=command.timeout,
                redacted=redacted,
                now=now,
                version=signing.command_envelope_version(session.agent_protocol),
            )
            extra["signature"] = signing.sign(self.signing_key, envelope)
        session.send_frame(
            protocol.encode(
                "command",
                command_id=command_id,
                agent_id=session.agent_id,
                verb=command.verb,
                args=sent_args,
                timeout=command.timeout,
                expires_at=command.expires_at,
                **extra,
            )
        )
        self.log.debug(
            "command {command_id} dispatched to {agent_id}",
            command_id=command_id,
            agent_id=session.agent_id,
        )
        self._wake_at(now + command.timeout + self.lost_grace)

    def _send_cancel(self, session: LiveSession, command_id: str) -> None:
        """Send a ``cancel`` frame, signed when signing is on (agents without [signing]
        and protocol 1 agents ignore the signature)."""
        extra: dict[str, Any] = {}
        if self.signing_key is not None:
            envelope = signing.cancel_envelope_for(
                command_id=command_id, agent_id=session.agent_id, now=self.clock.seconds()
            )
            extra["signature"] = signing.sign(self.signing_key, envelope)
        session.send_frame(
            protocol.encode("cancel", command_id=command_id, agent_id=session.agent_id, **extra)
        )

    def set_signing_key(self, key: Any) -> None:
        """Sign the next deliveries with ``key`` (SIGHUP); None sends them unsigned."""
        self.signing_key = key

    async def _has_secrets(self, command: Command) -> bool:
        agent = await self.store.get_agent(command.agent_id)
        params = (agent.verbs if agent else {}).get(command.verb, {}).get("params", {})
        return any(name in command.args for name in self.secrets.of(command.verb, params))

    # -- what agents report ---------------------------------------------------------------

    async def on_output(self, session: LiveSession, fields: dict) -> None:
        """Store a chunk of live output of a command running on this agent, up to
        ``max_output_bytes`` per stream (duplicates from a replay are ignored).

        Output for any other command (final, queued, another agent's, unknown) is
        refused with a ``NOT_RUNNING`` error and stored nowhere.
        """
        command_id = fields["command_id"]
        budget = await self._output_budget(session.agent_id, command_id)
        if budget is None:
            session.complain(
                "agent {agent_id} sent output for command {command_id}, which is not"
                " running there: refused",
                agent_id=session.agent_id,
                command_id=command_id,
            )
            self.metrics.frames_refused.labels("not_running").inc()
            session.send_frame(
                protocol.error_frame(
                    protocol.NOT_RUNNING,
                    "output refused: the command is not running on this agent",
                    command_id,
                )
            )
            return
        stream = fields["stream"]
        data, first_cut = budget.take(stream, fields["data"])
        if first_cut:
            self.log.info(
                "command {command_id}: {stream} cut at [backend] max_output_bytes = {limit}",
                command_id=command_id,
                stream=stream,
                limit=budget.limit,
                agent_id=session.agent_id,
            )
            self.metrics.output_cut.labels(stream).inc()
            await self.store.mark_output_truncated(command_id, stream)
        if not data:
            return
        chunk = (fields["seq"], stream, data)
        if await self.store.append_output(command_id, [chunk], self.clock.seconds()):
            self.hub.publish(
                "command.output",
                {"command_id": command_id, "seq": fields["seq"], "stream": stream, "data": data},
            )

    async def _output_budget(self, agent_id: str, command_id: str) -> OutputBudget | None:
        """The output budget of a command dispatched to or running on ``agent_id`` whose
        result has not arrived; None for any other command."""
        inflight = self._inflight.get(command_id)
        if inflight is not None:
            # Made by this process: memory knows its state.
            if inflight.agent_id != agent_id or not inflight.dispatched or inflight.reported:
                return None
            budget = self._outputs.get(command_id)
            if budget is None:
                budget = self._outputs[command_id] = OutputBudget(agent_id, self.max_output_bytes)
            return budget
        budget = self._outputs.get(command_id)
        if budget is None:
            # Made before a restart: the store knows, and what it holds of the output counts.
            command = await self.store.get_command(command_id)
            if (
                command is None
                or command.agent_id != agent_id
                or command.status not in (lifecycle.DISPATCHED, lifecycle.RUNNING)
            ):
                return None
            stored = await self.store.output_text(command_id)
            budget = self._outputs.setdefault(
                command_id,
                OutputBudget(
                    agent_id,
                    self.max_output_bytes,
                    {stream: utf8_size(text) for stream, text in zip(STREAMS, stored, strict=True)},
                    [stream for stream in STREAMS if command.truncated(stream)],
                ),
            )
        return budget if budget.agent_id == agent_id else None

    def _result_output(self, command_id: str, fields: dict) -> dict:
        """A result's stdout and stderr within ``max_output_bytes`` each; a stream is
        truncated if the agent says so or the backend cut it (here or while streaming)."""
        budget = self._outputs.get(command_id)
        kept: dict[str, Any] = {}
        for stream in STREAMS:
            text, cut = cap_text(fields[stream], self.max_output_bytes)
            if cut:
                self.metrics.output_cut.labels(stream).inc()
            streamed_cut = budget is not None and stream in budget.truncated
            kept[stream] = text
            kept[f"{stream}_truncated"] = fields[f"{stream}_truncated"] or cut or streamed_cut
        return kept

    async def cancel(self, command_id: str) -> Command:
        """Cancel a command: a queued one at once, a running one through its agent."""
        command = await self.store.get_command(command_id)
        if command is None:
            raise LedgerError(404, "COMMAND_NOT_FOUND", f"no command {command_id!r}")
        if command.status == lifecycle.QUEUED:
            cancelled = await self._transition(
                command_id,
                lifecycle.CANCELLED,
                expected=(lifecycle.QUEUED,),
                finished_at=self.clock.seconds(),
                error={"code": "CANCELLED", "message": "cancelled before delivery"},
            )
            if cancelled is not None:
                return cancelled
        requested = await self.store.request_cancel(command_id, self.clock.seconds())
        if requested is None:
            current = await self.store.get_command(command_id)
            raise LedgerError(
                409,
                "ALREADY_FINISHED",
                f"the command is already {current.status if current else 'gone'}",
            )
        session = self.registry.get(requested.agent_id)
        if session is not None:
            self._send_cancel(session, command_id)
        self.log.info(
            "command {command_id}: cancel requested",
            command_id=command_id,
            agent_id=requested.agent_id,
        )
        return requested

    async def on_ack(self, session: LiveSession, command_id: str) -> None:
        """The agent accepted a command and is running it."""
        if not (await self._ownership(session, command_id))[0]:
            return
        now = self.clock.seconds()
        inflight = self._in_flight(command_id, session.agent_id)
        if inflight is not None:
            inflight.started_at = now
        await self._transition(
            command_id, lifecycle.RUNNING, expected=(lifecycle.DISPATCHED,), started_at=now
        )

    async def on_result(self, session: LiveSession, fields: dict) -> None:
        """Record a final result (once) and acknowledge it so the agent stops replaying it."""
        command_id = fields["command_id"]
        own, started_at = await self._ownership(session, command_id)
        inflight = self._in_flight(command_id, session.agent_id)
        if inflight is not None:
            inflight.reported = True
        if own:
            outcome = {
                "exit_code": fields["exit_code"],
                "result": fields["result"],
                **self._result_output(command_id, fields),
                "error": fields["error"],
                "started_at": started_at or fields["started_at"],
                "finished_at": self.clock.seconds(),
            }
            finished = await self._transition(command_id, fields["status"], **outcome)
            if finished is None:
                await self._late_result(session, command_id, fields["status"], outcome)
        # Acknowledge even what we ignored: the agent must not replay it forever.
        session.send_frame(protocol.encode("result_ack", command_id=command_id))

    async def _late_result(
        self, session: LiveSession, command_id: str, status: str, outcome: dict
    ) -> None:
        """The agent's result for its command that is final already: the real outcome
        replaces ``lost`` (the backend's guess, e.g. after an outage longer than the
        command's timeout plus ``lost_grace``); any other final status stays."""
        command = await self.store.get_command(command_id)
        if (
            command is not None
            and command.status == lifecycle.LOST
            and status in lifecycle.LATE_OUTCOMES
        ):
            # The history keeps the lost event; this one says what it replaced.
            replaced = await self.store.transition(
                command_id,
                status,
                self.clock.seconds(),
                expected=(lifecycle.LOST,),
                detail={"replaces": lifecycle.LOST, "lost_at": command.finished_at},
                **outcome,
            )
            if replaced is not None:
                self.log.warn(
                    "command {command_id}: late result {status} from {agent_id} replaces lost",
                    command_id=command_id,
                    status=status,
                    agent_id=session.agent_id,
                )
                self._changed(replaced, replaces=lifecycle.LOST)
                return
            command = await self.store.get_command(command_id)
        self.log.info(
            "result {status} for {command_id} ignored: the command is already {current}",
            status=status,
            command_id=command_id,
            current=command.status if command else None,
        )

    def _in_flight(self, command_id: str, agent_id: str) -> InFlight | None:
        """The unfinished command this process made for ``agent_id``, or None."""
        inflight = self._inflight.get(command_id)
        return inflight if inflight is not None and inflight.agent_id == agent_id else None

    def expects(self, frame_type: str, command_id: str, agent_id: str) -> bool:
        """True for the answers this agent still owes on the command: its ``ack`` (until
        one arrives) and its ``result`` (until the command is final). At most one each
        per command, so a flood cannot hide behind them."""
        inflight = self._in_flight(command_id, agent_id)
        if inflight is None:
            return False
        if frame_type == "ack":
            return inflight.started_at is None
        return frame_type == "result" and not inflight.reported

    async def _ownership(self, session: LiveSession, command_id: str) -> tuple[bool, float | None]:
        """Whether the command is the agent's own, and when it started.

        From memory for a command this process made and has not finished yet;
        from the store otherwise (which answers the agent if it is not its own).
        """
        inflight = self._in_flight(command_id, session.agent_id)
        if inflight is not None:
            return True, inflight.started_at
        command = await self.store.get_command(command_id)
        if command is None or command.agent_id != session.agent_id:
            session.complain(
                "agent {agent_id} reported on command {command_id} that is not its own",
                agent_id=session.agent_id,
                command_id=command_id,
            )
            session.send_frame(
                protocol.error_frame(protocol.UNKNOWN_COMMAND, "no such command here", command_id)
            )
            return False, None
        return True, command.started_at

    async def _transition(self, command_id: str, status: str, **fields: Any) -> Command | None:
        command = await self.store.transition(command_id, status, self.clock.seconds(), **fields)
        if command is not None:
            self._changed(command)
        return command

    def _changed(self, command: Command, replaces: str | None = None) -> None:
        """Tell followers; wake waiters and forget the secrets once the command is final.

        ``replaces``: the final status this one took the place of (a late result).
        """
        self.hub.publish(
            "command.status",
            {
                "command_id": command.command_id,
                "agent_id": command.agent_id,
                "verb": command.verb,
                "status": command.status,
            },
        )
        if command.status in lifecycle.FINAL:
            self.metrics.command_final(command)
            self._finished(command, replaces)

    def _finished(self, command: Command, replaces: str | None = None) -> None:
        command_id = command.command_id
        self._inflight.pop(command_id, None)
        self._outputs.pop(command_id, None)
        # Successes are the bulk of a busy fleet's traffic (the audit log, the events and
        # /metrics have every one): only outcomes that need a look are logged at info.
        emit = self.log.debug if command.status == lifecycle.SUCCEEDED else self.log.info
        emit(
            "command {command_id} {status}",
            command_id=command_id,
            status=command.status,
            agent_id=command.agent_id,
        )
        # Reported by the agent if it got the command; decided here otherwise.
        agent_reported = replaces is not None or (
            command.dispatched_at is not None
            and command.status not in (lifecycle.EXPIRED, lifecycle.LOST)
        )
        self.audit.record_later(
            command.agent_id if agent_reported else "system",
            "command.finished",
            f"command:{command_id}",
            command.status,
            {
                "agent_id": command.agent_id,
                "verb": command.verb,
                "exit_code": command.exit_code,
                "error": (command.error or {}).get("code"),
                # The audit log keeps both: the earlier record says lost, this one why not.
                **({"replaces": replaces} if replaces is not None else {}),
            },
        )
        for waiter in self._waiters.pop(command_id, []):
            waiter.callback(command)

    def wait(self, command_id: str, seconds: float) -> Deferred:
        """A Deferred firing with the finished command, or None after ``seconds``."""
        d: Deferred = Deferred()
        waiters = self._waiters.setdefault(command_id, [])
        waiters.append(d)
        timer = self.clock.callLater(seconds, self._release, command_id, d, None)
        d.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        return d

    async def wait_final(self, command_id: str, seconds: float) -> Command | None:
        """The command once final, or None after ``seconds``.

        Unlike ``wait`` this also covers a command that finished just before the
        call (a fast agent can answer before the API starts waiting).
        """
        d = self.wait(command_id, seconds)
        if command_id not in self._inflight:
            # Finished already, or made before a restart: the store knows.
            command = await self.store.get_command(command_id)
            if command is not None and command.status in lifecycle.FINAL:
                self._release(command_id, d, command)
        return await d

    def _release(self, command_id: str, d: Deferred, value: Command | None) -> None:
        waiters = self._waiters.get(command_id, [])
        if d in waiters:
            waiters.remove(d)
            if not waiters:
                self._waiters.pop(command_id, None)
            d.callback(value)


def _seconds(field: str, value: Any, default: float, maximum: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LedgerError(422, "INVALID_ARGS", f"{field} must be a number of seconds", field)
    if not 0 < value <= maximum:
        raise LedgerError(
            422, "INVALID_ARGS", f"{field} must be in (0, {maximum:g}] seconds", field
        )
    return float(value)
