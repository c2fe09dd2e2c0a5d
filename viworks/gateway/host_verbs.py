"""Verbs about the host itself: ping and system_health (no subprocess)."""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.interfaces import IReactorTime

from viworks.gateway import health
from viworks.gateway.verbs import Verb
from viworks.timeutil import rfc3339


def verbs(clock: IReactorTime | None = None) -> list[Verb]:
    """ping and system_health."""

    def ping(_args: dict[str, Any]) -> dict[str, Any]:
        now = clock.seconds() if clock is not None else time.time()
        return {"pong": True, "agent_time": rfc3339(now)}

    return [
        Verb(
            name="ping",
            params={},
            description="Check that the agent answers; returns its clock.",
            timeout=5.0,
            call=ping,
        ),
        Verb(
            name="system_health",
            params={},
            description="Load, memory, CPU, uptime, disk and network counters.",
            timeout=10.0,
            call=lambda _args: health.system_health(),
        ),
    ]
