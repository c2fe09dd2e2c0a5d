"""Routes: the agents (listed, paged, one by one), their verbs, telemetry and certificates,
and the fleet at a glance."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from viworks import __version__
from viworks.backend.api.errors import ApiError
from viworks.backend.api.parse import json_body, number, query
from viworks.backend.api.reply import Json
from viworks.backend.api.routing import ROUTES, Call
from viworks.backend.api.views import agent_json, command_summary, telemetry_json
from viworks.backend.authz import ADMIN, VIEWER
from viworks.backend.model import Agent, AgentSummary, Command
from viworks.backend.registry import SessionRegistry
from viworks.backend.revocation import revoke_agent_certificates
from viworks.backend.store import Store
from viworks.selectors import SelectorError
from viworks.selectors import parse as parse_selector
from viworks.timeutil import rfc3339

# The fleet summary lists agent certificates ending within this many days.
CERT_WARNING_DAYS = 30
# Final statuses the fleet summary lists as recent failures.
_FAILED = ("failed", "timed_out", "lost", "rejected", "expired")


class AgentRoutes:
    store: Store
    registry: SessionRegistry
    clock: IReactorTime

    @ROUTES.route("GET", "/api/v1/agents", role=VIEWER)
    async def list_agents(self, call: Call) -> Json:
        """Every agent, or (``?limit=``/``?offset=``) one page of them with ``total``.

        ``?selector=`` keeps the agents it matches (a job's dry run); ``?status=``
        keeps the online or offline ones. A page is read without the other
        agents' verb schemas, so large fleets page quickly.
        """
        request = call.request
        raw_selector = query(request, "selector")
        selector = None
        if raw_selector is not None:
            try:
                selector = parse_selector(raw_selector)
            except SelectorError as e:
                raise ApiError("BAD_SELECTOR", str(e), "selector") from None
        status = query(request, "status")
        if status not in (None, "online", "offline"):
            raise ApiError("BAD_REQUEST", "status must be online or offline", "status")
        limit = number(request, "limit", 1, 1000)
        offset = number(request, "offset", 0, 1e9)

        def wanted(agent: Agent | AgentSummary) -> bool:
            if selector is not None and not selector.matches(agent):
                return False
            return status is None or (self._online(agent.agent_id) == (status == "online"))

        if limit is None and offset is None:
            agents = [a for a in await self.store.list_agents() if wanted(a)]
            return Json({"agents": [agent_json(a, self._online(a.agent_id)) for a in agents]})
        matching = [a for a in await self.store.agent_keys() if wanted(a)]
        start, count = int(offset or 0), int(limit or 100)
        page = await self.store.agents_by_id([a.agent_id for a in matching[start : start + count]])
        return Json(
            {
                "agents": [agent_json(a, self._online(a.agent_id)) for a in page],
                "total": len(matching),
                "online": sum(1 for a in matching if self._online(a.agent_id)),
                "offset": start,
                "limit": count,
            }
        )

    @ROUTES.route("GET", "/api/v1/agents/<agent_id>", role=VIEWER)
    async def get_agent(self, call: Call, agent_id: str) -> Json:
        agent = await self._agent(agent_id)
        body = agent_json(agent, self._online(agent_id))
        # The certificate it last said HELLO with, and how many sessions it has had.
        body["certificate"] = {
            "serial": agent.cert_serial,
            "not_after": rfc3339(agent.cert_not_after),
        }
        body["sessions"] = agent.epoch
        return Json(body)

    @ROUTES.route("GET", "/api/v1/agents/<agent_id>/verbs", role=VIEWER)
    async def get_verbs(self, call: Call, agent_id: str) -> Json:
        agent = await self._agent(agent_id)
        return Json({"agent_id": agent_id, "verbs": agent.verbs})

    @ROUTES.route("GET", "/api/v1/agents/<agent_id>/telemetry", role=VIEWER)
    async def telemetry(self, call: Call, agent_id: str) -> Json:
        await self._agent(agent_id)
        latest = await self.store.latest_telemetry(agent_id)
        if latest is None:
            raise ApiError("NO_TELEMETRY", f"agent {agent_id!r} has not reported yet")
        return Json({"agent_id": agent_id, **telemetry_json(latest)})

    @ROUTES.route("GET", "/api/v1/agents/<agent_id>/telemetry/history", role=VIEWER)
    async def telemetry_history(self, call: Call, agent_id: str) -> Json:
        await self._agent(agent_id)
        limit = int(number(call.request, "limit", 1, 10000) or 100)
        since = number(call.request, "since", 0, float("inf"))
        history = await self.store.telemetry_history(agent_id, limit=limit, since=since)
        return Json({"agent_id": agent_id, "history": [telemetry_json(t) for t in history]})

    @ROUTES.route("POST", "/api/v1/agents/<agent_id>/certificate/revoke", role=ADMIN)
    async def revoke_certificate(self, call: Call, agent_id: str) -> Json:
        """Revoke every certificate the agent id has connected with, as ``viworks pki
        revoke AGENT_ID`` does; sessions using them are dropped within seconds.

        ``serial``: the one of its last HELLO (else the last seen); ``already_revoked``:
        nothing was left to revoke; ``serials``: each one, first seen first."""
        body = json_body(call.request)
        reason = body.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 500):
            raise ApiError("BAD_REQUEST", "reason must be a string of up to 500", "reason")
        agent = await self._agent(agent_id)
        call.audit(agent_id=agent_id)
        done = await revoke_agent_certificates(
            self.store, agent_id, call.caller.name, self.clock.seconds(), reason
        )
        if not done:
            raise ApiError("NO_CERTIFICATE", f"no certificate is known for {agent_id!r}")
        serials = [cert.serial for cert, _ in done]
        current = agent.cert_serial
        return Json(
            {
                "agent_id": agent_id,
                "serial": current if current in serials else serials[-1],
                "already_revoked": not any(revoked for _, revoked in done),
                "serials": [
                    {
                        "serial": cert.serial,
                        "first_seen": rfc3339(cert.first_seen),
                        "last_seen": rfc3339(cert.last_seen),
                        "already_revoked": not revoked,
                    }
                    for cert, revoked in done
                ],
            }
        )

    @ROUTES.route("GET", "/api/v1/fleet", role=VIEWER)
    async def fleet(self, call: Call) -> Json:
        """The fleet at a glance: online/offline by site and version, certificates
        ending within ``?cert_days=`` (default 30), the latest failed commands."""
        cert_days = number(call.request, "cert_days", 0, 3650)
        horizon = self.clock.seconds() + 86400 * (
            CERT_WARNING_DAYS if cert_days is None else cert_days
        )
        keys = await self.store.agent_keys()
        sites: dict[str, dict[str, int]] = {}
        versions: dict[str, dict[str, int]] = {}
        online = 0
        for agent in keys:
            state = "online" if self._online(agent.agent_id) else "offline"
            online += state == "online"
            for table, key in ((sites, agent.site), (versions, agent.version)):
                counts = table.setdefault(str(key), {"online": 0, "offline": 0})
                counts[state] += 1
        ending = sorted(
            (a for a in keys if a.cert_not_after is not None and a.cert_not_after <= horizon),
            key=lambda a: a.cert_not_after or 0.0,
        )
        failed: list[Command] = []
        for status in _FAILED:
            failed += await self.store.list_commands(status=status, limit=10)
        failed.sort(key=lambda c: c.created_at, reverse=True)
        return Json(
            {
                "agents": len(keys),
                "online": online,
                "sites": [{"site": k, **v} for k, v in sorted(sites.items())],
                "versions": [{"version": k, **v} for k, v in sorted(versions.items())],
                "certificates": [
                    {
                        "agent_id": a.agent_id,
                        "serial": a.cert_serial,
                        "not_after": rfc3339(a.cert_not_after),
                    }
                    for a in ending[:100]
                ],
                "failed_commands": [command_summary(c) for c in failed[:10]],
                "backend": {"version": __version__, "agents_online": len(self.registry)},
            }
        )

    def _online(self, agent_id: str) -> bool:
        return self.registry.get(agent_id) is not None

    async def _agent(self, agent_id: str) -> Agent:
        agent = await self.store.get_agent(agent_id)
        if agent is None:
            raise ApiError("AGENT_NOT_FOUND", f"no agent {agent_id!r} is known")
        return agent
