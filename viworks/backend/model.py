"""The backend's domain values: what the store returns and takes (pure: attrs + stdlib).

Frozen attrs classes, built from rows in one place (the store's row loaders,
``viworks.backend.store.columns``) and never mutated: ``attrs.evolve`` makes a
changed copy. JSON values (a command's ``args``, an agent's ``verbs``) are plain
dicts and lists, decoded once when the row is read; nobody changes them in place.

Adding a stored field: add it here, declare its column in the store module of its
aggregate (``store/commands.py``: ``COMMANDS``), append a migration
(``store/schema.py``). A command field shows up in the API's view unless it is
marked ``metadata=HIDDEN`` (``viworks.backend.api.views.command_json``).

The job statuses and the token roles are defined here, once.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

#: Field metadata: a field the API's JSON view of its value leaves out.
HIDDEN: Final = {"api": False}

# -- job statuses (the jobs table's CHECK constraint lists the same) -------------------------

JOB_RUNNING: Final = "running"
JOB_PAUSED: Final = "paused"
JOB_STOPPED: Final = "stopped"
JOB_COMPLETED: Final = "completed"
JOB_CANCELLED: Final = "cancelled"
JOB_STATUSES: Final = frozenset(
    {JOB_RUNNING, JOB_PAUSED, JOB_STOPPED, JOB_COMPLETED, JOB_CANCELLED}
)

#: What a job target without a command ended as (the job_targets table's CHECK).
TARGET_EXPIRED: Final = "expired"
TARGET_REJECTED: Final = "rejected"
TARGET_OUTCOMES: Final = frozenset({TARGET_EXPIRED, TARGET_REJECTED})

# -- API token roles, least to most privileged (the tokens table's CHECK) --------------------

VIEWER: Final = "viewer"
OPERATOR: Final = "operator"
ADMIN: Final = "admin"
TOKEN_ROLES: Final = (VIEWER, OPERATOR, ADMIN)

#: The streams of a command's output.
OUTPUT_STREAMS: Final = ("stdout", "stderr")


def api_fields(cls: type[Any]) -> tuple[str, ...]:
    """The names of an attrs class's fields that its API view shows, in order."""
    return tuple(f.name for f in attrs.fields(cls) if f.metadata.get("api", True))


# -- agents ----------------------------------------------------------------------------------


@attrs.frozen
class Agent:
    """A gateway agent as last seen: what its HELLO said and its session.

    ``status`` is the stored one (the API reports the live registry's view);
    ``epoch`` counts its sessions (a fencing counter, 1 after the first).
    """

    agent_id: str
    status: str
    version: str | None
    site: str | None
    hostname: str | None
    protocol: int | None
    verbs: dict[str, Any]
    connected_at: float | None
    last_seen: float | None
    peer: str | None
    session_id: str | None
    labels: dict[str, Any]
    epoch: int
    cert_serial: str | None
    signing: str
    cert_not_after: float | None


@attrs.frozen
class AgentSummary:
    """What filtering, counting and paging a fleet needs of an agent (no verb schemas)."""

    agent_id: str
    site: str | None
    labels: dict[str, Any]
    version: str | None
    cert_serial: str | None
    cert_not_after: float | None


@attrs.frozen
class AgentCertificate:
    """A certificate (hex ``serial``) an agent id connected with, first and last seen.

    The times are None for a certificate known only as the one of the agent's last
    HELLO (connected before certificates were recorded at every handshake).
    """

    agent_id: str
    serial: str
    first_seen: float | None
    last_seen: float | None


@attrs.frozen
class Revocation:
    """A revoked certificate; ``seq`` orders revocations (pollers ask "since")."""

    seq: int
    serial: str
    agent_id: str
    revoked_at: float
    reason: str | None


@attrs.frozen
class TelemetryReport:
    """One host-metrics report of an agent."""

    at: float
    data: dict[str, Any]


# -- commands --------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class NewCommand:
    """A command to create (queued); every later field comes through its lifecycle.

    ``args`` are already redacted: secrets are never stored.
    """

    command_id: str
    agent_id: str
    verb: str
    created_at: float
    args: dict[str, Any] = attrs.Factory(dict)
    timeout: float | None = None
    expires_at: float | None = None


@attrs.frozen
class Command:
    """A command in the ledger. Fields are in the order of the API's view."""

    command_id: str
    agent_id: str
    verb: str
    args: dict[str, Any]
    status: str
    timeout: float | None
    exit_code: int | None
    result: Any
    stdout: str | None
    stderr: str | None
    error: dict[str, Any] | None
    stdout_truncated: bool
    stderr_truncated: bool
    created_at: float
    dispatched_at: float | None
    started_at: float | None
    finished_at: float | None
    expires_at: float | None
    cancel_requested_at: float | None = attrs.field(metadata=HIDDEN)

    def truncated(self, stream: str) -> bool:
        """Whether ``stream`` (stdout or stderr) was cut."""
        if stream == "stdout":
            return self.stdout_truncated
        if stream == "stderr":
            return self.stderr_truncated
        raise ValueError(f"output stream must be stdout or stderr, not {stream!r}")


@attrs.frozen
class CommandEvent:
    """A status a command took, when, and why (``detail``: JSON, or None)."""

    status: str
    at: float
    detail: Any


@attrs.frozen
class OutputChunk:
    """A chunk of a command's live output (``seq``: the agent's chunk number)."""

    seq: int
    stream: str
    data: str
    at: float


# -- jobs ------------------------------------------------------------------------------------


@attrs.frozen
class Job:
    """A verb fanned out to the agents a selector matched. Fields are in the order of
    the API's view.

    ``concurrency``/``max_errors`` keep what the operator asked (``"10%"`` or
    ``"3"``); ``*_limit`` is what it resolved to for the job's targets. ``args`` are
    redacted; ``has_secrets`` says the real ones existed only in memory.
    """

    job_id: str
    status: str
    verb: str
    args: dict[str, Any]
    selector: str
    concurrency: str
    max_errors: str
    concurrency_limit: int
    max_errors_limit: int
    canary: int | None
    canary_auto: bool
    canary_passed: bool
    timeout: float | None
    ttl: float
    created_by: str | None
    created_at: float
    updated_at: float
    finished_at: float | None = None
    error: dict[str, Any] | None = None
    has_secrets: bool = attrs.field(default=False, metadata=HIDDEN)


@attrs.frozen
class JobTarget:
    """One targeted agent of a job, in start order (``position``).

    ``status`` is its command's status, else its ``outcome`` (a target that never got
    a command), else ``pending``.
    """

    job_id: str
    position: int
    agent_id: str
    command_id: str | None
    outcome: str | None
    error: dict[str, Any] | None
    status: str


# -- tokens, console sessions ----------------------------------------------------------------


@attrs.frozen
class Token:
    """An API token (never its secret or hash). ``verbs``/``sites`` None: any."""

    name: str
    created_at: float
    role: str
    verbs: list[str] | None
    sites: list[str] | None
    expires_at: float | None
    revoked_at: float | None


@attrs.frozen
class ConsoleSession:
    """A web console session of ``token``, valid until ``expires_at``."""

    token: Token
    expires_at: float


# -- audit -----------------------------------------------------------------------------------


@attrs.frozen
class AuditRecord:
    """A record of the hash-chained audit log.

    ``detail`` is the stored canonical JSON text (what ``hash`` covers), or None.
    """

    seq: int
    at: float
    actor: str
    action: str
    target: str | None
    outcome: str
    detail: str | None
    prev_hash: str
    hash: str
