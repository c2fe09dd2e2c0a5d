"""Jobs (``jobs``) and their targets (``job_targets``): one verb fanned out to many agents."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.enterprise.adbapi import Transaction

from viworks.backend.model import JOB_STATUSES, TARGET_OUTCOMES, Job, JobTarget
from viworks.backend.store.columns import (
    BOOL,
    INT,
    JSON,
    REAL,
    Column,
    Table,
    batches,
    encode_json,
    marks,
)
from viworks.backend.store.engine import SQLEngine

# Only the status, the canary and the end change once a job exists (updated_at with
# every change).
JOBS = Table(
    "jobs",
    Job,
    [
        Column("job_id"),
        Column("status", mutable=True),
        Column("verb"),
        Column("args", JSON),
        Column("selector"),
        Column("concurrency"),
        Column("max_errors"),
        Column("concurrency_limit", INT),
        Column("max_errors_limit", INT),
        Column("canary", INT),
        Column("canary_auto", BOOL),
        Column("canary_passed", BOOL, mutable=True),
        Column("timeout", REAL),
        Column("ttl", REAL),
        Column("created_by"),
        Column("created_at", REAL),
        Column("updated_at", REAL),
        Column("finished_at", REAL, mutable=True),
        Column("error", JSON, mutable=True),
        Column("has_secrets", BOOL),
    ],
)
# A target's status: its command's, else its outcome, else pending.
_TARGET_STATUS = "COALESCE(c.status, t.outcome, 'pending')"
JOB_TARGETS = Table(
    "job_targets",
    JobTarget,
    [
        Column("job_id"),
        Column("position", INT),
        Column("agent_id"),
        Column("command_id"),
        Column("outcome"),
        Column("error", JSON),
        Column("status", expr=_TARGET_STATUS),
    ],
    alias="t",
)
_TARGETS_WITH_COMMANDS = "job_targets t LEFT JOIN commands c ON c.command_id = t.command_id"


def _job_statuses(statuses: Sequence[str]) -> tuple[str, ...]:
    if isinstance(statuses, str):
        raise TypeError("statuses must be a collection of job statuses, not a string")
    result = tuple(statuses)
    unknown = set(result) - JOB_STATUSES
    if not result or unknown:
        raise ValueError(f"unknown or no job statuses: {sorted(unknown)}")
    return result


class JobStore(SQLEngine):
    """The store's jobs and their targets."""

    async def create_job(self, job: Job, agent_ids: Sequence[str]) -> Job:
        """Insert a job and its targets (``agent_ids``, in start order) in one transaction;
        return the job as stored."""
        if len(set(agent_ids)) != len(agent_ids):
            raise ValueError("a job targets each agent once")
        _job_statuses([job.status])
        return await self._run(self._create_job_txn, JOBS.dump_value(job), list(agent_ids))

    def _create_job_txn(
        self, txn: Transaction, values: dict[str, Any], agent_ids: list[str]
    ) -> Job:
        created = JOBS.load(self._insert_returning(txn, "jobs", values, JOBS.select))
        self._insert_rows_txn(
            txn,
            "job_targets",
            ("job_id", "position", "agent_id"),
            [(created.job_id, position, agent_id) for position, agent_id in enumerate(agent_ids)],
        )
        return created

    async def get_job(self, job_id: str) -> Job | None:
        """Return the job, or None."""
        rows = await self._run(
            self._select_txn, f"SELECT {JOBS.select} FROM jobs WHERE job_id = ?", (job_id,)
        )
        return JOBS.load(rows[0]) if rows else None

    async def list_jobs(
        self, statuses: Sequence[str] | None = None, limit: int | None = 100
    ) -> list[Job]:
        """Jobs newest first (``limit`` None: all), optionally only those in ``statuses``."""
        sql = f"SELECT {JOBS.select} FROM jobs"
        params: list[Any] = []
        if statuses is not None:
            statuses = _job_statuses(statuses)
            sql += f" WHERE status IN ({marks(len(statuses))})"
            params.extend(statuses)
        sql += " ORDER BY created_at DESC, job_id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return JOBS.load_all(await self._run_long(self._select_txn, sql, params))

    async def update_job(
        self, job_id: str, at: float, *, expected: Sequence[str] | None = None, **fields: Any
    ) -> Job | None:
        """Set ``fields`` (and ``updated_at``) if the job's status is in ``expected``.

        Compare-and-set like ``transition``: returns the updated job, or None
        (nothing written) for an unknown job or another status.
        """
        JOBS.check_update(fields)
        if "status" in fields:
            _job_statuses([fields["status"]])
        values = {**JOBS.dump(fields), "updated_at": at}
        where, params = ["job_id = ?"], [job_id]
        if expected is not None:
            expected = _job_statuses(expected)
            where.append(f"status IN ({marks(len(expected))})")
            params.extend(expected)
        rows = await self._run(
            self._select_txn,
            "UPDATE jobs SET {} WHERE {} RETURNING {}".format(
                ", ".join(f"{c} = ?" for c in values), " AND ".join(where), JOBS.select
            ),
            [*values.values(), *params],
        )
        return JOBS.load(rows[0]) if rows else None

    async def job_targets(self, job_id: str) -> list[JobTarget]:
        """The job's targets in position order."""
        rows = await self._run_long(
            self._select_txn,
            f"SELECT {JOB_TARGETS.select} FROM {_TARGETS_WITH_COMMANDS}"
            " WHERE t.job_id = ? ORDER BY t.position",
            (job_id,),
        )
        return JOB_TARGETS.load_all(rows)

    async def job_counts(self, job_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """``{job_id: {status: count}}`` over the jobs' targets (see :meth:`job_targets`)."""
        job_ids = list(job_ids)
        counts: dict[str, dict[str, int]] = {job_id: {} for job_id in job_ids}
        for batch in batches(job_ids):
            rows = await self._run(
                self._select_txn,
                f"SELECT t.job_id, {_TARGET_STATUS}, COUNT(*) FROM {_TARGETS_WITH_COMMANDS}"
                f" WHERE t.job_id IN ({marks(len(batch))}) GROUP BY t.job_id, {_TARGET_STATUS}",
                batch,
            )
            for job_id, target_status, count in rows:
                counts[job_id][target_status] = int(count)
        return counts

    async def settle_job_target(
        self,
        job_id: str,
        position: int,
        *,
        command_id: str | None = None,
        outcome: str | None = None,
        error: Any = None,
    ) -> bool:
        """Give a pending target its command, or an outcome without one (not both).

        Compare-and-set: only a target with neither is changed; returns
        whether this call changed it.
        """
        if (command_id is None) == (outcome is None):
            raise ValueError("settle a job target with a command_id or an outcome")
        if outcome is not None and outcome not in TARGET_OUTCOMES:
            raise ValueError(f"unknown job target outcome {outcome!r}")
        changed = await self._run(
            self._update_count_txn,
            "UPDATE job_targets SET command_id = ?, outcome = ?, error = ?"
            " WHERE job_id = ? AND position = ? AND command_id IS NULL AND outcome IS NULL",
            (command_id, outcome, encode_json(error), job_id, int(position)),
        )
        return changed > 0
