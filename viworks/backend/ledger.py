"""The command ledger: a command's creation, cancellation, and what its agent reports.

Data flows API -> ledger -> dispatcher -> session: the ledger validates a command
against the schemas its agent announced, records it in the store, and has the
dispatcher send it to the agent's live session (now, or when the agent next says
HELLO). What the agent reports (ack, output, result) comes back here and is recorded
once; status changes are compare-and-set in the store, so a late or duplicated frame
can never overwrite a final status. Every change is published on the event hub
(``viworks.backend.commandevents``), which is how waiters, the audit, the jobs and
followers learn of it; deadlines are kept by ``viworks.backend.deadlines``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime

from viworks import lifecycle, protocol
from viworks.backend.bounds import MAX_TIMEOUT, MAX_TTL, check_seconds
from viworks.backend.commandevents import CommandStatuses, command_changed
from viworks.backend.deadlines import Deadlines
from viworks.backend.dispatcher import Dispatcher
from viworks.backend.errors import DomainError
from viworks.backend.events import Event, EventHub
from viworks.backend.inflight import InFlight, InFlightCommands
from viworks.backend.metrics import Metrics
from viworks.backend.model import Command, NewCommand
from viworks.backend.output_cap import STREAMS, OutputBudget, cap_text, utf8_size
from viworks.backend.registry import LiveSession, SessionRegistry
from viworks.backend.secrecy import SecretParams
from viworks.backend.store import IdempotencyConflict, Store
from viworks.logs import Logger
from viworks.schema import ArgsError, validate_args


@dataclass(frozen=True)
class Idempotency:
    """An ``Idempotency-Key`` scoped to the token that sent it, with the request's digest."""

    token_name: str
    key: str
    request_hash: str


class CommandLedger:
    """Creates and cancels commands; records what agents report on them."""

    log = Logger()

    def __init__(
        self,
        *,
        store: Store,
        registry: SessionRegistry,
        clock: IReactorTime,
        hub: EventHub,
        statuses: CommandStatuses,
        inflight: InFlightCommands,
        dispatcher: Dispatcher,
        deadlines: Deadlines,
        metrics: Metrics,
        secrets: SecretParams,
        default_timeout: float,
        default_ttl: float,
        max_output_bytes: int,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.store = store
        self.registry = registry
        self.clock = clock
        self.hub = hub
        self.statuses = statuses
        self.inflight = inflight
        self.dispatcher = dispatcher
        self.deadlines = deadlines
        self.metrics = metrics
        # Which parameters are secret for every agent (the sessions teach it each HELLO).
        self.secrets = secrets
        self.default_timeout = default_timeout
        self.default_ttl = default_ttl
        self._new_id = new_id
        # [backend] max_output_bytes per stream, and what each running command has used.
        self.max_output_bytes = max_output_bytes
        self._outputs: dict[str, OutputBudget] = {}
        # agent id -> (session id, verbs announced in that session's HELLO).
        self._verbs: dict[str, tuple[str, dict[str, Any]]] = {}
        # Final commands leave the memory as their status passes on the hub.
        hub.subscribe(self._on_event, details=True)

    async def start(self) -> None:
        """Learn what agents announced before this process started (the store is open)."""
        for agent in await self.store.list_agents():
            self.secrets.learn(agent.verbs)

    # -- submission -----------------------------------------------------------------------

    async def submit(
        self,
        agent_id: str,
        verb: object,
        args: object,
        timeout: object = None,
        ttl: object = None,
        idempotency: Idempotency | None = None,
    ) -> tuple[Command, bool]:
        """Validate and record a command, then deliver it if the agent is online.

        Returns ``(command, created)``; ``created`` is False when an earlier
        request with the same idempotency key made the command.
        """
        verbs = await self._verbs_of(agent_id)
        if not isinstance(verb, str) or verb not in verbs:
            raise DomainError(
                "UNKNOWN_VERB", f"agent {agent_id!r} does not offer verb {verb!r}", "verb"
            )
        params = verbs[verb].get("params", {})
        try:
            valid_args = validate_args(params, {} if args is None else args)
        except ArgsError as e:
            raise DomainError("INVALID_ARGS", e.message, e.field) from None
        checked_timeout = check_seconds("timeout", timeout, MAX_TIMEOUT)
        checked_ttl = check_seconds("ttl", ttl, MAX_TTL)
        command_timeout = self.default_timeout if checked_timeout is None else checked_timeout
        now = self.clock.seconds()
        new = NewCommand(
            command_id=self._new_id(),
            agent_id=agent_id,
            verb=verb,
            args=self.secrets.redact(verb, params, valid_args),
            timeout=command_timeout,
            created_at=now,
            expires_at=now + (self.default_ttl if checked_ttl is None else checked_ttl),
        )
        # Agent online: stored as dispatched and sent in one go (one transaction less
        # on the way to the agent); otherwise queued until its next HELLO.
        dispatched_at = now if self.registry.get(agent_id) is not None else None
        command, created = await self._create(new, dispatched_at, idempotency)
        if not created:
            return command, False
        command_id = command.command_id
        inflight = self.inflight.add(command_id, agent_id, valid_args)
        self.log.debug(
            "command {command_id} {verb} queued for {agent_id}",
            command_id=command_id,
            verb=verb,
            agent_id=agent_id,
        )
        self.deadlines.wake_at(command.expires_at)
        if dispatched_at is not None:  # stored dispatched
            inflight.dispatched = True
            self.metrics.command_dispatched(command, dispatched_at)
            self.statuses.changed(command)
            self.deadlines.watch_loss(dispatched_at, command_timeout)
            # The session may have changed while the row was written: send to the
            # current one. None: the next HELLO's delivery sends it (dispatched ones too).
            session = self.registry.get(agent_id)
            if session is not None:
                self.dispatcher.send(session, command, valid_args, dispatched_at)
        return command, True

    async def _create(
        self, new: NewCommand, dispatched_at: float | None, idempotency: Idempotency | None
    ) -> tuple[Command, bool]:
        if idempotency is None:
            return await self.store.create_command(new, dispatched_at=dispatched_at), True
        try:
            return await self.store.create_command_idempotent(
                new,
                token_name=idempotency.token_name,
                key=idempotency.key,
                request_hash=idempotency.request_hash,
                dispatched_at=dispatched_at,
            )
        except IdempotencyConflict:
            raise DomainError(
                "IDEMPOTENCY_CONFLICT", "this Idempotency-Key was used for a different request"
            ) from None

    async def _verbs_of(self, agent_id: str) -> dict[str, Any]:
        """The verbs the agent offers: remembered per live session (they change only
        with a new HELLO), read from the store otherwise."""
        session = self.registry.get(agent_id)
        remembered = self._verbs.get(agent_id)
        if session is not None and remembered is not None:
            if remembered[0] == session.session_id:
                return remembered[1]
        agent = await self.store.get_agent(agent_id)
        if agent is None:
            raise DomainError("AGENT_NOT_FOUND", f"no agent {agent_id!r} is known")
        if session is not None and agent.session_id == session.session_id:
            self._verbs[agent_id] = (session.session_id, agent.verbs)
        return agent.verbs

    async def cancel(self, command_id: str) -> Command:
        """Cancel a command: a queued one at once, a running one through its agent."""
        command = await self.store.get_command(command_id)
        if command is None:
            raise DomainError("COMMAND_NOT_FOUND", f"no command {command_id!r}")
        if command.status == lifecycle.QUEUED:
            cancelled = await self.statuses.transition(
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
            raise DomainError(
                "ALREADY_FINISHED",
                f"the command is already {current.status if current else 'gone'}",
            )
        session = self.registry.get(requested.agent_id)
        if session is not None:
            self.dispatcher.send_cancel(session, command_id)
        self.log.info(
            "command {command_id}: cancel requested",
            command_id=command_id,
            agent_id=requested.agent_id,
        )
        return requested

    # -- what agents report ---------------------------------------------------------------

    async def on_output(self, session: LiveSession, fields: dict[str, Any]) -> None:
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
        inflight = self.inflight.get(command_id)
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

    def _result_output(self, command_id: str, fields: dict[str, Any]) -> dict[str, Any]:
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

    async def on_ack(self, session: LiveSession, command_id: str) -> None:
        """The agent accepted a command and is running it."""
        if not (await self._ownership(session, command_id))[0]:
            return
        now = self.clock.seconds()
        inflight = self.inflight.of_agent(command_id, session.agent_id)
        if inflight is not None:
            inflight.started_at = now
        await self.statuses.transition(
            command_id, lifecycle.RUNNING, expected=(lifecycle.DISPATCHED,), started_at=now
        )

    async def on_result(self, session: LiveSession, fields: dict[str, Any]) -> None:
        """Record a final result (once) and acknowledge it so the agent stops replaying it."""
        command_id = fields["command_id"]
        own, started_at = await self._ownership(session, command_id)
        inflight = self.inflight.of_agent(command_id, session.agent_id)
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
            finished = await self.statuses.transition(command_id, fields["status"], **outcome)
            if finished is None:
                await self._late_result(session, command_id, fields["status"], outcome)
        # Acknowledge even what we ignored: the agent must not replay it forever.
        session.send_frame(protocol.encode("result_ack", command_id=command_id))

    async def _late_result(
        self, session: LiveSession, command_id: str, status: str, outcome: dict[str, Any]
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
                self.statuses.changed(replaced, replaces=lifecycle.LOST)
                return
            command = await self.store.get_command(command_id)
        self.log.info(
            "result {status} for {command_id} ignored: the command is already {current}",
            status=status,
            command_id=command_id,
            current=command.status if command else None,
        )

    def expects(self, frame_type: str, command_id: str, agent_id: str) -> bool:
        """True for the answers this agent still owes on the command: its ``ack`` (until
        one arrives) and its ``result`` (until the command is final). At most one each
        per command, so a flood cannot hide behind them."""
        inflight = self.inflight.of_agent(command_id, agent_id)
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
        inflight: InFlight | None = self.inflight.of_agent(command_id, session.agent_id)
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

    # -- bookkeeping, from the hub ----------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        """A command this process changed is final: forget it, count it, log it."""
        change = command_changed(event)
        if change is None or not change.final:
            return
        command = change.command
        command_id = command.command_id
        self.inflight.forget(command_id)
        self._outputs.pop(command_id, None)
        self.metrics.command_final(command)
        # Successes are the bulk of a busy fleet's traffic (the audit log, the events and
        # /metrics have every one): only outcomes that need a look are logged at info.
        emit = self.log.debug if command.status == lifecycle.SUCCEEDED else self.log.info
        emit(
            "command {command_id} {status}",
            command_id=command_id,
            status=command.status,
            agent_id=command.agent_id,
        )
