"""Unauthenticated floods against a real backend over real HTTP connections (loopback)."""

from __future__ import annotations

import json
import os
import sqlite3

import treq
from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from tests.processes import viworks
from tests.stack import Stack

FLOOD = 1000
BURST = 10


class UnauthenticatedFloodTests(unittest.TestCase):
    timeout = 120

    def audit_rows(self, db: str) -> list[tuple]:
        with sqlite3.connect(db) as conn:
            return conn.execute(
                "SELECT action, target, detail FROM audit_log ORDER BY seq"
            ).fetchall()

    async def test_flood_adds_one_audit_record(self):
        """1,000 POSTs without a token to a running backend: the first ones get 401, the
        rest 429 with Retry-After; the audit log gains ONE api.refused record with the count
        (written at shutdown, before the interval ends) and `viworks audit verify` passes."""
        stack = Stack(self)
        await stack.start_backend(
            extra=(
                f"[api]\nauth_failure_burst = {BURST}\nauth_failure_rate = 1.0\n"
                "auth_failure_audit_interval = 600.0\n"
            )
        )
        db = os.path.join(stack.dir, "backend.db")
        before = self.audit_rows(db)
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        url = f"http://127.0.0.1:{stack.http_port}/api/v1/agents/gw-1/commands".encode()
        codes, retry_after = [], set()
        for _ in range(FLOOD):
            response = await treq.post(url, data=b'{"verb": "ping"}', pool=pool)
            await response.content()
            codes.append(response.code)
            if response.code == 429:
                retry_after.update(response.headers.getRawHeaders(b"retry-after"))
        self.assertEqual(set(codes), {401, 429})
        self.assertEqual(codes[:BURST], [401] * BURST)
        # Refilled at 1/s while the flood lasts: a few more 401s, never many.
        self.assertGreater(codes.count(429), FLOOD * 0.9)
        self.assertEqual(retry_after, {b"1"})
        self.assertEqual(self.audit_rows(db), before)
        await stack.stop_backend()
        after = self.audit_rows(db)
        self.assertEqual(len(after), len(before) + 1)
        action, target, detail = after[-1]
        self.assertEqual((action, target), ("api.refused", "127.0.0.1"))
        detail = json.loads(detail)
        self.assertEqual((detail["count"], detail["limited"]), (FLOOD, codes.count(429)), detail)
        verified = viworks("audit", "verify", "--config", os.path.join(stack.dir, "backend.toml"))
        self.assertEqual(verified.returncode, 0, verified.stdout + verified.stderr)
        self.assertIn(f"intact: {len(after)} records", verified.stdout)
