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
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from viworks import protocol
from viworks.backend.registry import LiveSession, SessionRegistry
from viworks.logs import Logger
from viworks.schema import ArgsError, redact, validate_args

FINAL_STATUSES = frozenset(
    {"succeeded", "failed", "timed_out", "rejected", "cancelled", "expired", "lost"}
)
MAX_TIMEOUT = 86400.0


class LedgerError(Exception):
    """A request the ledger refuses; the API maps it to an HTTP status."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


class CommandLedger:
    """Creates, delivers and completes commands; wakes up API waiters."""

    log = Logger()

    def __init__(
        self,
        store: Any,
        registry: SessionRegistry,
        clock: IReactorTime,
        default_timeout: float = 60.0,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.store = store
        self.registry = registry
        self.clock = clock
        self.default_timeout = default_timeout
        self._new_id = new_id
        # Unredacted args of unfinished commands: secrets are never stored.
        self._args: dict[str, dict] = {}
        self._waiters: dict[str, list[Deferred]] = {}

    async def submit(self, agent_id: str, verb: Any, args: Any, timeout: Any = None) -> dict:
        """Validate and record a command, then deliver it if the agent is online."""
        agent = await self.store.get_agent(agent_id)
        if agent is None:
            raise LedgerError(404, "AGENT_NOT_FOUND", f"no agent {agent_id!r} is known")
        if not isinstance(verb, str) or verb not in agent["verbs"]:
            raise LedgerError(
                422, "UNKNOWN_VERB", f"agent {agent_id!r} does not offer verb {verb!r}", "verb"
            )
        params = agent["verbs"][verb].get("params", {})
        if args is None:
            args = {}
        try:
            args = validate_args(params, args)
        except ArgsError as e:
            raise LedgerError(422, "INVALID_ARGS", e.message, e.field) from None
        timeout = self._check_timeout(timeout)
        command_id = self._new_id()
        command = await self.store.create_command(
            {
                "command_id": command_id,
                "agent_id": agent_id,
                "verb": verb,
                "args": redact(params, args),
                "status": "queued",
                "timeout": timeout,
                "created_at": self.clock.seconds(),
            }
        )
        self._args[command_id] = args
        self.log.info(
            "command {command_id} {verb} queued for {agent_id}",
            command_id=command_id,
            verb=verb,
            agent_id=agent_id,
        )
        session = self.registry.get(agent_id)
        if session is not None:
            command = await self._dispatch(session, command, ("queued",)) or command
        return command

    def _check_timeout(self, timeout: Any) -> float:
        if timeout is None:
            return self.default_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise LedgerError(422, "INVALID_ARGS", "timeout must be a number of seconds", "timeout")
        if not 0 < timeout <= MAX_TIMEOUT:
            raise LedgerError(
                422, "INVALID_ARGS", f"timeout must be in (0, {MAX_TIMEOUT:g}] seconds", "timeout"
            )
        return float(timeout)

    async def deliver_pending(self, session: LiveSession) -> int:
        """Send an agent that just said HELLO everything waiting for it.

        Commands still ``dispatched`` (sent, never acknowledged) went down with
        an earlier link and are sent again; the rest are the queued ones.
        """
        sent = 0
        unacknowledged = await self.store.list_commands(
            agent_id=session.agent_id, status="dispatched", limit=10000
        )
        queued = await self.store.queued_commands(session.agent_id)
        for command in [*reversed(unacknowledged), *queued]:
            if not self.registry.is_current(session):
                break
            if await self._dispatch(session, command, (command["status"],)):
                sent += 1
        return sent

    async def _dispatch(
        self, session: LiveSession, command: dict, expected: tuple[str, ...]
    ) -> dict | None:
        command_id = command["command_id"]
        args = self._args.get(command_id, command["args"])
        if command_id not in self._args and await self._lost_secrets(command):
            await self._finish(
                command_id,
                expected,
                status="failed",
                error={
                    "code": "SECRETS_UNAVAILABLE",
                    "message": "the backend restarted before delivery; secret arguments are "
                    "never stored, submit the command again",
                },
            )
            return None
        # Compare-and-set first: of two racing dispatchers only one sends.
        updated = await self.store.update_command_if(
            command_id, expected, status="dispatched", dispatched_at=self.clock.seconds()
        )
        if updated is None:
            return None
        session.send_frame(
            protocol.encode(
                "command",
                command_id=command_id,
                verb=command["verb"],
                args=args,
                timeout=command["timeout"],
            )
        )
        self.log.info(
            "command {command_id} dispatched to {agent_id}",
            command_id=command_id,
            agent_id=session.agent_id,
        )
        return updated

    async def _lost_secrets(self, command: dict) -> bool:
        agent = await self.store.get_agent(command["agent_id"])
        params = (agent or {}).get("verbs", {}).get(command["verb"], {}).get("params", {})
        return any(
            spec.get("type") == "secret" and name in command["args"]
            for name, spec in params.items()
        )

    async def on_ack(self, session: LiveSession, command_id: str) -> None:
        """The agent accepted a command and is running it."""
        if await self._owned(session, command_id) is None:
            return
        await self.store.update_command_if(
            command_id, ("dispatched",), status="running", started_at=self.clock.seconds()
        )

    async def on_result(self, session: LiveSession, fields: dict) -> None:
        """Record a final result reported by the agent (duplicates are ignored)."""
        command_id = fields["command_id"]
        command = await self._owned(session, command_id)
        if command is None:
            return
        now = self.clock.seconds()
        finished = await self._finish(
            command_id,
            ("dispatched", "running"),
            status=fields["status"],
            exit_code=fields["exit_code"],
            result=fields["result"],
            stdout=fields["stdout"],
            stderr=fields["stderr"],
            stdout_truncated=fields["stdout_truncated"],
            stderr_truncated=fields["stderr_truncated"],
            error=fields["error"],
            started_at=command["started_at"] or fields["started_at"] or now,
            finished_at=now,
        )
        if finished is None:
            self.log.info(
                "duplicate result for {command_id} from {agent_id} ignored",
                command_id=command_id,
                agent_id=session.agent_id,
            )

    async def _owned(self, session: LiveSession, command_id: str) -> dict | None:
        command = await self.store.get_command(command_id)
        if command is None or command["agent_id"] != session.agent_id:
            self.log.warn(
                "agent {agent_id} reported on command {command_id} that is not its own",
                agent_id=session.agent_id,
                command_id=command_id,
            )
            session.send_frame(
                protocol.error_frame(
                    protocol.UNKNOWN_COMMAND, "no such command for you", command_id
                )
            )
            return None
        return command

    async def _finish(self, command_id: str, expected: tuple[str, ...], **fields: Any):
        command = await self.store.update_command_if(command_id, expected, **fields)
        if command is None:
            return None
        self._args.pop(command_id, None)
        self.log.info(
            "command {command_id} {status}", command_id=command_id, status=command["status"]
        )
        for waiter in self._waiters.pop(command_id, []):
            waiter.callback(command)
        return command

    def wait(self, command_id: str, seconds: float) -> Deferred:
        """A Deferred firing with the finished command, or None after ``seconds``."""
        d: Deferred = Deferred()
        waiters = self._waiters.setdefault(command_id, [])
        waiters.append(d)

        def give_up() -> None:
            if d in waiters:
                waiters.remove(d)
                if not waiters:
                    self._waiters.pop(command_id, None)
                d.callback(None)

        timer = self.clock.callLater(seconds, give_up)
        d.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        return d
