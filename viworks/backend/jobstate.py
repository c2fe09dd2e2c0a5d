"""A job's state in memory and its arithmetic (pure): targets, window, error budget, canary.

``TrackedJob`` is what ``viworks.backend.jobs.JobRunner`` keeps of a job it drives: the
row, its targets and a running tally of their statuses, and the decisions that follow
from them (how many targets may start now, whether the canary passed). ``job_json`` is
the API's view of a job. No I/O here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import DeferredLock
from twisted.internet.interfaces import IDelayedCall

from viworks import lifecycle
from viworks.backend.model import (
    JOB_CANCELLED,
    JOB_COMPLETED,
    JOB_PAUSED,
    JOB_RUNNING,
    JOB_STOPPED,
    TARGET_EXPIRED,
    TARGET_REJECTED,
    Job,
    JobTarget,
    api_fields,
)
from viworks.timeutil import rfc3339

# The job statuses (defined in viworks.backend.model), by their short names here.
RUNNING, PAUSED, STOPPED = JOB_RUNNING, JOB_PAUSED, JOB_STOPPED
COMPLETED, CANCELLED = JOB_COMPLETED, JOB_CANCELLED
ACTIVE = (RUNNING, PAUSED)
#: A target not started yet (no command).
PENDING = "pending"
#: Outcomes of targets that never got a command (see the job_targets table).
EXPIRED, REJECTED = TARGET_EXPIRED, TARGET_REJECTED
DONE = lifecycle.FINAL  # a target in one of these is finished (EXPIRED/REJECTED included)
SETTLED = lifecycle.SETTLED  # ... and will not change any more (all but lost)

DEFAULT_CONCURRENCY = 1
DEFAULT_MAX_ERRORS = 1


@dataclass
class Target:
    """One agent of a job: its place, its command (once started) and its status."""

    position: int
    agent_id: str
    command_id: str | None
    status: str

    @property
    def in_flight(self) -> bool:
        """Started and not finished."""
        return self.command_id is not None and self.status not in DONE


@dataclass(frozen=True)
class CanaryStep:
    """What the canary allows now: the targets that may start, and whether the job
    goes on past the canary (``passed``) or pauses for an operator (``pause``)."""

    eligible: list[Target]
    passed: bool = False
    pause: str | None = None  # why, when the job pauses


@dataclass
class TrackedJob:
    """A job being driven: its row, its targets (the tally kept current by ``update``),
    the real args (None when they were lost in a restart) and its driving state."""

    row: Job
    targets: list[Target]
    args: dict[str, Any] | None
    lock: DeferredLock = field(default_factory=DeferredLock)
    kick_pending: bool = False
    timer: IDelayedCall | None = None
    last_progress: tuple[str, list[tuple[str, int]]] | None = None
    # Kept up to date by update(): every status event of a 1,000-agent job would
    # otherwise count all its targets again (quadratic).
    tally: Counter[str] = field(init=False)
    running: int = field(init=False)

    def __post_init__(self) -> None:
        self.tally = Counter(t.status for t in self.targets)
        self.running = sum(1 for t in self.targets if t.in_flight)

    @property
    def job_id(self) -> str:
        return self.row.job_id

    def update(self, target: Target, status: str, command_id: str | None = None) -> None:
        """Set a target's status (and command); every change goes through here."""
        self.running -= target.in_flight
        self.tally[target.status] -= 1
        target.status = status
        if command_id is not None:
            target.command_id = command_id
        self.tally[status] += 1
        self.running += target.in_flight

    def counts(self) -> dict[str, int]:
        return {status: n for status, n in self.tally.items() if n}

    def errors(self) -> int:
        """Targets finished other than ``succeeded``."""
        return sum(
            n
            for status, n in self.tally.items()
            if status in DONE and status != lifecycle.SUCCEEDED
        )

    def in_flight(self) -> int:
        return self.running

    def pending(self, among: list[Target] | None = None) -> list[Target]:
        """The targets not started yet (of ``among``, or of all)."""
        if not self.tally[PENDING]:
            return []
        return [t for t in (self.targets if among is None else among) if t.status == PENDING]

    def error_budget(self) -> int:
        """How many more errors the job may make before ``max_errors`` stops it."""
        return self.row.max_errors_limit - self.errors()

    def room(self) -> int:
        """How many targets may start now: the window's free places, within the error
        budget (even if every one of them fails, no more than ``max_errors`` errors are
        made, exactly as if they were started one by one)."""
        return min(self.error_budget(), self.row.concurrency_limit - self.in_flight())

    def canary_step(self) -> CanaryStep:
        """Where the canary (the first ``canary`` targets) stands."""
        row = self.row
        if not row.canary or row.canary_passed:
            return CanaryStep(self.targets)
        canary = self.targets[: row.canary]
        if not all(t.status in DONE for t in canary):
            return CanaryStep(canary)
        succeeded = all(t.status == lifecycle.SUCCEEDED for t in canary)
        if succeeded and row.canary_auto:
            return CanaryStep(self.targets, passed=True)
        why = (
            f"the first {len(canary)} agents ran; resume to continue"
            if succeeded
            else f"not every one of the first {len(canary)} agents succeeded;"
            " resume to continue anyway"
        )
        return CanaryStep(canary, pause=why)

    def max_errors_error(self) -> dict[str, str]:
        """The job's ``error`` when ``max_errors`` stops it."""
        return {
            "code": "MAX_ERRORS",
            "message": f"{self.errors()} agents failed (max_errors {self.row.max_errors_limit});"
            " no further agents are started",
        }

    def progress(self) -> tuple[str, list[tuple[str, int]]] | None:
        """The job's status and counts if they changed since the last call, else None."""
        state = (self.row.status, sorted(self.counts().items()))
        if state == self.last_progress:
            return None
        self.last_progress = state
        return state


_JOB_VIEW = api_fields(Job)
# Kept as asked ("10%", "3"): shown as a number unless a percentage.
_JOB_SPECS = ("concurrency", "max_errors")


def job_json(
    job: Job, counts: dict[str, int], targets: list[JobTarget] | None = None
) -> dict[str, Any]:
    """The API's view of a job: its fields (times in RFC 3339), its target counts, and
    (``commands``) every target when ``targets`` is given."""
    body: dict[str, Any] = {name: getattr(job, name) for name in _JOB_VIEW}
    for name in _JOB_SPECS:
        body[name] = _spec(body[name])
    for name in _JOB_VIEW:
        if name.endswith("_at"):
            body[name] = rfc3339(body[name])
    body["targets"] = sum(counts.values())
    body["counts"] = {PENDING: 0, **counts}
    if targets is not None:
        body["commands"] = [
            {
                "agent_id": t.agent_id,
                "command_id": t.command_id,
                "status": t.status,
                **({"error": t.error} if t.error is not None else {}),
            }
            for t in targets
        ]
    return body


def _spec(stored: str) -> int | str:
    return stored if stored.endswith("%") else int(stored)
