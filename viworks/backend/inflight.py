"""The unfinished commands this process made: the command path's memory of them.

It spares the hot path a store read per frame (whose command is this? when did it
start?) and holds the commands' unredacted args: secrets are never stored, so after a
restart a command that has them cannot be delivered (``SECRETS_UNAVAILABLE``). The
ledger adds a command when it creates it and forgets it when its final status passes
on the hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class InFlight:
    """One unfinished command made by this process."""

    agent_id: str
    args: dict[str, Any]
    dispatched: bool = False  # sent to the agent (output is accepted from now on)
    started_at: float | None = None  # set by the agent's ack
    reported: bool = False  # its result has arrived (it is being recorded)


class InFlightCommands:
    """``InFlight`` by command id."""

    def __init__(self) -> None:
        self._commands: dict[str, InFlight] = {}

    def add(self, command_id: str, agent_id: str, args: dict[str, Any]) -> InFlight:
        inflight = self._commands[command_id] = InFlight(agent_id, args)
        return inflight

    def get(self, command_id: str) -> InFlight | None:
        return self._commands.get(command_id)

    def of_agent(self, command_id: str, agent_id: str) -> InFlight | None:
        """The command if it is ``agent_id``'s, else None."""
        inflight = self._commands.get(command_id)
        return inflight if inflight is not None and inflight.agent_id == agent_id else None

    def forget(self, command_id: str) -> None:
        self._commands.pop(command_id, None)
