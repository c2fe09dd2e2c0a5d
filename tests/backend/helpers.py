"""Shared fixtures for backend tests: a real SQLite store and a fake live session."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from tests.stack import eventually
from viworks import protocol
from viworks.backend.model import Agent
from viworks.backend.store import SQLStore, Store, open_store

VERBS = {
    "ping": {"params": {}, "description": "liveness", "changes_state": False},
    "create_panel_user": {
        "params": {
            "username": {
                "type": "string",
                "pattern": "^[A-Za-z0-9_-]+$",
                "min_length": 3,
                "max_length": 64,
            },
            "password": {"type": "secret", "min_length": 8, "max_length": 128},
        },
        "description": "add a panel user",
        "changes_state": True,
    },
}


class FakeSession:
    """Stands in for an AgentSession: records the frames the backend sends."""

    def __init__(self, agent_id: str, session_id: str = "s1") -> None:
        self.agent_id = agent_id
        self.session_id = session_id
        self.agent_protocol = protocol.HELLO_PROTOCOL
        self.sent: list[protocol.Frame] = []
        self.replaced = False
        self.complaints: list[str] = []

    def send_frame(self, payload: bytes) -> None:
        self.sent.append(protocol.decode(payload))

    def close_replaced(self) -> None:
        self.replaced = True

    def complain(self, log_format: str, **fields: object) -> None:
        self.complaints.append(log_format.format(**fields))

    def commands(self) -> list[protocol.Frame]:
        return [f for f in self.sent if f.type == "command"]


async def sqlite_store(testcase: Any) -> SQLStore:
    """An open SQLite store in the test's temp dir, closed at cleanup."""
    store = open_store(testcase.mktemp() + ".db", reactor=reactor)
    await store.open()
    testcase.addCleanup(store.close)
    return store


async def add_agent(store: Store, agent_id: str = "gw-1", verbs: dict = VERBS) -> Agent:
    return await store.upsert_agent_online(
        agent_id,
        version="0.1.0",
        site="test",
        hostname="host-" + agent_id,
        protocol=1,
        verbs=verbs,
        peer="tcp:127.0.0.1:5000",
        session_id="s1",
        labels={},
        now=1000.0,
    )


def result_fields(command_id: str, **overrides: Any) -> dict[str, Any]:
    """The fields of a valid ``result`` frame."""
    return {
        "command_id": command_id,
        "status": "succeeded",
        "exit_code": 0,
        "result": {"ok": True},
        "stdout": "out",
        "stderr": "",
        "stdout_truncated": False,
        "stderr_truncated": False,
        "error": None,
        "started_at": None,
        "finished_at": None,
        **overrides,
    }


async def settled(http: Any, d: Deferred) -> Any:
    """What ``d`` fires with, flushing the in-memory HTTP exchange (``StubTreq``) until
    it does: the store answers on a later reactor turn or from a thread."""
    done: list = []
    d.addBoth(done.append)
    await eventually(lambda: http.flush() or done)
    if isinstance(done[0], Failure):
        done[0].raiseException()
    return done[0]


async def json_call(
    http: Any, method: str, path: str, body: Any = None, headers: Any = None, raw: Any = None
) -> tuple[Any, Any]:
    """``(response, decoded JSON body)`` of one API request through ``StubTreq``."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    d = http.request(method, "http://api" + path, data=data, headers=headers or {})
    d.addCallback(lambda r: r.content().addCallback(lambda c: (r, c)))
    response, content = await settled(http, d)
    return response, json.loads(content)
