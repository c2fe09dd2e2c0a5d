"""Certificate revocation through a real mutual-TLS link on loopback.

The backend runs in this process (tests/stack.py); ``viworks pki revoke`` runs as
its own process against the same database, as an operator would while it runs.
"""

from __future__ import annotations

import json
import os
import shutil

from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.processes import viworks
from tests.stack import Stack, eventually, stays
from viworks import pki


class RevocationTests(unittest.TestCase):
    timeout = 90

    def setUp(self):
        self.stack = Stack(self)

    def online(self, agent_id="gw-1") -> bool:
        return self.stack.backend.registry.get(agent_id) is not None

    def renewed_pki(self) -> None:
        """A new certificate for gw-1 from the same CA (re-enrolment), as pki "renewed"."""
        renewed = os.path.join(self.stack.dir, "renewed")
        os.makedirs(renewed)
        for name in ("ca.crt", "ca.key"):
            shutil.copy(os.path.join(self.stack.pki["ours"], name), renewed)
        pki.issue_agent(renewed, "gw-1")
        self.stack.pki = {**self.stack.pki, "renewed": renewed}

    async def test_revoked_agent_dropped_refused_then_reenrolled(self):
        """pki revoke (while the backend runs) drops the agent's live session within 5 s
        and its certificate is refused at every reconnect (audited); a re-enrolled agent
        (new certificate, new serial) is accepted."""
        await self.stack.start_backend()
        config = os.path.join(self.stack.dir, "backend.toml")
        gateway = self.stack.start_gateway()
        await eventually(self.online)
        store = self.stack.backend.store
        first_serial = (await store.get_agent("gw-1"))["cert_serial"]
        self.assertRegex(first_serial, r"^[0-9a-f]+$")

        done = await deferToThread(viworks, "pki", "revoke", "--config", config, "gw-1")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(first_serial, done.stdout)
        await eventually(lambda: not self.online(), timeout=5.0)
        # The gateway keeps retrying (reconnect_max 0.5 s): every attempt is refused.
        await stays(lambda: not self.online(), duration=2.0)
        await self.stack.backend.ledger.audit.flush()
        records = await store.audit_records(limit=1000)
        refused = [json.loads(r["detail"]) for r in records if r["action"] == "connection.refused"]
        self.assertTrue(refused, records)
        self.assertEqual({r["reason"] for r in refused}, {"certificate revoked"})
        self.assertEqual({r["serial"] for r in refused}, {first_serial})
        closed = [r for r in records if r["action"] == "session.closed"]
        self.assertEqual(len(closed), 1)
        await gateway.stopService()

        self.renewed_pki()
        self.stack.start_gateway(ca="renewed")
        await eventually(self.online)
        second_serial = (await store.get_agent("gw-1"))["cert_serial"]
        self.assertNotEqual(second_serial, first_serial)
        verified = await deferToThread(viworks, "audit", "verify", "--config", config)
        self.assertEqual(verified.returncode, 0, verified.stdout + verified.stderr)
