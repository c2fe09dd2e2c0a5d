"""An agent session whose HELLO was accepted: the ``LiveSession`` the registry holds.

The connection (``viworks.backend.sessions.AgentSession``) exists from the WebSocket
upgrade on; a ``WelcomedSession`` only once the agent is known, so its agent and
session ids are never missing. The ledger and the dispatcher talk to it; its
connection does the work.
"""

from __future__ import annotations

from typing import Protocol

from viworks.backend import audit
from viworks.backend.registry import LiveSession
from viworks.logs import Logger


class AgentConnection(Protocol):
    """What a welcomed session needs from its connection."""

    @property
    def peer(self) -> str | None: ...

    @property
    def cert_serial(self) -> str | None: ...

    def send_frame(self, payload: bytes) -> None: ...

    def complain(self, log_format: str, **fields: object) -> None: ...

    def close_replaced(self) -> None: ...

    def close_going_away(self, retry_after: float) -> None: ...

    def close_revoked(self) -> None: ...

    def abort(self) -> None: ...


class WelcomedSession:
    """One agent's session after its HELLO (``LiveSession``)."""

    log = Logger()

    def __init__(
        self, connection: AgentConnection, agent_id: str, session_id: str, agent_protocol: int
    ) -> None:
        self.connection = connection
        self.agent_id = agent_id
        self.session_id = session_id
        # hello.protocol: which signatures the agent verifies.
        self.agent_protocol = agent_protocol

    @property
    def peer(self) -> str | None:
        return self.connection.peer

    @property
    def cert_serial(self) -> str | None:
        """The hex serial of the certificate it connected with (None when unknown)."""
        return self.connection.cert_serial

    def send_frame(self, payload: bytes) -> None:
        self.connection.send_frame(payload)

    def complain(self, log_format: str, **fields: object) -> None:
        self.connection.complain(log_format, **fields)

    def close_replaced(self) -> None:
        self.connection.close_replaced()

    def close_going_away(self, retry_after: float) -> None:
        self.connection.close_going_away(retry_after)

    def close_revoked(self) -> None:
        self.connection.close_revoked()

    def abort(self) -> None:
        self.connection.abort()

    def replacing(self, old: LiveSession, audit_log: audit.AuditLog) -> None:
        """This session takes ``old``'s place: with another certificate, say so (logged,
        audited): two live certificates for one agent id may mean one was stolen."""
        if old.cert_serial == self.cert_serial:
            return
        self.log.warn(
            "agent {agent_id}: session {old_session} (certificate {old_serial}, {old_peer})"
            " replaced by certificate {new_serial} from {peer}",
            agent_id=self.agent_id,
            old_session=old.session_id,
            old_serial=old.cert_serial,
            old_peer=old.peer,
            new_serial=self.cert_serial,
            peer=self.peer,
        )
        audit_log.record_later(
            self.agent_id,
            "session.replaced",
            f"agent:{self.agent_id}",
            audit.OK,
            {
                "old_serial": old.cert_serial,
                "new_serial": self.cert_serial,
                "old_peer": old.peer,
                "new_peer": self.peer,
                "old_session": old.session_id,
                "new_session": self.session_id,
            },
        )
