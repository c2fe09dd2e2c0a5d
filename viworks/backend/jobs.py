"""Jobs: one verb fanned out to every agent a selector matched, safely.

A job records its targets (the agents its selector matched when it was
created, in agent-id order) and starts their commands through the ledger,
never with more than ``concurrency`` of them unfinished at once:

- only online agents are started; an offline target waits until the job's
  TTL (counted from the job's creation), then counts as ``expired``;
- every target that ends other than ``succeeded`` (failed, timed_out,
  rejected, lost, expired, cancelled) is an error; when the errors reach
  ``max_errors``, no new agent is started and the job is ``stopped`` (the
  commands already started finish on their own);
- a ``lost`` target whose agent reports its real outcome later takes that
  outcome: a late success gives its error back while the job runs; a job that
  stopped or completed meanwhile keeps that status (decided on what was known)
  and its counts show the real outcome;
- a canary runs the first N targets, then pauses the job until it is
  resumed, or continues by itself (``canary_auto``) if all N succeeded;
- pause stops starting agents, resume starts again, cancel cancels the
  unfinished commands through the ledger.

The store is the truth: a job and its targets (with their command ids) are
rows, so a restarted backend reloads its running and paused jobs and
continues where they were. Command completions arrive as the ledger hub's
``command.status`` events; each target is started with an idempotency key
(the job and the agent), so a crash between creating a command and recording
it in the job cannot run the verb twice. Secret arguments are never stored:
after a restart, a job that has them cannot start further agents and stops.

All decisions about one job are serialised by a lock (starting agents,
pause, resume, cancel), so the concurrency window is never exceeded.
``job.progress`` events carry a job's status and counts when they change.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from viworks import lifecycle
from viworks.backend.events import Event
from viworks.backend.ledger import (
    MAX_TIMEOUT,
    MAX_TTL,
    CommandLedger,
    Idempotency,
    LedgerError,
    _seconds,
)
from viworks.backend.model import (
    JOB_CANCELLED,
    JOB_COMPLETED,
    JOB_PAUSED,
    JOB_RUNNING,
    JOB_STOPPED,
    TARGET_EXPIRED,
    TARGET_REJECTED,
    Agent,
    Job,
    JobTarget,
    api_fields,
)
from viworks.backend.registry import SessionRegistry
from viworks.backend.store import Store
from viworks.logs import Logger
from viworks.redaction import REDACTED
from viworks.schema import ArgsError, validate_args
from viworks.selectors import SelectorError
from viworks.selectors import parse as parse_selector
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

BODY_FIELDS = frozenset(
    {"verb", "args", "selector", "concurrency", "max_errors", "canary", "canary_auto"}
    | {"ttl", "timeout"}
)
DEFAULT_CONCURRENCY = 1
DEFAULT_MAX_ERRORS = 1
#: The largest count a job takes (concurrency, max_errors, canary): what the store's
#: INTEGER columns hold on every engine (32 bits on PostgreSQL).
MAX_COUNT = 2**31 - 1
RETRY_AFTER = 5.0


def resolve_limit(field_name: str, value: Any, targets: int, default: int) -> tuple[str, int]:
    """``(as given, resolved)`` for a count or a percentage of ``targets``.

    An integer must be in [1, MAX_COUNT]; ``"N%"`` (0 < N <= 100) is N percent of the
    targets rounded down, but at least 1. Anything else is a 400.
    """
    if value is None:
        value = default
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= MAX_COUNT:
            raise LedgerError(
                400, "BAD_REQUEST", f"{field_name} must be >= 1 (at most {MAX_COUNT})", field_name
            )
        return str(value), value
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            percent = float(value.strip()[:-1])
        except ValueError:
            percent = math.nan
        if 0 < percent <= 100:
            return value.strip(), max(1, math.floor(targets * percent / 100))
    raise LedgerError(
        400,
        "BAD_REQUEST",
        f'{field_name} must be an integer >= 1 or a percentage like "10%" (0-100]',
        field_name,
    )


@dataclass
class _Target:
    position: int
    agent_id: str
    command_id: str | None
    status: str


@dataclass
class _Job:
    row: Job
    targets: list[_Target]
    # The real (unredacted) args; None when they were lost in a restart.
    args: dict | None
    lock: DeferredLock = field(default_factory=DeferredLock)
    kick_pending: bool = False
    timer: IDelayedCall | None = None
    last_progress: Any = None
    # Kept up to date by update(): every status event of a 1,000-agent job would
    # otherwise count all its targets again (quadratic).
    tally: Counter = field(init=False)
    running: int = field(init=False)

    def __post_init__(self) -> None:
        self.tally = Counter(t.status for t in self.targets)
        self.running = sum(1 for t in self.targets if _in_flight(t))

    @property
    def job_id(self) -> str:
        return self.row.job_id

    def update(self, target: _Target, status: str, command_id: str | None = None) -> None:
        """Set a target's status (and command); every change goes through here."""
        self.running -= _in_flight(target)
        self.tally[target.status] -= 1
        target.status = status
        if command_id is not None:
            target.command_id = command_id
        self.tally[status] += 1
        self.running += _in_flight(target)

    def counts(self) -> dict[str, int]:
        return {status: n for status, n in self.tally.items() if n}

    def errors(self) -> int:
        return sum(
            n
            for status, n in self.tally.items()
            if status in DONE and status != lifecycle.SUCCEEDED
        )

    def in_flight(self) -> int:
        return self.running

    def pending(self) -> list[_Target]:
        if not self.tally[PENDING]:
            return []
        return [t for t in self.targets if t.status == PENDING]


def _in_flight(target: _Target) -> bool:
    return target.command_id is not None and target.status not in DONE


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


class JobRunner:
    """Creates jobs and drives them: one per backend, next to the ledger."""

    log = Logger()

    def __init__(
        self,
        store: Store,
        ledger: CommandLedger,
        registry: SessionRegistry,
        clock: IReactorTime,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.registry = registry
        self.clock = clock
        self.hub = ledger.hub
        self._new_id = new_id
        self._jobs: dict[str, _Job] = {}
        self._by_command: dict[str, tuple[_Job, _Target]] = {}
        self._unsubscribe: Callable[[], None] | None = self.hub.subscribe(self._on_event)
        self._stopped = False

    # -- service --------------------------------------------------------------------------

    async def start(self) -> None:
        """Reload the running and paused jobs from the store and continue them."""
        for row in await self.store.list_jobs([RUNNING, PAUSED], limit=None):
            if row.job_id in self._jobs:
                continue
            targets = [
                _Target(t.position, t.agent_id, t.command_id, t.status)
                for t in await self.store.job_targets(row.job_id)
            ]
            args = None if row.has_secrets else dict(row.args)
            job = self._track(_Job(row, targets, args))
            self.log.info(
                "job {job_id} reloaded ({status}): {counts}",
                job_id=job.job_id,
                status=row.status,
                counts=job.counts(),
            )
            self._kick(job)

    def stop(self) -> None:
        """Stop driving jobs (they stay as they are in the store)."""
        self._stopped = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for job in self._jobs.values():
            self._cancel_timer(job)

    # -- operators' requests --------------------------------------------------------------

    async def create(
        self,
        body: dict,
        created_by: str | None = None,
        refusal: Callable[[Agent], str | None] | None = None,
    ) -> dict[str, Any]:
        """Validate a job request, record the job and its targets, and start it.

        ``refusal(agent)`` says why the caller may not act on that agent (403),
        or None.
        """
        unknown = set(body) - BODY_FIELDS
        if unknown:
            name = sorted(unknown)[0]
            raise LedgerError(400, "BAD_REQUEST", f"unknown field {name!r}", name)
        selector_text = body.get("selector")
        if not isinstance(selector_text, str):
            raise LedgerError(
                400, "BAD_REQUEST", "the body needs a selector (key=value,...)", "selector"
            )
        try:
            selector = parse_selector(selector_text)
        except SelectorError as e:
            raise LedgerError(400, "BAD_SELECTOR", str(e), "selector") from None
        verb = body.get("verb")
        if not isinstance(verb, str) or not verb:
            raise LedgerError(422, "UNKNOWN_VERB", "the body needs a verb", "verb")
        args = body.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise LedgerError(422, "INVALID_ARGS", "args must be a JSON object", "args")
        agents = [a for a in await self.store.list_agents() if selector.matches(a)]
        if not agents:
            raise LedgerError(
                422, "NO_TARGETS", f"no agent matches the selector {selector_text!r}", "selector"
            )
        concurrency, concurrency_limit = resolve_limit(
            "concurrency", body.get("concurrency"), len(agents), DEFAULT_CONCURRENCY
        )
        max_errors, max_errors_limit = resolve_limit(
            "max_errors", body.get("max_errors"), len(agents), DEFAULT_MAX_ERRORS
        )
        canary = body.get("canary")
        if canary is not None and (
            isinstance(canary, bool) or not isinstance(canary, int) or not 1 <= canary <= MAX_COUNT
        ):
            raise LedgerError(
                400,
                "BAD_REQUEST",
                f"canary must be an integer >= 1 (at most {MAX_COUNT})",
                "canary",
            )
        canary_auto = body.get("canary_auto", False)
        if not isinstance(canary_auto, bool):
            raise LedgerError(400, "BAD_REQUEST", "canary_auto must be a boolean", "canary_auto")
        if canary_auto and canary is None:
            raise LedgerError(400, "BAD_REQUEST", "canary_auto needs a canary", "canary_auto")
        timeout = _seconds("timeout", body.get("timeout"), self.ledger.default_timeout, MAX_TIMEOUT)
        ttl = _seconds("ttl", body.get("ttl"), self.ledger.default_ttl, MAX_TTL)
        secret_keys: set[str] = set()
        for agent in agents:
            refused = refusal(agent) if refusal is not None else None
            if refused is not None:
                raise LedgerError(403, "FORBIDDEN", f"agent {agent.agent_id!r}: {refused}")
            if verb not in agent.verbs:
                raise LedgerError(
                    422,
                    "UNKNOWN_VERB",
                    f"agent {agent.agent_id!r} does not offer verb {verb!r}",
                    "verb",
                )
            params = agent.verbs[verb].get("params", {})
            try:
                validate_args(params, args)
            except ArgsError as e:
                raise LedgerError(
                    422, "INVALID_ARGS", f"agent {agent.agent_id!r}: {e.message}", e.field
                ) from None
            # Secret for this agent, or for any (an agent cannot downgrade a secret).
            redacted = self.ledger.secrets.redact(verb, params, args)
            secret_keys |= {k for k, v in redacted.items() if v == REDACTED}
        stored_args = {k: REDACTED if k in secret_keys else v for k, v in args.items()}
        now = self.clock.seconds()
        row = await self.store.create_job(
            Job(
                job_id=self._new_id(),
                status=RUNNING,
                verb=verb,
                args=stored_args,
                has_secrets=bool(secret_keys),
                selector=selector.text,
                concurrency=concurrency,
                concurrency_limit=concurrency_limit,
                max_errors=max_errors,
                max_errors_limit=max_errors_limit,
                canary=canary,
                canary_auto=canary_auto,
                canary_passed=False,
                timeout=timeout,
                ttl=ttl,
                created_by=created_by,
                created_at=now,
                updated_at=now,
            ),
            [a.agent_id for a in agents],
        )
        targets = [_Target(i, a.agent_id, None, PENDING) for i, a in enumerate(agents)]
        job = self._track(_Job(row, targets, dict(args)))
        self.log.info(
            "job {job_id} {verb} created for {targets} agents ({selector})",
            job_id=job.job_id,
            verb=verb,
            targets=len(targets),
            selector=selector.text,
        )
        self._progress(job)
        await self._kick(job)
        return await self.describe(job.job_id)

    async def describe(self, job_id: str) -> dict[str, Any]:
        """The job as the API shows it, with every target's command and status."""
        row = await self._row(job_id)
        targets = await self.store.job_targets(job_id)
        return job_json(row, dict(Counter(t.status for t in targets)), targets)

    async def list(
        self, statuses: list[str] | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Jobs newest first, with their counts (not their commands)."""
        rows = await self.store.list_jobs(statuses, limit=limit)
        counts = await self.store.job_counts([r.job_id for r in rows])
        return [job_json(row, counts[row.job_id]) for row in rows]

    async def pause(self, job_id: str, by: str | None = None) -> dict[str, Any]:
        """Start no more agents until resumed (commands already started go on).

        The job's ``error`` says why it is paused (``PAUSED``, naming ``by``), as it
        does after a canary (``CANARY``).
        """
        who = f"token {by!r}" if by is not None else "an operator"
        reason = {"code": "PAUSED", "message": f"paused by {who}; resume to continue"}
        await self._change(job_id, PAUSED, (RUNNING,), "pause", error=reason)
        return await self.describe(job_id)

    async def resume(self, job_id: str) -> dict[str, Any]:
        """Continue a paused job (past its canary, if it paused there)."""
        job = await self._change(job_id, RUNNING, (PAUSED,), "resume", error=None)
        if job is not None:
            await self._kick(job)
        return await self.describe(job_id)

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """Start no more agents and cancel the unfinished commands through the ledger."""
        await self._change(job_id, CANCELLED, (RUNNING, PAUSED, STOPPED), "cancel")
        for target in await self.store.job_targets(job_id):
            if target.command_id is not None and target.status not in DONE:
                try:
                    await self.ledger.cancel(target.command_id)
                except LedgerError:
                    pass  # finished meanwhile
        return await self.describe(job_id)

    async def _row(self, job_id: str) -> Job:
        row = await self.store.get_job(job_id)
        if row is None:
            raise LedgerError(404, "JOB_NOT_FOUND", f"no job {job_id!r}")
        return row

    async def _change(
        self, job_id: str, status: str, expected: tuple[str, ...], verb: str, **fields: Any
    ) -> _Job | None:
        """Compare-and-set the job's status, under its lock when it is being driven."""
        job = self._jobs.get(job_id)
        if job is not None:
            await job.lock.acquire()
        try:
            if status in (CANCELLED, STOPPED, COMPLETED):
                fields["finished_at"] = self.clock.seconds()
            row = await self.store.update_job(
                job_id, self.clock.seconds(), expected=expected, status=status, **fields
            )
            if row is None:
                current = await self._row(job_id)
                raise LedgerError(
                    409,
                    "JOB_" + current.status.upper(),
                    f"cannot {verb} a {current.status} job",
                )
            self.log.info("job {job_id} {status}", job_id=job_id, status=status)
            if job is not None:
                job.row = row
                self._progress(job)
                self._untrack_if_done(job)
            return job
        finally:
            if job is not None:
                job.lock.release()

    # -- driving --------------------------------------------------------------------------

    def _track(self, job: _Job) -> _Job:
        self._jobs[job.job_id] = job
        for target in job.targets:
            if target.command_id is not None and target.status not in SETTLED:
                self._by_command[target.command_id] = (job, target)
        return job

    def _untrack_if_done(self, job: _Job) -> None:
        if job.row.status in ACTIVE or job.in_flight():
            return
        self._cancel_timer(job)
        self._jobs.pop(job.job_id, None)
        for target in job.targets:
            self._by_command.pop(target.command_id or "", None)

    def _on_event(self, event: Event) -> None:
        if event.type == "command.status":
            entry = self._by_command.get(event.data.get("command_id", ""))
            if entry is None:
                return
            job, target = entry
            if target.status in SETTLED:
                return
            job.update(target, event.data["status"])
            # A lost target stays tracked: its agent's late result may still replace lost.
            if target.status in SETTLED:
                self._by_command.pop(target.command_id or "", None)
            self._progress(job)
            self._kick(job)
        elif event.type == "agent.online":
            agent_id = event.data.get("agent_id")
            for job in list(self._jobs.values()):
                if job.row.status == RUNNING and any(t.agent_id == agent_id for t in job.pending()):
                    # Next turn: the session's own delivery of its backlog goes first.
                    self.clock.callLater(0, self._kick, job)

    def _kick(self, job: _Job) -> Deferred:
        """Run the job's pump (again) soon; kicks while one is waiting coalesce."""
        if job.kick_pending or self._stopped:
            return Deferred.fromCoroutine(_noop())
        job.kick_pending = True
        d = Deferred.fromCoroutine(self._pump_locked(job))
        d.addErrback(lambda f: self.log.failure("job {job_id} failed", f, job_id=job.job_id))
        return d

    async def _pump_locked(self, job: _Job) -> None:
        await job.lock.acquire()
        try:
            job.kick_pending = False
            if self._stopped:
                return
            await self._pump(job)
        finally:
            job.lock.release()

    async def _pump(self, job: _Job) -> None:
        if job.row.status == RUNNING:
            await self._advance(job)
        if job.row.status in ACTIVE and not job.pending() and not job.in_flight():
            stopped = job.errors() >= job.row.max_errors_limit
            await self._set_status(
                job,
                STOPPED if stopped else COMPLETED,
                error=self._max_errors_error(job) if stopped else None,
            )
        self._progress(job)
        self._untrack_if_done(job)

    async def _advance(self, job: _Job) -> None:
        """Start pending targets while the window, the error budget and the canary allow."""
        row = job.row
        if job.errors() >= row.max_errors_limit:
            await self._set_status(job, STOPPED, error=self._max_errors_error(job))
            return
        eligible = job.targets
        canary = row.canary
        if canary and not row.canary_passed:
            eligible = job.targets[:canary]
            if all(t.status in DONE for t in eligible):
                succeeded = all(t.status == lifecycle.SUCCEEDED for t in eligible)
                if succeeded and row.canary_auto:
                    await self._set_status(job, RUNNING, canary_passed=True)
                    self.log.info("job {job_id}: canary succeeded, continuing", job_id=job.job_id)
                    eligible = job.targets
                else:
                    message = (
                        f"the first {len(eligible)} agents ran; resume to continue"
                        if succeeded
                        else f"not every one of the first {len(eligible)} agents succeeded;"
                        " resume to continue anyway"
                    )
                    await self._set_status(
                        job,
                        PAUSED,
                        canary_passed=True,
                        error={"code": "CANARY", "message": message},
                    )
                    return
        pending = [t for t in eligible if t.status == PENDING] if job.tally[PENDING] else []
        if pending and job.args is None:
            await self._set_status(
                job,
                STOPPED,
                error={
                    "code": "SECRETS_UNAVAILABLE",
                    "message": "the backend restarted and secret arguments are never stored;"
                    " start a new job for the remaining agents",
                },
            )
            return
        now = self.clock.seconds()
        deadline = row.created_at + row.ttl
        waiting = False
        queue = deque(pending)
        while queue:
            if job.row.status != RUNNING:
                return
            # Start targets together, as many as the window and the error budget allow:
            # even if every one of them fails, no more errors than max_errors are made,
            # exactly as if they were started one by one (and their store writes share
            # transactions).
            budget = job.row.max_errors_limit - job.errors()
            if budget <= 0:
                await self._set_status(job, STOPPED, error=self._max_errors_error(job))
                return
            room = min(budget, job.row.concurrency_limit - job.in_flight())
            if room <= 0:
                break
            chunk: list[_Target] = []
            while queue and len(chunk) < room:
                target = queue.popleft()
                if self.registry.get(target.agent_id) is not None:
                    chunk.append(target)
                elif now >= deadline:
                    await self._settle(
                        job,
                        target,
                        EXPIRED,
                        {"code": "EXPIRED", "message": "the agent was offline until the job's TTL"},
                    )
                    room -= 1  # an expired target spends the error budget
                else:
                    waiting = True
            await gatherResults(
                [Deferred.fromCoroutine(self._start(job, t)) for t in chunk], consumeErrors=True
            )
        if job.row.status == RUNNING and job.errors() >= job.row.max_errors_limit:
            await self._set_status(job, STOPPED, error=self._max_errors_error(job))
        elif waiting:
            self._wake_at(job, deadline)

    async def _start(self, job: _Job, target: _Target) -> None:
        row = job.row
        try:
            command, _ = await self.ledger.submit(
                target.agent_id,
                row.verb,
                job.args,
                row.timeout,
                row.ttl,
                Idempotency(f"job:{job.job_id}", target.agent_id, "job"),
            )
        except LedgerError as e:
            await self._settle(job, target, REJECTED, {"code": e.code, "message": e.message})
            return
        except Exception:
            self.log.failure(
                "job {job_id}: starting {agent_id} failed; retrying",
                job_id=job.job_id,
                agent_id=target.agent_id,
            )
            self._wake_at(job, self.clock.seconds() + RETRY_AFTER)
            return
        job.update(target, command.status, command.command_id)
        if target.status not in DONE:
            self._by_command[target.command_id] = (job, target)
        await self.store.settle_job_target(
            job.job_id, target.position, command_id=target.command_id
        )
        # One line per target would flood the log of a large job (its progress is in
        # GET /api/v1/jobs/ID and the events); debug shows it.
        self.log.debug(
            "job {job_id}: started {verb} on {agent_id} as command {command_id}",
            job_id=job.job_id,
            verb=row.verb,
            agent_id=target.agent_id,
            command_id=target.command_id,
        )
        self._progress(job)

    async def _settle(self, job: _Job, target: _Target, outcome: str, error: dict) -> None:
        await self.store.settle_job_target(
            job.job_id, target.position, outcome=outcome, error=error
        )
        job.update(target, outcome)
        self.log.info(
            "job {job_id}: {agent_id} {outcome}: {message}",
            job_id=job.job_id,
            agent_id=target.agent_id,
            outcome=outcome,
            message=error["message"],
        )
        self._progress(job)

    async def _set_status(self, job: _Job, status: str, **fields: Any) -> None:
        if status in (STOPPED, COMPLETED, CANCELLED):
            fields["finished_at"] = self.clock.seconds()
        row = await self.store.update_job(
            job.job_id, self.clock.seconds(), expected=ACTIVE, status=status, **fields
        )
        if row is None:  # changed meanwhile by another backend: take it as it is
            row = await self.store.get_job(job.job_id) or job.row
        elif row.status != job.row.status:
            self.log.info(
                "job {job_id} {status}{why}",
                job_id=job.job_id,
                status=status,
                why=f": {fields['error']['message']}" if fields.get("error") else "",
            )
        job.row = row
        self._progress(job)

    def _max_errors_error(self, job: _Job) -> dict:
        return {
            "code": "MAX_ERRORS",
            "message": f"{job.errors()} agents failed (max_errors {job.row.max_errors_limit});"
            " no further agents are started",
        }

    def _progress(self, job: _Job) -> None:
        counts = job.counts()
        state = (job.row.status, sorted(counts.items()))
        if state == job.last_progress:
            return
        job.last_progress = state
        self.hub.publish(
            "job.progress",
            {"job_id": job.job_id, "status": job.row.status, "counts": {PENDING: 0, **counts}},
        )

    def _wake_at(self, job: _Job, when: float) -> None:
        if job.timer is not None and job.timer.active():
            if job.timer.getTime() <= when:
                return
            job.timer.cancel()
        job.timer = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._kick, job)

    def _cancel_timer(self, job: _Job) -> None:
        if job.timer is not None and job.timer.active():
            job.timer.cancel()
        job.timer = None


async def _noop() -> None:
    return None
