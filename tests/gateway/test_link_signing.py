"""An agent with [signing]: forged, replayed, expired or misaddressed commands run nothing.

Driven like tests/gateway/test_link.py (frame by frame, real journal, fake catalogue).
"""

from __future__ import annotations

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from tests.gateway.test_link import FakeConnection, LinkCommandTests, succeeded
from viworks import protocol, signing
from viworks.gateway.journal import Journal
from viworks.gateway.link import BackendLink

KEY = signing.generate_private_key()
NEXT = signing.generate_private_key()
FORGER = signing.generate_private_key()


class SignedLinkTests(LinkCommandTests):
    """Every LinkCommandTests test again, with signing on and genuine signatures..."""

    window = 60.0

    def new_link(self) -> BackendLink:
        link = super().new_link()
        link.verifier = signing.Verifier([KEY.public_key(), NEXT.public_key()], self.window)
        return link

    def command(
        self,
        conn,
        command_id="c1",
        expires_at=None,
        link=None,
        *,
        key=KEY,
        agent_id="gw-1",
        issued_at=None,
        nonce=None,
        signature=...,
        args=None,
        **extra,
    ) -> dict:
        args = {} if args is None else args
        if signature is ...:
            envelope = signing.envelope_for(
                command_id=command_id,
                agent_id=agent_id,
                verb="ping",
                args=args,
                expires_at=expires_at,
                timeout=5,
                now=self.clock.seconds() if issued_at is None else issued_at,
                nonce=nonce,
                redacted=bool(extra.get("redacted")),
            )
            signature = signing.sign(key, envelope)
        fields = dict(
            command_id=command_id,
            agent_id=agent_id,
            verb="ping",
            args=args,
            timeout=5,
            expires_at=expires_at,
            **extra,
        )
        if signature is not None:
            fields["signature"] = signature
        (link or self.link).frame_received(conn, protocol.encode("command", **fields), False)
        return fields

    def cancel(
        self, conn, command_id="c1", link=None, *, key=KEY, nonce=None, signature=..., **extra
    ) -> dict:
        if signature is ...:
            envelope = signing.cancel_envelope_for(
                command_id=command_id, agent_id="gw-1", now=self.clock.seconds(), nonce=nonce
            )
            signature = signing.sign(key, envelope)
        if signature is not None:
            extra["signature"] = signature
        super().cancel(conn, command_id, link, **extra)
        return extra

    def refused_with(self, conn, code: str, status: str = "rejected") -> None:
        self.assertEqual(self.catalog.started, [], "nothing may run")
        self.assertEqual(conn.of_type("ack"), [])
        [result] = conn.of_type("result")
        self.assertEqual((result["status"], result["error"]["code"]), (status, code))

    # -- ...and the refusals ----------------------------------------------------------

    def test_hello_says_signing_on(self):
        """HELLO announces that this agent verifies signatures."""
        conn = FakeConnection()
        self.link.connection_opened(conn)
        self.assertEqual(conn.of_type("hello")[0]["signing"], "on")

    def test_older_backend_named_at_welcome(self):
        """A backend of protocol 1 signs what this agent refuses: the welcome logs why."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.connect()
        self.assertEqual([e for e in logged if e["log_level"] == LogLevel.error], [])
        conn = FakeConnection()
        self.link.connection_opened(conn)
        welcome = protocol.encode(
            "welcome", session_id="s2", epoch=2, heartbeat_interval=15, heartbeat_timeout=30
        )
        self.link.frame_received(conn, welcome, False)
        [error] = [e for e in logged if e["log_level"] == LogLevel.error]
        self.assertEqual((error["theirs"], error["ours"]), (1, 2))
        self.assertIn("upgrade the backend first", error["log_format"])

    def test_unsigned_refused(self):
        conn = self.connect()
        self.command(conn, signature=None)
        self.refused_with(conn, signing.INVALID_SIGNATURE)

    def signature_over(self, key=KEY, command_id="c1", **changes) -> dict:
        """A signature over the envelope ``command`` signs by default, with ``changes``."""
        fields = {"agent_id": "gw-1", "verb": "ping", "args": {}, "expires_at": None, "timeout": 5}
        fields.update(command_id=command_id, now=self.clock.seconds())
        return signing.sign(key, signing.envelope_for(**{**fields, **changes}))

    def test_forged_refused(self):
        """Signed by a key the agent does not trust, or with a trusted key id: nothing runs."""
        conn = self.connect()
        self.command(conn, "c1", key=FORGER)
        forged = self.signature_over(FORGER, "c2")
        forged["key_id"] = signing.key_id(KEY.public_key())
        self.command(conn, "c2", signature=forged)
        self.assertEqual(self.catalog.started, [])
        self.assertEqual(
            [(r["status"], r["error"]["code"]) for r in conn.of_type("result")],
            [("rejected", signing.INVALID_SIGNATURE)] * 2,
        )

    def test_tampered_args_refused(self):
        """A genuine signature over other arguments does not cover these."""
        conn = self.connect()
        self.command(conn, signature=self.signature_over(), args={"x": 1})
        self.refused_with(conn, signing.INVALID_SIGNATURE)

    def test_tampered_timeout_refused(self):
        """A timeout edited on the way (to end the run at once, timed_out) breaks the signature."""
        conn = self.connect()
        self.command(conn, signature=self.signature_over(timeout=60))  # sent with timeout=5
        self.refused_with(conn, signing.INVALID_SIGNATURE)

    def test_stripped_redacted_flag_refused(self):
        """A redacted redelivery stripped of its flag would run with "***" for its secrets:
        the signature covers the flag, so it is refused."""
        conn = self.connect()
        self.command(conn, signature=self.signature_over(redacted=True))
        self.refused_with(conn, signing.INVALID_SIGNATURE)

    def cancel_refused(self, conn, code: str) -> None:
        self.assertFalse(self.catalog.executions[0].cancelled, "the run must go on")
        self.assertEqual(conn.of_type("result"), [])
        errors = [(e["code"], e["command_id"]) for e in conn.of_type("error")]
        self.assertEqual(errors, [(code, "c1")])

    def test_unsigned_cancel_refused(self):
        """A cancel without a signature (injected on the path) does not stop a genuine run."""
        conn = self.connect()
        self.command(conn)
        self.cancel(conn, signature=None)
        self.cancel_refused(conn, signing.INVALID_SIGNATURE)
        self.catalog.executions[0].outcome.callback(succeeded())
        self.assertEqual([r["status"] for r in conn.of_type("result")], ["succeeded"])

    def test_forged_cancel_refused(self):
        """A cancel signed by another key, or a genuine one for another command, is refused."""
        conn = self.connect()
        self.command(conn)
        self.cancel(conn, key=FORGER)
        other = self.cancel(FakeConnection(), "c2", nonce="n2")["signature"]
        self.cancel(conn, signature=other)
        self.assertFalse(self.catalog.executions[0].cancelled)
        errors = [(e["code"], e["command_id"]) for e in conn.of_type("error")]
        self.assertEqual(errors, [(signing.INVALID_SIGNATURE, "c1")] * 2)

    def test_replayed_cancel_refused(self):
        """A captured cancel played again (its nonce already seen) is refused, across restarts."""
        conn = self.connect()
        self.command(conn)
        self.cancel(conn, nonce="n1")
        self.assertTrue(self.catalog.executions[0].cancelled)
        self.catalog.executions[0].cancelled = False
        self.cancel(conn, nonce="n1")
        self.cancel_refused(conn, signing.REPLAY_DETECTED)
        self.link.journal.close()
        link = self.new_link()
        conn = self.connect(link)
        self.cancel(conn, nonce="n1", link=link)
        errors = [(e["code"], e["command_id"]) for e in conn.of_type("error")]
        self.assertEqual(errors, [(signing.REPLAY_DETECTED, "c1")])

    def test_misaddressed_refused(self):
        conn = self.connect()
        self.command(conn, agent_id="gw-2")
        self.refused_with(conn, signing.NOT_FOR_ME)

    def test_outside_clock_window_refused(self):
        conn = self.connect()
        self.command(conn, "c1", issued_at=self.clock.seconds() - 61)
        self.command(conn, "c2", issued_at=self.clock.seconds() + 61)
        self.assertEqual(self.catalog.started, [])
        self.assertEqual(
            [(r["status"], r["error"]["code"]) for r in conn.of_type("result")],
            [("rejected", signing.EXPIRED)] * 2,
        )

    def test_rotation_next_key_accepted(self):
        conn = self.connect()
        self.command(conn, key=NEXT)
        self.assertEqual(len(self.catalog.started), 1)

    def test_refusal_is_journalled(self):
        """A redelivery of a refused id is answered the same way, and still runs nothing."""
        conn = self.connect()
        self.command(conn, key=FORGER)
        self.command(conn)  # even a genuine one now: the id was refused
        self.assertEqual(self.catalog.started, [])
        self.assertEqual(
            [r["error"]["code"] for r in conn.of_type("result")], [signing.INVALID_SIGNATURE] * 2
        )

    def replay(self, restart: bool) -> None:
        conn = self.connect()
        self.command(conn, nonce="n1")
        self.catalog.executions[0].outcome.callback(succeeded())
        self.link.frame_received(conn, protocol.encode("result_ack", command_id="c1"), False)
        # The journal forgets the finished command (pruned): only the nonce is left.
        self.clock.advance(1)
        self.assertEqual(self.link.journal.prune(max_age=0, keep=0), 1)
        link = self.link
        if restart:
            link.journal.close()
            link = self.new_link()
        conn = self.connect(link)
        self.clock.advance(30)  # still inside the clock window
        self.command(conn, nonce="n1", issued_at=self.clock.seconds() - 31, link=link)
        self.assertEqual(self.catalog.started if restart else self.catalog.started[1:], [])
        [result] = conn.of_type("result")
        self.assertEqual(
            (result["status"], result["error"]["code"]), ("rejected", signing.REPLAY_DETECTED)
        )

    def test_replay_refused(self):
        """A captured frame played again (its nonce already seen) runs nothing."""
        self.replay(restart=False)

    def test_replay_cache_survives_restart(self):
        self.replay(restart=True)

    def test_replay_cache_is_bounded(self):
        """Nonces are forgotten once their window has passed."""
        conn = self.connect()
        for i in range(5):
            self.command(conn, f"c{i}")
        self.assertEqual(self.link.journal.nonce_count(), 5)
        self.clock.advance(self.window + 1)
        self.command(conn, "c9")
        self.assertEqual(self.link.journal.nonce_count(), 1)

    def test_redelivery_answered_before_signature_check(self):
        """A command the journal knows is answered from it, whatever its signature."""
        conn = self.connect()
        self.command(conn)
        self.catalog.executions[0].outcome.callback(succeeded("once"))
        self.command(conn, signature=None)
        self.assertEqual(len(self.catalog.started), 1)
        self.assertEqual([r["stdout"] for r in conn.of_type("result")], ["once", "once"])


class UnsignedLinkTests(unittest.TestCase):
    def test_hello_says_signing_off(self):
        """Without [signing] the agent says so in HELLO and runs unsigned commands."""
        path = self.mktemp()
        link = BackendLink(
            reactor=None,
            backend_url="wss://backend.test:8081/ws/agent",
            agent_id="gw-1",
            site="test",
            hostname="host",
            catalog=type("C", (), {"describe": lambda self: {}})(),
            journal=Journal(path),
            tls_options=None,
        )
        conn = FakeConnection()
        link.connection_opened(conn)
        self.assertEqual(conn.of_type("hello")[0]["signing"], "off")
