"""The ledger signs every frame that changes what an agent does: commands (with their
timeout and redacted flag) and cancels, in the form each agent's protocol verifies."""

from __future__ import annotations

import base64
import dataclasses

from tests.backend.helpers import Backend, FakeSession
from tests.backend.test_ledger import SECRET_ARGS, LedgerTests
from viworks import signing

KEY = signing.generate_private_key()


class LedgerSigningTests(LedgerTests):
    """Every LedgerTests test again with signing on, and what the backend signs."""

    async def _setUp(self):
        self.verifier = signing.Verifier([KEY.public_key()])
        await super()._setUp()

    def new_backend(self, **backend_keys) -> Backend:
        return super().new_backend(signing_key=KEY, **backend_keys)

    def online(self, agent_protocol: int = 2) -> FakeSession:
        session = super().online()
        session.agent_protocol = agent_protocol
        return session

    def verify(self, frame) -> signing.Envelope:
        return self.verifier.check(frame.fields, agent_id="gw-1", now=self.clock.seconds())

    async def test_command_signature_covers_timeout(self):
        """The command frame verifies as sent, and not with another timeout."""
        session = self.online()
        await self.ledger.submit("gw-1", "ping", {}, timeout=30)
        [frame] = session.commands()
        self.assertEqual(self.verify(frame).timeout, 30)
        edited = {**frame.fields, "timeout": 0.001}
        err = self.assertRaises(
            signing.SignatureRefused,
            self.verifier.check,
            edited,
            agent_id="gw-1",
            now=self.clock.seconds(),
        )
        self.assertEqual(err.code, signing.INVALID_SIGNATURE)

    async def test_redacted_redelivery_signed_as_redacted(self):
        """After a backend restart a redacted redelivery is signed with redacted true."""
        session = self.online()
        await self.ledger.submit("gw-1", "create_panel_user", SECRET_ARGS)
        self.registry.unregister(session)
        restarted = self.new_backend()
        session = self.online()
        await restarted.commands.dispatcher.deliver_pending(session)
        [frame] = session.commands()
        self.assertTrue(frame["redacted"])
        self.assertTrue(self.verify(frame).redacted)
        stripped = {k: v for k, v in frame.fields.items() if k != "redacted"}
        self.assertRaises(
            signing.SignatureRefused,
            self.verifier.check,
            stripped,
            agent_id="gw-1",
            now=self.clock.seconds(),
        )

    async def test_cancels_signed(self):
        """Cancels sent at once and those resent after a HELLO are signed for the agent."""
        session = self.online()
        command, _ = await self.ledger.submit("gw-1", "ping", {})
        await self.ledger.cancel(command.command_id)
        self.registry.unregister(session)
        again = self.online()
        await self.backend.commands.dispatcher.deliver_pending(again)
        cancels = [f for f in session.sent + again.sent if f.type == "cancel"]
        self.assertEqual(len(cancels), 2)
        nonces = set()
        for frame in cancels:
            envelope = self.verifier.check_cancel(
                frame.fields, agent_id="gw-1", now=self.clock.seconds()
            )
            self.assertEqual(envelope.command_id, command.command_id)
            nonces.add(envelope.nonce)
        self.assertEqual(len(nonces), 2, "every cancel frame has a nonce of its own")

    async def test_protocol_1_agent_gets_version_1(self):
        """An agent that said HELLO with protocol 1 gets the envelope it can verify."""
        session = self.online(agent_protocol=1)
        await self.ledger.submit("gw-1", "ping", {}, timeout=30)
        [frame] = session.commands()
        envelope = signing.envelope_of_frame(frame.fields, frame["signature"])
        old = dataclasses.replace(envelope, version=1)
        sig = base64.b64decode(frame["signature"]["sig"])
        KEY.public_key().verify(sig, signing.canonical(old))
        self.assertRaises(signing.SignatureRefused, self.verify, frame)
