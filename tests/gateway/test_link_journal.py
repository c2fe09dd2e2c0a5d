"""A gateway whose journal file is deleted or replaced refuses new commands and says why.

Driven like tests/gateway/test_link.py (frame by frame, real journal, fake catalogue);
the local health API is the real one, through StubTreq.
"""

from __future__ import annotations

import json
import os
import shutil

from treq.testing import StubTreq
from twisted.application.service import Service
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from tests.gateway.test_link import LinkTestCase, succeeded
from viworks.gateway.journal import Journal
from viworks.gateway.link import JOURNAL_CHECK_INTERVAL, JOURNAL_UNAVAILABLE
from viworks.gateway.localapi import GatewayAPI


class JournalFileTests(LinkTestCase):
    def refused(self, conn, command_id: str) -> dict:
        [result] = [r for r in conn.of_type("result") if r["command_id"] == command_id]
        self.assertEqual(
            (result["status"], result["error"]["code"]), ("rejected", JOURNAL_UNAVAILABLE)
        )
        return result

    async def health(self) -> tuple[int, dict]:
        http = StubTreq(GatewayAPI(self.link, self.clock).resource())
        response = await http.get("http://gw/api/v1/health")
        return response.code, json.loads(await response.content())

    def test_problem_names_the_change(self):
        """Journal.problem() tells a deleted file from a replaced one, and None when in place."""
        journal = self.link.journal
        self.assertIsNone(journal.problem())
        moved = self.path + ".moved"
        os.rename(self.path, moved)
        self.assertIn("was deleted", journal.problem())
        shutil.copy(moved, self.path)
        self.assertIn("was replaced", journal.problem())
        os.replace(moved, self.path)
        self.assertIsNone(journal.problem())
        self.assertIsNone(Journal(self.path).problem(), "a journal not opened has no problem")

    async def test_deleted_journal_refuses_new_commands(self):
        """With its journal deleted the gateway runs nothing new (rejected,
        JOURNAL_UNAVAILABLE), logs an error once and reports it in its health (503)."""
        conn = self.connect()
        self.command(conn, "c1")
        self.catalog.executions[0].outcome.callback(succeeded("before"))
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        os.unlink(self.path)
        self.command(conn, "c2")
        self.command(conn, "c3")
        self.assertEqual(len(self.catalog.started), 1, "nothing new may run")
        for command_id in ("c2", "c3"):
            self.assertIn("was deleted", self.refused(conn, command_id)["error"]["message"])
        errors = [e for e in logged if e.get("code") == JOURNAL_UNAVAILABLE]
        self.assertEqual(len(errors), 1, "logged once, not per command")
        self.assertEqual(errors[0]["log_level"].name, "error")
        # A redelivery of what the journal knows is still answered from it.
        self.command(conn, "c1")
        self.assertIn("before", [r["stdout"] for r in conn.of_type("result")])
        code, body = await self.health()
        self.assertEqual((code, body["status"], body["journal"]), (503, "unhealthy", "unavailable"))
        self.assertIn("was deleted", body["journal_error"])

    async def test_replacement_noticed_by_the_timer(self):
        """A journal replaced by another file is noticed within JOURNAL_CHECK_INTERVAL without
        any command, and health recovers if the original file comes back."""
        self.link.journal.close()
        self.link.client_service = Service()  # no connection: the link is driven by hand
        self.link.startService()  # opens the journal and starts checking it
        self.addCleanup(self.link.stopService)
        code, body = await self.health()
        self.assertEqual((code, body["journal"]), (200, "ok"))
        moved = self.path + ".moved"
        os.rename(self.path, moved)
        shutil.copy(moved, self.path)
        self.clock.advance(JOURNAL_CHECK_INTERVAL)
        code, body = await self.health()
        self.assertEqual((code, body["journal"]), (503, "unavailable"))
        self.assertIn("was replaced", body["journal_error"])
        conn = self.connect()
        self.command(conn, "c1")
        self.refused(conn, "c1")
        os.replace(moved, self.path)
        self.clock.advance(JOURNAL_CHECK_INTERVAL)
        code, body = await self.health()
        self.assertEqual((code, body["status"]), (200, "healthy"))
        self.command(conn, "c2")
        self.assertEqual(len(self.catalog.started), 1)
        self.catalog.executions[0].outcome.callback(succeeded())
