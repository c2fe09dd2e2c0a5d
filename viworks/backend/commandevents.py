"""A command changed: what that carries, and the one way it travels (the event hub).

Every status change of a command (created dispatched, running, final; expired or lost
by a deadline; a late result replacing ``lost``) is recorded in the store and then
published on the hub as ONE ``command.status`` event, by ``CommandStatuses``. Whoever
cares follows the hub:

- Server-Sent Events clients get the wire form (``command_id``, ``agent_id``, ``verb``,
  ``status``: a contract);
- ``?wait`` requests (``viworks.backend.waiters.CommandWaiters``), the audit of outcomes
  (``OutcomeAudit``, here), the jobs (``viworks.backend.jobs``) and the ledger's memory
  of unfinished commands subscribe with ``details=True`` and get ``CommandChanged``: the
  command as stored after the change, and the final status a late result replaced.

An event without a ``CommandChanged`` (a relay of another process's event, which
carries the wire form only) means: read the store for the rest. The outcome audit and
the ledger's bookkeeping act only on changes this process made (they have one).
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime

from viworks import lifecycle
from viworks.backend import audit
from viworks.backend.events import Event, EventHub
from viworks.backend.model import Command
from viworks.backend.store import Store

#: The event type of a command's status change.
COMMAND_STATUS = "command.status"


@attrs.frozen
class CommandChanged:
    """A command's new status: the command as stored after the change; ``replaces``:
    the final status a late result took the place of (``lost``), else None."""

    command: Command
    replaces: str | None = None

    @property
    def final(self) -> bool:
        return self.command.status in lifecycle.FINAL

    def wire(self) -> dict[str, Any]:
        """The event's data as followers see it."""
        command = self.command
        return {
            "command_id": command.command_id,
            "agent_id": command.agent_id,
            "verb": command.verb,
            "status": command.status,
        }


def command_changed(event: Event) -> CommandChanged | None:
    """The change behind a ``command.status`` event, when the event carries it."""
    detail = event.detail
    return detail if isinstance(detail, CommandChanged) else None


class CommandStatuses:
    """Records a command's status changes in the store and publishes each on the hub."""

    def __init__(self, store: Store, hub: EventHub, clock: IReactorTime) -> None:
        self.store = store
        self.hub = hub
        self.clock = clock

    async def transition(self, command_id: str, status: str, **fields: Any) -> Command | None:
        """Compare-and-set the status (``expected=``, the other fields: ``Store.transition``);
        the command after the change, or None when it did not apply."""
        command = await self.store.transition(command_id, status, self.clock.seconds(), **fields)
        if command is not None:
            self.changed(command)
        return command

    def changed(self, command: Command, replaces: str | None = None) -> None:
        """Publish a change already recorded (by a deadline sweep, or a late result)."""
        change = CommandChanged(command, replaces)
        self.hub.publish(COMMAND_STATUS, change.wire(), change)


class OutcomeAudit:
    """Audits every command this process finished: ``command.finished``, by the agent
    when it reported the outcome, by ``system`` when the backend decided it (expired,
    lost, cancelled before delivery)."""

    def __init__(self, hub: EventHub, audit_log: audit.AuditLog) -> None:
        self.audit = audit_log
        hub.subscribe(self._on_event, details=True)

    def _on_event(self, event: Event) -> None:
        change = command_changed(event)
        if change is None or not change.final:
            return
        command, replaces = change.command, change.replaces
        # Reported by the agent if it got the command; decided here otherwise.
        agent_reported = replaces is not None or (
            command.dispatched_at is not None
            and command.status not in (lifecycle.EXPIRED, lifecycle.LOST)
        )
        self.audit.record_later(
            command.agent_id if agent_reported else "system",
            "command.finished",
            f"command:{command.command_id}",
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
