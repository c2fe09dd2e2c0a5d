"""Certificate revocation through a real mutual-TLS link on loopback.

The backend runs in this process (tests/stack.py); ``viworks pki revoke`` runs as
its own process against the same database, as an operator would while it runs.
"""

from __future__ import annotations

import json
import os
import shutil

from cryptography import x509
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.processes import viworks
from tests.stack import Stack, eventually, stays
from viworks import pki
from viworks.backend.revocation import certificate_serial


class RevocationTestCase(unittest.TestCase):
    """A backend in this process, gateways for gw-1, and a second PKI for re-enrolment."""

    timeout = 90

    def setUp(self):
        self.stack = Stack(self)

    def online(self, agent_id="gw-1") -> bool:
        return self.stack.backend.parts.registry.get(agent_id) is not None

    def renewed_pki(self) -> None:
        """A new certificate for gw-1 from the same CA (re-enrolment), as pki "renewed"."""
        renewed = os.path.join(self.stack.dir, "renewed")
        os.makedirs(renewed)
        for name in ("ca.crt", "ca.key"):
            shutil.copy(os.path.join(self.stack.pki["ours"], name), renewed)
        pki.issue_agent(renewed, "gw-1")
        self.stack.pki = {**self.stack.pki, "renewed": renewed}


class RevocationTests(RevocationTestCase):
    async def test_revoked_agent_dropped_refused_then_reenrolled(self):
        """pki revoke (while the backend runs) drops the agent's live session within 5 s
        and its certificate is refused at every reconnect (audited); a re-enrolled agent
        (new certificate, new serial) is accepted."""
        await self.stack.start_backend()
        config = os.path.join(self.stack.dir, "backend.toml")
        gateway = self.stack.start_gateway()
        await eventually(self.online)
        store = self.stack.backend.parts.store
        first_serial = (await store.get_agent("gw-1")).cert_serial
        self.assertRegex(first_serial, r"^[0-9a-f]+$")

        done = await deferToThread(viworks, "pki", "revoke", "--config", config, "gw-1")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(first_serial, done.stdout)
        await eventually(lambda: not self.online(), timeout=5.0)
        # The gateway keeps retrying (reconnect_max 0.5 s): every attempt is refused.
        await stays(lambda: not self.online(), duration=2.0)
        await self.stack.backend.parts.audit.flush()
        records = await store.audit_records(limit=1000)
        refused = [json.loads(r.detail) for r in records if r.action == "connection.refused"]
        self.assertTrue(refused, records)
        self.assertEqual({r["reason"] for r in refused}, {"certificate revoked"})
        self.assertEqual({r["serial"] for r in refused}, {first_serial})
        closed = [r for r in records if r.action == "session.closed"]
        self.assertEqual(len(closed), 1)
        await gateway.stopService()

        self.renewed_pki()
        self.stack.start_gateway(ca="renewed")
        await eventually(self.online)
        second_serial = (await store.get_agent("gw-1")).cert_serial
        self.assertNotEqual(second_serial, first_serial)
        verified = await deferToThread(viworks, "audit", "verify", "--config", config)
        self.assertEqual(verified.returncode, 0, verified.stdout + verified.stderr)


class StolenCertificateTests(RevocationTestCase):
    """A hostile agent holding a second valid certificate for gw-1 (the same CA, the same
    agent id: what a stolen enrolment or CA misuse gives), through the product's own link."""

    async def serials(self) -> tuple[str, str]:
        """The legitimate gateway online, then the thief taking its session over: both
        serials (legitimate first), once the backend has recorded and audited both."""
        store = self.stack.backend.parts.store
        self.stack.start_gateway()
        await eventually(self.online)
        legit = (await store.get_agent("gw-1")).cert_serial
        self.renewed_pki()
        with open(os.path.join(self.stack.pki["renewed"], "agents", "gw-1.crt"), "rb") as f:
            thief = certificate_serial(x509.load_pem_x509_certificate(f.read()))
        self.assertNotEqual(thief, legit)
        self.stack.start_gateway(ca="renewed", name="thief")
        # The two keep replacing each other: the first takeover is the thief's.
        await eventually(lambda: self.current_serial() == thief)
        return legit, thief

    def current_serial(self) -> str | None:
        session = self.stack.backend.parts.registry.get("gw-1")
        return None if session is None else session.cert_serial

    async def audited(self, action: str) -> list[dict]:
        await self.stack.backend.parts.audit.flush()
        records = await self.stack.backend.parts.store.audit_records(limit=10000)
        return [json.loads(r.detail) for r in records if r.action == action]

    async def test_revoke_agent_revokes_every_serial_it_used(self):
        """A second certificate takes gw-1's session over (logged and audited as
        session.replaced with both serials); `pki revoke AGENT_ID` revokes both serials,
        so neither certificate gets a session again (both refused, audited)."""
        await self.stack.start_backend()
        config = os.path.join(self.stack.dir, "backend.toml")
        legit, thief = await self.serials()
        replaced = await self.audited("session.replaced")
        self.assertEqual(
            (replaced[0]["old_serial"], replaced[0]["new_serial"]), (legit, thief), replaced
        )

        done = await deferToThread(viworks, "pki", "revoke", "--config", config, "gw-1")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(legit, done.stdout)
        self.assertIn(thief, done.stdout)
        revoked = self.stack.backend.parts.sessions.revoked_serials
        await eventually(lambda: {legit, thief} <= revoked, timeout=5.0)
        await eventually(lambda: not self.online(), timeout=5.0)
        # Both gateways keep retrying (reconnect_max 0.5 s): every attempt is refused.
        await stays(lambda: not self.online(), duration=2.5)
        refused = await self.audited("connection.refused")
        self.assertEqual({r["serial"] for r in refused}, {legit, thief})
        stored = await self.stack.backend.parts.store.revocations_since(0)
        self.assertEqual(sorted(r.serial for r in stored), sorted([legit, thief]))
        verified = await deferToThread(viworks, "audit", "verify", "--config", config)
        self.assertEqual(verified.returncode, 0, verified.stdout + verified.stderr)

    async def test_revoke_one_serial(self):
        """`pki revoke --serial HEX` (as openssl prints it: upper case) revokes only the
        thief's certificate: the legitimate gateway keeps its session, the thief is
        refused at every attempt."""
        await self.stack.start_backend()
        config = os.path.join(self.stack.dir, "backend.toml")
        legit, thief = await self.serials()
        done = await deferToThread(
            viworks, "pki", "revoke", "--config", config, "--serial", thief.upper()
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(f"certificate {thief} of agent 'gw-1' revoked", done.stdout)
        # The backend polls revocations every 2 s; until then the two still take turns.
        await eventually(lambda: thief in self.stack.backend.parts.sessions.revoked_serials)
        await eventually(lambda: self.current_serial() == legit, timeout=5.0)
        await stays(lambda: self.current_serial() == legit, duration=2.5)
        revoked = await self.stack.backend.parts.store.revocations_since(0)
        self.assertEqual([r.serial for r in revoked], [thief])
        refused = await self.audited("connection.refused")
        self.assertEqual({r["serial"] for r in refused}, {thief})
