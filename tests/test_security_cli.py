"""The security CLI against a real SQLite database: tokens, certificate revocation, audit.

Each command runs as its own process (``viworks ...``), as an operator would run it.
"""

from __future__ import annotations

import json
import os
import sqlite3

from twisted.trial import unittest

from tests.processes import viworks
from tests.stack import write


class CLIDatabase:
    """A backend.toml over a fresh SQLite file, and the CLI run against it."""

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.db = os.path.join(self.dir, "backend.db")
        # TLS files are not needed by these commands (they only open the store).
        self.config = write(
            os.path.join(self.dir, "backend.toml"),
            f'[backend]\ndatabase = "{self.db}"\n'
            '[tls]\ncert = "server.crt"\nkey = "server.key"\nclient_ca = "ca.crt"\n',
        )

    def cli(self, *args: str, code: int = 0):
        done = viworks(*args)
        self.assertEqual(done.returncode, code, done.stdout + done.stderr)
        return done

    def sql(self, statement: str, params: tuple = ()) -> list:
        with sqlite3.connect(self.db) as conn:
            rows = conn.execute(statement, params).fetchall()
        return rows

    def forge(self, seq: int, column: str, value: str) -> str:
        """Edit one field of audit record ``seq`` and recompute its own hash; return it."""
        from viworks.backend.auditchain import chain_hash

        [row] = self.sql(
            "SELECT at, actor, action, target, outcome, detail, prev_hash FROM audit_log"
            " WHERE seq = ?",
            (seq,),
        )
        record = dict(
            zip(("at", "actor", "action", "target", "outcome", "detail"), row[:6], strict=True)
        )
        record[column] = value
        forged = chain_hash(**record, prev_hash=row[6])
        self.sql(f"UPDATE audit_log SET {column} = ?, hash = ? WHERE seq = ?", (value, forged, seq))
        return forged


class SecurityCLITests(CLIDatabase, unittest.TestCase):
    def make_records(self) -> list[str]:
        """Four audited changes: three token creations and a revocation."""
        tokens = []
        for name, extra in (
            ("ci", ()),
            ("eyes", ("--role", "viewer", "--expires-in", "3600")),
            ("ops", ("--verbs", "ping,restart_service", "--sites", "paris")),
        ):
            out = self.cli("token", "create", "--config", self.config, "--name", name, *extra)
            tokens.append(out.stdout.strip().splitlines()[-1])
        self.cli("token", "revoke", "--config", self.config, "ci")
        return tokens

    def test_token_list_shows_no_secrets(self):
        """token create prints the secret alone on the last line; token list (table and
        JSON) shows names, roles, limits and state but never a secret or a hash."""
        tokens = self.make_records()
        for token in tokens:
            self.assertTrue(token.startswith("vw_"))
        table = self.cli("token", "list", "--config", self.config).stdout
        listed = json.loads(self.cli("token", "list", "--config", self.config, "--json").stdout)
        hashes = [row[0] for row in self.sql("SELECT token_hash FROM tokens")]
        for text in (table, json.dumps(listed)):
            for secret in tokens + hashes:
                self.assertNotIn(secret, text)
        by_name = {t["name"]: t for t in listed["tokens"]}
        self.assertEqual(by_name["ci"]["state"], "revoked")
        self.assertEqual((by_name["eyes"]["role"], by_name["eyes"]["state"]), ("viewer", "active"))
        self.assertIsNotNone(by_name["eyes"]["expires_at"])
        self.assertEqual(by_name["ops"]["verbs"], ["ping", "restart_service"])
        self.assertEqual(by_name["ops"]["sites"], ["paris"])
        self.assertIn("operator", table)
        # Revoking twice, or an unknown name, is an error.
        self.cli("token", "revoke", "--config", self.config, "ci", code=2)

    def test_pki_revoke_records_current_serial(self):
        """pki revoke stores the serial the agent last connected with; an agent never
        seen is an error."""
        self.make_records()
        self.cli("pki", "revoke", "--config", self.config, "gw-1", code=2)
        self.sql(
            "INSERT INTO agents (agent_id, status, cert_serial) VALUES ('gw-1', 'offline', 'beef')"
        )
        out = self.cli("pki", "revoke", "--config", self.config, "--reason", "stolen", "gw-1")
        self.assertIn("beef", out.stdout)
        self.assertEqual(
            self.sql("SELECT serial, agent_id, reason FROM revoked_certificates"),
            [("beef", "gw-1", "stolen")],
        )
        actions = [r[0] for r in self.sql("SELECT action FROM audit_log ORDER BY seq")]
        self.assertEqual(actions[-2:], ["certificate.revoke", "certificate.revoke"])

    def test_pki_revoke_every_serial_or_one(self):
        """pki revoke AGENT_ID revokes every certificate serial the backend saw that agent
        use; --serial HEX (any case, 0x or colons) revokes one, even one never seen;
        giving both, neither or a non-hex serial is a usage error (exit 2)."""
        self.cli("pki", "revoke", "--config", self.config, "gw-1", code=2)  # makes the DB
        for row in (("gw-1", "a1", 1.0, 2.0), ("gw-1", "b2", 3.0, 4.0), ("gw-2", "c3", 5.0, 5.0)):
            self.sql("INSERT INTO agent_certificates VALUES (?, ?, ?, ?)", row)
        revoked = "SELECT serial, agent_id FROM revoked_certificates ORDER BY seq"
        out = self.cli("pki", "revoke", "--config", self.config, "--serial", "0xC3").stdout
        self.assertIn("certificate c3 of agent 'gw-2' revoked", out)
        self.assertEqual(self.sql(revoked), [("c3", "gw-2")])
        out = self.cli("pki", "revoke", "--config", self.config, "gw-1").stdout
        self.assertIn("certificate a1 of agent 'gw-1' (seen 1970-01-01T00:00:01.000Z", out)
        self.assertIn("certificate b2 of agent 'gw-1'", out)
        self.assertEqual(self.sql(revoked), [("c3", "gw-2"), ("a1", "gw-1"), ("b2", "gw-1")])
        again = self.cli("pki", "revoke", "--config", self.config, "gw-1").stdout
        self.assertEqual(again.count("was already revoked"), 2)
        out = self.cli("pki", "revoke", "--config", self.config, "--serial", "00:DE:AD").stdout
        self.assertIn("certificate dead (never seen by this backend) revoked", out)
        for args in (("--serial", "a1", "gw-1"), (), ("--serial", "xyz")):
            done = self.cli("pki", "revoke", "--config", self.config, *args, code=2)
            self.assertIn("viworks:", done.stderr)
        records = self.sql("SELECT target, outcome, detail FROM audit_log ORDER BY seq")
        revokes = [(t, o, json.loads(d)) for t, o, d in records]
        self.assertEqual(
            [(t, o) for t, o, _ in revokes],
            [
                ("agent:gw-1", "refused"),
                ("certificate:c3", "ok"),
                ("agent:gw-1", "ok"),
                ("agent:gw-1", "refused"),
                ("certificate:dead", "ok"),
            ],
        )
        self.assertEqual(revokes[2][2]["serials"], ["a1", "b2"])
        self.assertEqual(revokes[3][2]["already"], ["a1", "b2"])

    def test_audit_verify_and_export(self):
        """An untouched chain verifies (exit 0); export writes one JSON object per line
        with secrets redacted and the hashes to re-check it."""
        tokens = self.make_records()
        out = self.cli("audit", "verify", "--config", self.config)
        self.assertIn("intact: 4 records", out.stdout)
        path = os.path.join(self.dir, "audit.jsonl")
        self.cli("audit", "export", "--config", self.config, "--output", path)
        with open(path) as f:
            records = [json.loads(line) for line in f]
        self.assertEqual([r["seq"] for r in records], [1, 2, 3, 4])
        self.assertEqual(
            [r["action"] for r in records],
            ["token.create", "token.create", "token.create", "token.revoke"],
        )
        self.assertEqual(records[2]["detail"]["sites"], ["paris"])
        self.assertEqual(records[1]["prev_hash"], records[0]["hash"])
        with open(path) as f:
            text = f.read()
        for token in tokens:
            self.assertNotIn(token, text)

    def assertBroken(self, seq: int, words: str):
        out = self.cli("audit", "verify", "--config", self.config, code=1)
        self.assertIn(f"BROKEN at record {seq}", out.stdout)
        self.assertIn(words, out.stdout)

    def test_edited_record_detected(self):
        """Editing a record's content makes verify fail (exit 1) naming that record."""
        self.make_records()
        self.sql("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 2")
        self.assertBroken(2, "record 2 was edited")

    def test_edited_record_with_recomputed_hash_detected(self):
        """An edit whose own hash was recomputed still breaks the link to the next record."""
        self.make_records()
        self.forge(2, "outcome", "refused")
        self.assertBroken(2, "record 2 was edited or replaced")

    def test_removed_record_detected(self):
        """Deleting a record makes verify fail naming the missing record."""
        self.make_records()
        self.sql("DELETE FROM audit_log WHERE seq = 3")
        self.assertBroken(3, "record 3 was removed")

    def test_reordered_records_detected(self):
        """Swapping two records' positions makes verify fail naming the first one moved."""
        self.make_records()
        self.sql("UPDATE audit_log SET seq = -2 WHERE seq = 2")
        self.sql("UPDATE audit_log SET seq = 2 WHERE seq = 3")
        self.sql("UPDATE audit_log SET seq = 3 WHERE seq = -2")
        self.assertBroken(2, "record 2 is out of order")
