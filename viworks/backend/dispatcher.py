"""Putting commands on the wire: command and cancel frames, signed, to an agent's session.

The dispatcher encodes a command (or a cancel) as the agent protocol's frame, signs it
when ``[signing]`` is on (a fresh nonce and ``issued_at`` at every delivery) and sends
it to the agent's session. When an agent says HELLO it delivers everything that waited
for it, oldest first, and the cancellations asked for meanwhile.

What it needs from a session is ``Recipient``: which agent, which signatures it
verifies (its HELLO's protocol), and a way to send a frame. A delivery is decided in
the store (compare-and-set to ``dispatched``), so of two dispatchers racing for one
command only one sends it.
"""

from __future__ import annotations

from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.interfaces import IReactorTime

from viworks import lifecycle, protocol, signing
from viworks.backend.commandevents import CommandStatuses
from viworks.backend.deadlines import Deadlines
from viworks.backend.inflight import InFlightCommands
from viworks.backend.metrics import Metrics
from viworks.backend.model import Command
from viworks.backend.registry import LiveSession, SessionRegistry
from viworks.backend.secrecy import SecretParams
from viworks.backend.store import Store
from viworks.logs import Logger


class Recipient(Protocol):
    """What the dispatcher needs from an agent's session."""

    @property
    def agent_id(self) -> str: ...

    @property
    def agent_protocol(self) -> int:
        """hello.protocol: which signatures the agent verifies."""

    def send_frame(self, payload: bytes) -> None: ...


class Dispatcher:
    """Sends commands and cancellations to agents (see the module's doc)."""

    log = Logger()

    def __init__(
        self,
        *,
        store: Store,
        registry: SessionRegistry,
        clock: IReactorTime,
        inflight: InFlightCommands,
        statuses: CommandStatuses,
        deadlines: Deadlines,
        metrics: Metrics,
        secrets: SecretParams,
        signing_key: Ed25519PrivateKey | None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.clock = clock
        self.inflight = inflight
        self.statuses = statuses
        self.deadlines = deadlines
        self.metrics = metrics
        self.secrets = secrets
        # The Ed25519 key of [signing] (None: commands go out unsigned).
        self.signing_key = signing_key

    def set_signing_key(self, key: Ed25519PrivateKey | None) -> None:
        """Sign the next deliveries with ``key`` (SIGHUP); None sends them unsigned."""
        self.signing_key = key

    # -- frames ---------------------------------------------------------------------------

    def send(
        self,
        session: Recipient,
        command: Command,
        args: dict[str, Any] | None,
        now: float,
        redacted: bool = False,
    ) -> None:
        """Send the command frame (with ``args``, or the stored ones if None) and watch
        for its loss. ``redacted``: a redelivery whose secret args are gone, which the
        agent may answer from its journal."""
        command_id = command.command_id
        timeout = _timeout_of(command)
        sent_args = command.args if args is None else args
        extra: dict[str, Any] = {}
        if redacted:
            extra["redacted"] = True
        if self.signing_key is not None:
            envelope = signing.envelope_for(
                command_id=command_id,
                agent_id=session.agent_id,
                verb=command.verb,
                args=sent_args,
                expires_at=command.expires_at,
                timeout=timeout,
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
                timeout=timeout,
                expires_at=command.expires_at,
                **extra,
            )
        )
        self.log.debug(
            "command {command_id} dispatched to {agent_id}",
            command_id=command_id,
            agent_id=session.agent_id,
        )
        self.deadlines.watch_loss(now, timeout)

    def send_cancel(self, session: Recipient, command_id: str) -> None:
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

    # -- delivery on HELLO ------------------------------------------------------------------

    async def deliver_pending(self, session: LiveSession) -> int:
        """Send an agent that just said HELLO everything waiting for it, oldest first;
        how many commands were sent.

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
            self.send_cancel(session, command.command_id)
        return sent

    async def _dispatch(self, session: Recipient, command: Command) -> Command | None:
        command_id = command.command_id
        now = self.clock.seconds()
        expires_at = command.expires_at
        if command.status == lifecycle.QUEUED and expires_at is not None and expires_at <= now:
            return None  # the deadline sweep expires it
        inflight = self.inflight.get(command_id)
        args = None if inflight is None else inflight.args
        # After a backend restart the secret args of an unfinished command are gone.
        redacted = args is None and await self._has_secrets(command)
        if redacted and command.status == lifecycle.QUEUED:
            await self.statuses.transition(
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
        updated = await self.statuses.transition(
            command_id, lifecycle.DISPATCHED, expected=(command.status,), dispatched_at=now
        )
        if updated is None:
            return None
        if inflight is not None:
            inflight.dispatched = True
        if command.status == lifecycle.QUEUED:
            self.metrics.command_dispatched(command, now)
        self.send(session, command, args, now, redacted=redacted)
        return updated

    async def _has_secrets(self, command: Command) -> bool:
        agent = await self.store.get_agent(command.agent_id)
        params = (agent.verbs if agent else {}).get(command.verb, {}).get("params", {})
        return any(name in command.args for name in self.secrets.of(command.verb, params))


def _timeout_of(command: Command) -> float:
    """A command's timeout: the ledger gives every command one (the column allows none)."""
    if command.timeout is None:
        raise ValueError(f"command {command.command_id} has no timeout: it cannot be sent")
    return command.timeout
