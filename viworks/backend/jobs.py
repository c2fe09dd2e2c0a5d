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
continues where they were. Command completions arrive as the hub's
``command.status`` events (their wire form is enough); each target is started
with an idempotency key (the job and the agent), so a crash between creating a
command and recording it in the job cannot run the verb twice. Secret arguments are never stored:
after a restart, a job that has them cannot start further agents and stops.

All decisions about one job are serialised by a lock (starting agents,
pause, resume, cancel), so the concurrency window is never exceeded.
``job.progress`` events carry a job's status and counts when they change.
"""

from __future__ import annotations

import uuid
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime

from viworks.backend.errors import DomainError
from viworks.backend.events import Event, EventHub
from viworks.backend.jobspec import JobSpec, parse_job_selector, resolve_limit
from viworks.backend.jobstate import (
    ACTIVE,
    CANCELLED,
    COMPLETED,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_ERRORS,
    DONE,
    EXPIRED,
    PAUSED,
    PENDING,
    REJECTED,
    RUNNING,
    SETTLED,
    STOPPED,
    Target,
    TrackedJob,
    job_json,
)
from viworks.backend.ledger import CommandLedger, Idempotency
from viworks.backend.model import Agent, Job
from viworks.backend.registry import SessionRegistry
from viworks.backend.secrecy import SecretParams
from viworks.backend.store import Store
from viworks.logs import Logger
from viworks.redaction import REDACTED
from viworks.schema import ArgsError, validate_args

RETRY_AFTER = 5.0


class JobRunner:
    """Creates jobs and drives them: one per backend, next to the ledger."""

    log = Logger()

    def __init__(
        self,
        *,
        store: Store,
        ledger: CommandLedger,
        registry: SessionRegistry,
        hub: EventHub,
        secrets: SecretParams,
        clock: IReactorTime,
        default_timeout: float,
        default_ttl: float,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.registry = registry
        self.hub = hub
        self.secrets = secrets
        self.clock = clock
        # What a job's commands get when its request leaves timeout or ttl out.
        self.default_timeout = default_timeout
        self.default_ttl = default_ttl
        self._new_id = new_id
        self._jobs: dict[str, TrackedJob] = {}
        self._by_command: dict[str, tuple[TrackedJob, Target]] = {}
        self._unsubscribe: Callable[[], None] | None = self.hub.subscribe(self._on_event)
        self._stopped = False

    # -- service --------------------------------------------------------------------------

    async def start(self) -> None:
        """Reload the running and paused jobs from the store and continue them."""
        for row in await self.store.list_jobs([RUNNING, PAUSED], limit=None):
            if row.job_id in self._jobs:
                continue
            targets = [
                Target(t.position, t.agent_id, t.command_id, t.status)
                for t in await self.store.job_targets(row.job_id)
            ]
            args = None if row.has_secrets else dict(row.args)
            job = self._track(TrackedJob(row, targets, args))
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
        spec: JobSpec,
        created_by: str | None = None,
        refusal: Callable[[Agent], str | None] | None = None,
    ) -> dict[str, Any]:
        """Record the job ``spec`` asks for, with its targets, and start it.

        ``refusal(agent)`` says why the caller may not act on that agent (403),
        or None.
        """
        selector, verb, args = parse_job_selector(spec.selector), spec.verb, spec.args
        agents = [a for a in await self.store.list_agents() if selector.matches(a)]
        if not agents:
            raise DomainError(
                "NO_TARGETS", f"no agent matches the selector {spec.selector!r}", "selector"
            )
        concurrency, concurrency_limit = resolve_limit(
            spec.concurrency, len(agents), DEFAULT_CONCURRENCY
        )
        max_errors, max_errors_limit = resolve_limit(
            spec.max_errors, len(agents), DEFAULT_MAX_ERRORS
        )
        timeout = self.default_timeout if spec.timeout is None else spec.timeout
        ttl = self.default_ttl if spec.ttl is None else spec.ttl
        secret_keys: set[str] = set()
        for agent in agents:
            refused = refusal(agent) if refusal is not None else None
            if refused is not None:
                raise DomainError("FORBIDDEN", f"agent {agent.agent_id!r}: {refused}")
            if verb not in agent.verbs:
                raise DomainError(
                    "UNKNOWN_VERB",
                    f"agent {agent.agent_id!r} does not offer verb {verb!r}",
                    "verb",
                )
            params = agent.verbs[verb].get("params", {})
            try:
                validate_args(params, args)
            except ArgsError as e:
                raise DomainError(
                    "INVALID_ARGS", f"agent {agent.agent_id!r}: {e.message}", e.field
                ) from None
            # Secret for this agent, or for any (an agent cannot downgrade a secret).
            redacted = self.secrets.redact(verb, params, args)
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
                canary=spec.canary,
                canary_auto=spec.canary_auto,
                canary_passed=False,
                timeout=timeout,
                ttl=ttl,
                created_by=created_by,
                created_at=now,
                updated_at=now,
            ),
            [a.agent_id for a in agents],
        )
        targets = [Target(i, a.agent_id, None, PENDING) for i, a in enumerate(agents)]
        job = self._track(TrackedJob(row, targets, dict(args)))
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
                except DomainError:
                    pass  # finished meanwhile
        return await self.describe(job_id)

    async def _row(self, job_id: str) -> Job:
        row = await self.store.get_job(job_id)
        if row is None:
            raise DomainError("JOB_NOT_FOUND", f"no job {job_id!r}")
        return row

    async def _change(
        self, job_id: str, status: str, expected: tuple[str, ...], verb: str, **fields: Any
    ) -> TrackedJob | None:
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
                raise DomainError(
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

    def _track(self, job: TrackedJob) -> TrackedJob:
        self._jobs[job.job_id] = job
        for target in job.targets:
            if target.command_id is not None and target.status not in SETTLED:
                self._by_command[target.command_id] = (job, target)
        return job

    def _untrack_if_done(self, job: TrackedJob) -> None:
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

    def _kick(self, job: TrackedJob) -> Deferred:
        """Run the job's pump (again) soon; kicks while one is waiting coalesce."""
        if job.kick_pending or self._stopped:
            return Deferred.fromCoroutine(_noop())
        job.kick_pending = True
        d = Deferred.fromCoroutine(self._pump_locked(job))
        d.addErrback(lambda f: self.log.failure("job {job_id} failed", f, job_id=job.job_id))
        return d

    async def _pump_locked(self, job: TrackedJob) -> None:
        await job.lock.acquire()
        try:
            job.kick_pending = False
            if self._stopped:
                return
            await self._pump(job)
        finally:
            job.lock.release()

    async def _pump(self, job: TrackedJob) -> None:
        if job.row.status == RUNNING:
            await self._advance(job)
        if job.row.status in ACTIVE and not job.pending() and not job.in_flight():
            stopped = job.error_budget() <= 0
            await self._set_status(
                job,
                STOPPED if stopped else COMPLETED,
                error=job.max_errors_error() if stopped else None,
            )
        self._progress(job)
        self._untrack_if_done(job)

    async def _advance(self, job: TrackedJob) -> None:
        """Start pending targets while the window, the error budget and the canary allow."""
        row = job.row
        if job.error_budget() <= 0:
            await self._set_status(job, STOPPED, error=job.max_errors_error())
            return
        canary = job.canary_step()
        if canary.pause is not None:
            await self._set_status(
                job, PAUSED, canary_passed=True, error={"code": "CANARY", "message": canary.pause}
            )
            return
        if canary.passed:
            await self._set_status(job, RUNNING, canary_passed=True)
            self.log.info("job {job_id}: canary succeeded, continuing", job_id=job.job_id)
        pending = job.pending(canary.eligible)
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
            # Start targets together, as many as the window and the error budget allow
            # (their store writes share transactions).
            if job.error_budget() <= 0:
                await self._set_status(job, STOPPED, error=job.max_errors_error())
                return
            room = job.room()
            if room <= 0:
                break
            chunk: list[Target] = []
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
        if job.row.status == RUNNING and job.error_budget() <= 0:
            await self._set_status(job, STOPPED, error=job.max_errors_error())
        elif waiting:
            self._wake_at(job, deadline)

    async def _start(self, job: TrackedJob, target: Target) -> None:
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
        except DomainError as e:
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
            self._by_command[command.command_id] = (job, target)
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

    async def _settle(
        self, job: TrackedJob, target: Target, outcome: str, error: dict[str, str]
    ) -> None:
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

    async def _set_status(self, job: TrackedJob, status: str, **fields: Any) -> None:
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

    def _progress(self, job: TrackedJob) -> None:
        """Publish ``job.progress`` if the job's status or counts changed."""
        changed = job.progress()
        if changed is not None:
            status, counts = changed
            self.hub.publish(
                "job.progress",
                {"job_id": job.job_id, "status": status, "counts": {PENDING: 0, **dict(counts)}},
            )

    def _wake_at(self, job: TrackedJob, when: float) -> None:
        if job.timer is not None and job.timer.active():
            if job.timer.getTime() <= when:
                return
            job.timer.cancel()
        job.timer = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._kick, job)

    def _cancel_timer(self, job: TrackedJob) -> None:
        if job.timer is not None and job.timer.active():
            job.timer.cancel()
        job.timer = None


async def _noop() -> None:
    return None
