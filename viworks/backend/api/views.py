"""The API's JSON views of the domain's values (times in RFC 3339)."""

from __future__ import annotations

from typing import Any

from viworks.backend.model import Agent, Command, OutputChunk, TelemetryReport, api_fields
from viworks.timeutil import rfc3339


def agent_json(agent: Agent, online: bool) -> dict[str, Any]:
    """The API's view of an agent; ``online`` comes from the live-session registry."""
    return {
        "agent_id": agent.agent_id,
        "status": "online" if online else "offline",
        "version": agent.version,
        "site": agent.site,
        "hostname": agent.hostname,
        "labels": agent.labels or {},
        "protocol": agent.protocol,
        # Whether the agent verifies command signatures (its HELLO said so).
        "signing": agent.signing or "off",
        "verbs": sorted(agent.verbs),
        "connected_at": rfc3339(agent.connected_at),
        "last_seen": rfc3339(agent.last_seen),
        "peer": agent.peer,
    }


_COMMAND_VIEW = api_fields(Command)
_COMMAND_TIMES = tuple(name for name in _COMMAND_VIEW if name.endswith("_at"))


def command_json(command: Command) -> dict[str, Any]:
    """The API's view of a command: its fields but the hidden ones, in order, output as
    text ("" for none), times in RFC 3339 (args were redacted before they were stored)."""
    body = {name: getattr(command, name) for name in _COMMAND_VIEW}
    body["stdout"] = command.stdout or ""
    body["stderr"] = command.stderr or ""
    for name in _COMMAND_TIMES:
        body[name] = rfc3339(body[name])
    return body


def command_summary(command: Command) -> dict[str, Any]:
    """A command without its output (for lists)."""
    body = command_json(command)
    for key in ("stdout", "stderr", "result"):
        body.pop(key)
    return body


def chunk_json(chunk: OutputChunk) -> dict[str, Any]:
    return {
        "seq": chunk.seq,
        "stream": chunk.stream,
        "data": chunk.data,
        "at": rfc3339(chunk.at),
    }


def telemetry_json(report: TelemetryReport) -> dict[str, Any]:
    return {"at": rfc3339(report.at), "metrics": report.data}
