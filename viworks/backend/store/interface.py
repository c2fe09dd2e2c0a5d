"""``Store``: what the backend asks of its persistence, as a typing Protocol.

Collaborators (ledger, sessions, API, jobs, audit, the CLI) annotate ``store:
Store``; both engines (``SQLiteStore``, ``PostgresStore``) satisfy it (checked by
mypy below), and so does ``Metrics.timed_store``'s timing proxy. Every method
returns the domain values of :mod:`viworks.backend.model`, never rows. The
docstrings of the implementations (``store/agents.py``, ``store/commands.py``...)
say what each call does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from viworks.backend.auditchain import Head
from viworks.backend.model import (
    OPERATOR,
    Agent,
    AgentCertificate,
    AgentSummary,
    AuditRecord,
    Command,
    CommandEvent,
    ConsoleSession,
    Job,
    JobTarget,
    NewCommand,
    OutputChunk,
    Revocation,
    TelemetryReport,
    Token,
)


class Store(Protocol):
    """The viworks store: agents, the command ledger, jobs, tokens, revocations, audit."""

    # -- lifecycle, health -----------------------------------------------------------------

    async def open(self) -> int: ...
    async def close(self) -> None: ...
    async def probe_write(self) -> None: ...
    def unwritable(self, error: BaseException) -> bool: ...

    # -- agents ----------------------------------------------------------------------------

    async def upsert_agent_online(
        self,
        agent_id: str,
        *,
        version: str | None,
        site: str | None,
        hostname: str | None,
        protocol: int | None,
        verbs: Mapping[str, Any],
        peer: str | None,
        session_id: str,
        labels: Mapping[str, Any] | None,
        now: float,
        cert_serial: str | None = None,
        signing: str = "off",
        cert_not_after: float | None = None,
    ) -> Agent: ...
    async def touch_agent(self, agent_id: str, now: float) -> bool: ...
    async def mark_agent_offline(self, agent_id: str, session_id: str, now: float) -> bool: ...
    async def mark_all_agents_offline(self, now: float) -> int: ...
    async def get_agent(self, agent_id: str) -> Agent | None: ...
    async def list_agents(self) -> list[Agent]: ...
    async def agent_keys(self) -> list[AgentSummary]: ...
    async def agents_by_id(self, agent_ids: Sequence[str]) -> list[Agent]: ...
    async def record_certificate(self, agent_id: str, serial: str, now: float) -> None: ...
    async def agent_certificates(
        self, agent_id: str | None = None, serial: str | None = None
    ) -> list[AgentCertificate]: ...

    # -- commands and their output ---------------------------------------------------------

    async def create_command(
        self, command: NewCommand, *, dispatched_at: float | None = None
    ) -> Command: ...
    async def create_command_idempotent(
        self,
        command: NewCommand,
        *,
        token_name: str,
        key: str,
        request_hash: str,
        dispatched_at: float | None = None,
    ) -> tuple[Command, bool]: ...
    async def get_command(self, command_id: str) -> Command | None: ...
    async def list_commands(
        self, agent_id: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[Command]: ...
    async def commands_in(self, agent_id: str, statuses: Sequence[str]) -> list[Command]: ...
    async def transition(
        self,
        command_id: str,
        status: str,
        at: float,
        *,
        expected: Sequence[str] | None = None,
        detail: Any = None,
        **fields: Any,
    ) -> Command | None: ...
    async def command_events(self, command_id: str) -> list[CommandEvent]: ...
    async def expire_due(self, now: float) -> list[Command]: ...
    async def next_expiry(self) -> float | None: ...
    async def lose_overdue(self, now: float, grace: float) -> list[Command]: ...
    async def next_loss_deadline(self) -> float | None: ...
    async def request_cancel(self, command_id: str, at: float) -> Command | None: ...
    async def cancels_pending(self, agent_id: str) -> list[Command]: ...
    async def append_output(
        self, command_id: str, chunks: Iterable[Sequence[Any]], at: float
    ) -> int: ...
    async def mark_output_truncated(self, command_id: str, stream: str) -> None: ...
    async def output_since(
        self, command_id: str, after_seq: int = -1, limit: int = 1000
    ) -> list[OutputChunk]: ...
    async def output_text(self, command_id: str) -> tuple[str, str]: ...

    # -- telemetry -------------------------------------------------------------------------

    async def record_telemetry(
        self,
        agent_id: str,
        at: float,
        data: Mapping[str, Any],
        keep: int = 2880,
        max_bytes: int | None = None,
    ) -> None: ...
    async def latest_telemetry(self, agent_id: str) -> TelemetryReport | None: ...
    async def telemetry_history(
        self, agent_id: str, limit: int = 100, since: float | None = None
    ) -> list[TelemetryReport]: ...

    # -- jobs ------------------------------------------------------------------------------

    async def create_job(self, job: Job, agent_ids: Sequence[str]) -> Job: ...
    async def get_job(self, job_id: str) -> Job | None: ...
    async def list_jobs(
        self, statuses: Sequence[str] | None = None, limit: int | None = 100
    ) -> list[Job]: ...
    async def update_job(
        self, job_id: str, at: float, *, expected: Sequence[str] | None = None, **fields: Any
    ) -> Job | None: ...
    async def job_targets(self, job_id: str) -> list[JobTarget]: ...
    async def job_counts(self, job_ids: Sequence[str]) -> dict[str, dict[str, int]]: ...
    async def settle_job_target(
        self,
        job_id: str,
        position: int,
        *,
        command_id: str | None = None,
        outcome: str | None = None,
        error: Any = None,
    ) -> bool: ...

    # -- tokens and console sessions -------------------------------------------------------

    async def create_token(
        self,
        name: str,
        token_hash: str,
        now: float,
        *,
        role: str = OPERATOR,
        verbs: Sequence[str] | None = None,
        sites: Sequence[str] | None = None,
        expires_at: float | None = None,
    ) -> Token: ...
    async def token_name_for_hash(self, token_hash: str) -> str | None: ...
    async def token_for_hash(self, token_hash: str) -> Token | None: ...
    async def list_tokens(self) -> list[Token]: ...
    async def revoke_token(self, name: str, now: float) -> bool: ...
    async def create_console_session(
        self, session_hash: str, token_name: str, now: float, expires_at: float
    ) -> None: ...
    async def console_session(self, session_hash: str) -> ConsoleSession | None: ...
    async def delete_console_session(self, session_hash: str) -> bool: ...

    # -- certificate revocations -----------------------------------------------------------

    async def revoke_certificate(
        self, serial: str, agent_id: str, now: float, reason: str | None = None
    ) -> bool: ...
    async def revocations_since(self, after_seq: int = 0) -> list[Revocation]: ...
    async def is_certificate_revoked(self, serial: str) -> bool: ...

    # -- audit log -------------------------------------------------------------------------

    async def append_audit(
        self,
        at: float,
        actor: str,
        action: str,
        target: str | None,
        outcome: str,
        detail: Any = None,
        *,
        after: Head | None = None,
        resume: bool = False,
    ) -> AuditRecord: ...
    async def audit_head(self) -> Head: ...
    async def audit_records(self, after_seq: int = 0, limit: int = 1000) -> list[AuditRecord]: ...
    async def audit_search(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        agent_id: str | None = None,
        outcome: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before_seq: int | None = None,
        after_seq: int | None = None,
        newest_first: bool = True,
        limit: int = 100,
    ) -> list[AuditRecord]: ...
    async def audit_seq_of_hash(self, record_hash: str) -> int | None: ...


if TYPE_CHECKING:
    from viworks.backend.store.postgres import PostgresStore
    from viworks.backend.store.sqlite import SQLiteStore

    def _engines_are_stores(sqlite: SQLiteStore, postgres: PostgresStore) -> list[Store]:
        # mypy checks that both engines satisfy the protocol.
        return [sqlite, postgres]
