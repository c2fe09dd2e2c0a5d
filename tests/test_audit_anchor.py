"""Anchoring the audit log: ``viworks audit head`` and ``audit verify --expect-head``, and a
running backend that finds records removed from the end of its log.

The CLI runs as its own process (``viworks ...``), as an operator would run it.
"""

from __future__ import annotations

import sqlite3

import treq
from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from tests.processes import viworks
from tests.stack import Stack
from tests.test_security_cli import CLIDatabase
from viworks.backend import auditchain
from viworks.backend.store import open_store
from viworks.backend.tokens import hash_token


class AuditHeadCLITests(CLIDatabase, unittest.TestCase):
    made = 0

    def head(self) -> str:
        return self.cli("audit", "head", "--config", self.config).stdout.strip()

    def make_records(self, count: int) -> None:
        for _ in range(count):
            self.made += 1
            self.cli("token", "create", "--config", self.config, "--name", f"t{self.made}")

    def test_head_prints_seq_and_hash(self):
        """audit head prints SEQ:HASH of the last record; for an empty log 0 and 64 zeros."""
        self.assertEqual(self.head(), f"0:{auditchain.GENESIS}")
        self.make_records(3)
        [(seq, digest)] = self.sql("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        self.assertEqual(self.head(), f"{seq}:{digest}")
        self.assertEqual(seq, 3)

    def test_expect_head_detects_truncation(self):
        """Removing the newest records leaves a chain that verifies on its own; with the
        head anchored earlier, verify --expect-head exits 1 saying it was truncated."""
        self.make_records(3)
        anchored = self.head()
        out = self.cli("audit", "verify", "--config", self.config, "--expect-head", anchored)
        self.assertIn("intact: 3 records; record 3 is the expected one", out.stdout)
        self.make_records(1)
        self.cli("audit", "verify", "--config", self.config, "--expect-head", anchored)
        self.sql("DELETE FROM audit_log WHERE seq >= 3")
        self.cli("audit", "verify", "--config", self.config)  # the weakness anchoring covers
        out = self.cli(
            "audit", "verify", "--config", self.config, "--expect-head", anchored, code=1
        )
        self.assertIn("TRUNCATED: it ends at record 2, but record 3:", out.stdout)

    def test_expect_head_detects_rewrite(self):
        """The anchored record replaced by one with a recomputed hash (the chain still
        verifies): verify --expect-head exits 1 saying it was rewritten."""
        self.make_records(2)
        anchored = self.head()
        forged = self.forge(2, "actor", "someone-else")
        self.cli("audit", "verify", "--config", self.config)
        out = self.cli(
            "audit", "verify", "--config", self.config, "--expect-head", anchored, code=1
        )
        self.assertIn(f"REWRITTEN: record 2 has hash {forged}", out.stdout)

    def test_expect_head_must_be_seq_and_hash(self):
        """A malformed --expect-head is a usage error (exit 2) naming the flag."""
        out = self.cli("audit", "verify", "--config", self.config, "--expect-head", "3", code=2)
        self.assertIn("--expect-head", out.stderr)


class RunningBackendTruncationTests(unittest.TestCase):
    timeout = 60

    async def test_backend_refuses_to_chain_onto_a_truncated_log(self):
        """A running backend (real HTTP): records removed from the end of its log while it
        runs; the next audited request is preceded by audit.truncated, which continues
        from the record the backend last wrote, so `viworks audit verify` exits 1 naming
        the removed records instead of passing."""
        stack = Stack(self)
        config = stack.backend_config()
        store = open_store(config.backend.database)
        await store.open()
        await store.create_token("ops", hash_token("vw_ops"), 1.0)
        await store.close()
        backend = await stack.start_backend()
        pool = HTTPConnectionPool(reactor, persistent=False)
        url = f"http://127.0.0.1:{stack.http_port}/api/v1/agents/nobody/commands"
        headers = {b"authorization": [b"Bearer vw_ops"]}
        for _ in range(3):
            response = await treq.post(url, json={"verb": "ping"}, headers=headers, pool=pool)
            await response.content()
            self.assertEqual(response.code, 404)
        await backend.parts.audit.flush()
        with sqlite3.connect(config.backend.database) as conn:
            conn.execute("DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log)")
        response = await treq.post(url, json={"verb": "ping"}, headers=headers, pool=pool)
        await response.content()
        await stack.stop_backend()
        with sqlite3.connect(config.backend.database) as conn:
            actions = [a for (a,) in conn.execute("SELECT action FROM audit_log ORDER BY seq")]
        self.assertEqual(actions[-2:], ["audit.truncated", "api.post"])
        out = viworks("audit", "verify", "--config", config.path)
        self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
        self.assertIn("was removed", out.stdout)
