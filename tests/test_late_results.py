"""A backend outage longer than a command's timeout + lost_grace, with a real gateway.

The backend runs in this process (tests/stack.py) and is stopped and started again on
the same database while the gateway's verb finishes; the gateway keeps the result in
its journal and reports it when it reconnects. Either the start-up grace keeps the
command from being declared lost meanwhile, or the late result replaces ``lost``.
"""

from __future__ import annotations

import json
import os
import time

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.stack import Stack, eventually, poll
from viworks.backend.model import Command

TIMEOUT = 3.0
LOST_GRACE = 0.5


class OutageTests(unittest.TestCase):
    timeout = 90

    def setUp(self):
        self.stack = Stack(self)
        self.marks = os.path.join(self.stack.dir, "marks")

    async def start_backend(self, startup_grace: float) -> None:
        await self.stack.start_backend(lost_grace=LOST_GRACE, startup_grace=startup_grace)

    async def command(self, command_id: str) -> Command | None:
        return await self.stack.backend.parts.store.get_command(command_id)

    async def outage(self, startup_grace: float) -> str:
        """gw-1 runs a 1 s verb; the backend stops while it runs and starts again once the
        command's timeout + lost_grace have passed. Returns the command's id."""
        await self.start_backend(startup_grace)
        self.stack.start_gateway(marks=self.marks)
        await eventually(lambda: self.stack.backend.parts.registry.get("gw-1") is not None)
        command, _ = await self.stack.backend.parts.commands.ledger.submit(
            "gw-1", "mark", {"tag": "late", "sleep": 1.0}, timeout=TIMEOUT
        )
        command_id = command.command_id
        await poll(lambda: self.command(command_id), lambda c: c.status == "running")
        await self.stack.stop_backend()
        overdue = command.dispatched_at + TIMEOUT + LOST_GRACE + 0.5
        await deferLater(reactor, max(0.0, overdue - time.time()), lambda: None)
        await self.start_backend(startup_grace)
        return command_id

    async def finished(self, command_id: str) -> tuple[list[str], list[tuple[str, str, dict]]]:
        """Once the agent's result is in: the command's history, and its audited outcomes."""
        done = await poll(lambda: self.command(command_id), lambda c: c.status == "succeeded")
        self.assertEqual(done.exit_code, 0)
        with open(self.marks) as f:
            self.assertEqual(f.read().split(), ["late"])  # ran once
        history = [
            e.status for e in await self.stack.backend.parts.store.command_events(command_id)
        ]
        await self.stack.backend.parts.audit.flush()
        audited = [
            (r.actor, r.outcome, json.loads(r.detail))
            for r in await self.stack.backend.parts.store.audit_records(limit=10000)
            if r.action == "command.finished" and r.target == f"command:{command_id}"
        ]
        return history, audited

    async def test_late_result_replaces_lost(self):
        """Without a start-up grace the restarted backend declares the command lost before
        the gateway reconnects; the gateway's real result then replaces lost, and the
        history and the audit log keep both."""
        command_id = await self.outage(startup_grace=0)
        history, audited = await self.finished(command_id)
        self.assertEqual(history, ["queued", "dispatched", "running", "lost", "succeeded"])
        self.assertEqual(
            [(actor, outcome) for actor, outcome, _ in audited],
            [("system", "lost"), ("gw-1", "succeeded")],
        )
        self.assertEqual(audited[1][2]["replaces"], "lost")

    async def test_startup_grace_lets_the_agent_report(self):
        """With a start-up grace nothing is declared lost while agents reconnect: the
        gateway reports its real result and the command never was lost."""
        command_id = await self.outage(startup_grace=30)
        history, audited = await self.finished(command_id)
        self.assertEqual(history, ["queued", "dispatched", "running", "succeeded"])
        self.assertEqual(
            [(actor, outcome) for actor, outcome, _ in audited], [("gw-1", "succeeded")]
        )
