"""Routes: jobs, one verb fanned out to the agents a selector matches (create, list, read,
pause, resume, cancel); viworks/backend/jobs.py drives them."""

from __future__ import annotations

from typing import Any

from viworks.backend.api.errors import ApiError
from viworks.backend.api.parse import json_body, number, query
from viworks.backend.api.reply import Json
from viworks.backend.api.routing import ROUTES, Call
from viworks.backend.authz import ADMIN, OPERATOR, VIEWER
from viworks.backend.jobs import JobRunner
from viworks.backend.jobspec import parse_job_spec
from viworks.backend.model import JOB_STATUSES, Agent
from viworks.backend.store import Store

# Pause, resume or cancel: werkzeug's ``any`` converter (the OpenAPI path's {action}).
JOB_ACTION = "/api/v1/jobs/<job_id>/<any(pause, resume, cancel):action>"


class JobRoutes:
    store: Store
    jobs: JobRunner

    @ROUTES.route("POST", "/api/v1/jobs", role=OPERATOR)
    async def create_job(self, call: Call) -> Json:
        """Start a job (201); an operator limited to verbs/sites must be allowed the verb
        on every target."""
        caller = call.caller
        body = json_body(call.request)
        verb = body.get("verb")
        args = body.get("args")
        call.audit(
            verb=verb,
            selector=body.get("selector"),
            arg_names=sorted(map(str, args or {})) if isinstance(args, dict) else [],
        )
        job = await self.jobs.create(
            parse_job_spec(body),
            created_by=caller.name,
            refusal=lambda agent: caller.refusal(
                verb if isinstance(verb, str) else None, agent.site
            ),
        )
        call.audit(job_id=job["job_id"])
        return Json(job, 201)

    @ROUTES.route("GET", "/api/v1/jobs", role=VIEWER)
    async def list_jobs(self, call: Call) -> Json:
        status = query(call.request, "status")
        if status is not None and status not in JOB_STATUSES:
            raise ApiError("BAD_REQUEST", f"unknown job status {status!r}", "status")
        limit = int(number(call.request, "limit", 1, 1000) or 100)
        jobs = await self.jobs.list(None if status is None else [status], limit=limit)
        return Json({"jobs": jobs})

    @ROUTES.route("GET", "/api/v1/jobs/<job_id>", role=VIEWER)
    async def get_job(self, call: Call, job_id: str) -> Json:
        return Json(await self.jobs.describe(job_id))

    @ROUTES.route("POST", JOB_ACTION, role=OPERATOR)
    async def job_action(self, call: Call, job_id: str, action: str) -> Json:
        """Pause, resume or cancel a job; an operator limited to verbs/sites must be
        allowed the job's verb on the site of every target."""
        caller = call.caller
        call.audit(job_id=job_id, action=action)
        job = await self.jobs.describe(job_id)
        for site in sorted({a.site for a in await self._job_agents(job)}, key=str):
            refusal = caller.refusal(job["verb"], site)
            if refusal is not None:
                raise ApiError("FORBIDDEN", refusal)
        if action == "pause":
            return Json(await self.jobs.pause(job_id, by=caller.name))
        if action == "resume":
            return Json(await self.jobs.resume(job_id))
        return Json(await self.jobs.cancel(job_id))

    # Any other action: an unknown write route, so admin only (as every route that is
    # not declared for less), and then 404.
    @ROUTES.route("POST", "/api/v1/jobs/<job_id>/<action>", role=ADMIN)
    async def unknown_job_action(self, call: Call, job_id: str, action: str) -> Json:
        raise ApiError("NOT_FOUND", f"no job action {action!r} (pause, resume, cancel)")

    async def _job_agents(self, job: dict[str, Any]) -> list[Agent]:
        targets = {c["agent_id"] for c in job["commands"]}
        return [a for a in await self.store.list_agents() if a.agent_id in targets]
