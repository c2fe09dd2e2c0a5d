"""Which agent sessions are live right now (in memory; the store keeps history)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol


class LiveSession(Protocol):
    """What the rest of the backend needs from a welcomed agent session."""

    @property
    def agent_id(self) -> str: ...

    @property
    def session_id(self) -> str: ...

    @property
    def agent_protocol(self) -> int:
        """hello.protocol: which signatures the agent verifies
        (viworks.protocol.HELLO_PROTOCOL)."""

    @property
    def peer(self) -> str | None:
        """Where it connects from (for logs and the audit)."""

    @property
    def cert_serial(self) -> str | None:
        """The hex serial of its client certificate (None when unknown)."""

    def send_frame(self, payload: bytes) -> None: ...

    def complain(self, log_format: str, **fields: object) -> None:
        """Log a warning this agent caused (throttled: an agent must not flood the log)."""

    def close_replaced(self) -> None: ...

    def close_going_away(self, retry_after: float) -> None: ...

    def abort(self) -> None: ...

    def close_revoked(self) -> None:
        """Its certificate was revoked: close now (audited)."""


class SessionRegistry:
    """One live session per agent id; a newer session replaces an older one."""

    def __init__(self) -> None:
        self._sessions: dict[str, LiveSession] = {}

    def register(self, session: LiveSession) -> LiveSession | None:
        """Make ``session`` the agent's current one; return the one it replaced."""
        old = self._sessions.get(session.agent_id)
        self._sessions[session.agent_id] = session
        return old if old is not session else None

    def unregister(self, session: LiveSession) -> bool:
        """Forget ``session`` if it is still current; False when it was already replaced."""
        if self._sessions.get(session.agent_id) is session:
            del self._sessions[session.agent_id]
            return True
        return False

    def get(self, agent_id: str) -> LiveSession | None:
        return self._sessions.get(agent_id)

    def is_current(self, session: LiveSession) -> bool:
        return self._sessions.get(session.agent_id) is session

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[LiveSession]:
        return iter(list(self._sessions.values()))
