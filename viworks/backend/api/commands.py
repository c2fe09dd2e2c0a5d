"""Routes: commands (create, wait for, read, list, cancel) and their output (read, follow)."""

from __future__ import annotations

from viworks import lifecycle
from viworks.backend.api.errors import ApiError
from viworks.backend.api.gate import Caller
from viworks.backend.api.parse import (
    idempotency,
    json_body,
    last_event_id,
    number,
    only_fields,
    query,
)
from viworks.backend.api.reply import Json
from viworks.backend.api.routing import ROUTES, Call
from viworks.backend.api.sse import SSE_KEEPALIVE, Streams
from viworks.backend.api.views import chunk_json, command_json
from viworks.backend.authz import ADMIN, OPERATOR, VIEWER
from viworks.backend.events import Event, EventHub, sse_frame
from viworks.backend.ledger import CommandLedger
from viworks.backend.model import Command
from viworks.backend.store import Store
from viworks.backend.waiters import CommandWaiters
from viworks.timeutil import rfc3339

MAX_WAIT = 300.0


class CommandRoutes:
    store: Store
    ledger: CommandLedger
    waiters: CommandWaiters
    hub: EventHub
    streams: Streams

    @ROUTES.route("POST", "/api/v1/agents/<agent_id>/commands", role=OPERATOR)
    async def create_command(self, call: Call, agent_id: str) -> Json:
        """Queue a command (201; 200 for a repeated Idempotency-Key); with ``?wait=S``
        answer once it is final (200) or after S seconds as it stands (202)."""
        request, caller = call.request, call.caller
        wait = number(request, "wait", 0, MAX_WAIT)
        body = json_body(request)
        only_fields(body, ("verb", "args", "timeout", "ttl"))
        if "verb" not in body:
            raise ApiError("UNKNOWN_VERB", "the body needs a verb", "verb")
        args = body.get("args", {})
        if not isinstance(args, dict):
            raise ApiError("INVALID_ARGS", "args must be a JSON object", "args")
        # Argument names only: values may be secrets.
        call.audit(verb=body["verb"], arg_names=sorted(map(str, args)))
        await self._check_scope(caller, body["verb"], agent_id)
        command, created = await self.ledger.submit(
            agent_id,
            body["verb"],
            args,
            body.get("timeout"),
            body.get("ttl"),
            idempotency(request, caller, agent_id, body),
        )
        call.audit(command_id=command.command_id)
        if wait is None:
            return Json(command_json(command), 201 if created else 200)
        if command.status not in lifecycle.FINAL:
            finished = await self.waiters.wait_final(command.command_id, wait, unfinished=created)
            if finished is None:
                # Still running: report it as it stands now.
                command = await self.store.get_command(command.command_id) or command
                return Json(command_json(command), 202)
            command = finished
        return Json(command_json(command), 200)

    @ROUTES.route("GET", "/api/v1/commands/<command_id>", role=VIEWER)
    async def get_command(self, call: Call, command_id: str) -> Json:
        command = await self._command(command_id)
        body = command_json(command)
        if command.status not in lifecycle.FINAL:
            body["stdout"], body["stderr"] = await self.store.output_text(command_id)
        body["events"] = [
            {"status": e.status, "at": rfc3339(e.at), "detail": e.detail}
            for e in await self.store.command_events(command_id)
        ]
        return Json(body)

    @ROUTES.route("GET", "/api/v1/commands", role=VIEWER)
    async def list_commands(self, call: Call) -> Json:
        status = query(call.request, "status")
        if status is not None and status not in lifecycle.ALL:
            raise ApiError("BAD_REQUEST", f"unknown status {status!r}", "status")
        limit = number(call.request, "limit", 1, 1000)
        commands = await self.store.list_commands(
            agent_id=query(call.request, "agent_id"),
            status=status,
            limit=int(limit or 100),
        )
        return Json({"commands": [command_json(c) for c in commands]})

    @ROUTES.route("POST", "/api/v1/commands/<command_id>/cancel", role=OPERATOR)
    async def cancel_command(self, call: Call, command_id: str) -> Json:
        existing = await self._command(command_id)
        call.audit(verb=existing.verb, agent_id=existing.agent_id)
        await self._check_scope(call.caller, existing.verb, existing.agent_id)
        command = await self.ledger.cancel(command_id)
        # 200: cancelled now; 202: the agent was asked to stop it.
        status = 200 if command.status == lifecycle.CANCELLED else 202
        return Json(command_json(command), status)

    @ROUTES.route("GET", "/api/v1/commands/<command_id>/output", role=VIEWER)
    async def command_output(self, call: Call, command_id: str) -> Json | bytes:
        """The output so far; ``?follow=1``: as Server-Sent Events until the command is
        final, resuming after ``Last-Event-ID``."""
        request = call.request
        command = await self._command(command_id)
        after = last_event_id(request)
        if query(request, "follow") not in ("1", "true"):
            chunks = await self.store.output_since(command_id, after, limit=100000)
            return Json(
                {
                    "command_id": command_id,
                    "status": command.status,
                    "chunks": [chunk_json(c) for c in chunks],
                }
            )
        await self._follow_output(call, command_id, after)
        return b""

    async def _follow_output(self, call: Call, command_id: str, after: int) -> None:
        """Stream output chunks as Server-Sent Events until the command is final."""
        follower = self.streams.follow(call.request)

        def listener(event: Event) -> None:
            if event.data.get("command_id") == command_id and event.type in (
                "command.output",
                "command.status",
            ):
                follower.push(event)

        # Subscribe before reading the backlog so that nothing falls in between.
        unsubscribe = self.hub.subscribe(listener)
        try:
            last = after
            for chunk in await self.store.output_since(command_id, after, limit=100000):
                await follower.writable()
                follower.write(sse_frame("command.output", chunk_json(chunk), chunk.seq))
                last = chunk.seq
            command = await self._command(command_id)
            while not follower.gone and command.status not in lifecycle.FINAL:
                for event in await follower.next_events(SSE_KEEPALIVE):
                    if event.type == "command.status":
                        command = await self._command(command_id)
                    elif event.data["seq"] > last:
                        last = event.data["seq"]
                        follower.write(sse_frame("command.output", event.data, last))
            follower.write(sse_frame("command.status", command_json(command)))
        finally:
            unsubscribe()
            follower.release()

    async def _command(self, command_id: str) -> Command:
        command = await self.store.get_command(command_id)
        if command is None:
            raise ApiError("COMMAND_NOT_FOUND", f"no command {command_id!r}")
        return command

    async def _check_scope(self, caller: Caller, verb: object, agent_id: str) -> None:
        """403 when an operator limited to verbs/sites may not act with ``verb`` on the agent."""
        if caller.role == ADMIN or (caller.verbs is None and caller.sites is None):
            return
        agent = await self.store.get_agent(agent_id)
        if agent is None:
            return  # the ledger answers 404
        refusal = caller.refusal(verb if isinstance(verb, str) else None, agent.site)
        if refusal is not None:
            raise ApiError("FORBIDDEN", refusal)
