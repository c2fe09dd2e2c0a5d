"""Signed commands through a real link (mutual TLS on loopback, in one process)."""

from __future__ import annotations

import os
import uuid

from twisted.trial import unittest

from tests.stack import Stack, eventually, stays
from viworks import protocol, signing
from viworks.backend.api.views import agent_json


class SignedLinkTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.stack = Stack(self)
        self.marks = os.path.join(self.stack.dir, "marks")

    def online(self, agent_id="gw-1") -> bool:
        return self.stack.backend.parts.registry.get(agent_id) is not None

    def marked(self) -> list[str]:
        if not os.path.exists(self.marks):
            return []
        with open(self.marks) as f:
            return f.read().split()

    async def run_verb(self, verb, args):
        commands = self.stack.backend.parts.commands
        command, _ = await commands.ledger.submit("gw-1", verb, args, None)
        finished = await commands.waiters.wait(command.command_id, 20)
        self.assertIsNotNone(finished, "the command did not finish in time")
        return finished

    async def test_signed_commands_run_and_forged_ones_do_not(self):
        """With signing on both sides commands run; frames injected on the link run nothing."""
        await self.stack.start_backend(extra=self.stack.signing_backend())
        gateway = self.stack.start_gateway(marks=self.marks, extra=self.stack.signing_agent())
        await eventually(self.online)
        agent = await self.stack.backend.parts.store.get_agent("gw-1")
        self.assertEqual(agent_json(agent, True)["signing"], "on")

        command = await self.run_verb("mark", {"tag": "genuine", "sleep": 0})
        self.assertEqual(command.status, "succeeded", command.error)
        self.assertEqual(self.marked(), ["genuine"])

        # What a compromised proxy could put on the link: a command signed by another key,
        # one with no signature, one signed for another agent.
        session = self.stack.backend.parts.registry.get("gw-1")
        theirs = signing.load_private_key(os.path.join(self.stack.pki["theirs"], "signing.key"))
        ours = signing.load_private_key(os.path.join(self.stack.pki["ours"], "signing.key"))
        injected = {}
        for name, key, addressee in (
            ("forged", theirs, "gw-1"),
            ("unsigned", None, "gw-1"),
            ("misaddressed", ours, "gw-2"),
        ):
            command_id = uuid.uuid4().hex
            args = {"tag": name, "sleep": 0}
            fields = dict(command_id=command_id, agent_id=addressee, verb="mark", args=args)
            extra = {}
            if key is not None:
                envelope = signing.envelope_for(
                    **fields, expires_at=None, timeout=10, now=gateway.link.reactor.seconds()
                )
                extra["signature"] = signing.sign(key, envelope)
            session.send_frame(
                protocol.encode("command", **fields, timeout=10, expires_at=None, **extra)
            )
            injected[name] = command_id

        journal = gateway.link.journal

        def refused():
            return all(journal.get(cid) is not None for cid in injected.values())

        await eventually(refused)
        codes = {name: journal.get(cid).result["error"]["code"] for name, cid in injected.items()}
        self.assertEqual(
            codes,
            {
                "forged": signing.INVALID_SIGNATURE,
                "unsigned": signing.INVALID_SIGNATURE,
                "misaddressed": signing.NOT_FOR_ME,
            },
        )
        for cid in injected.values():
            self.assertEqual(journal.get(cid).result["status"], "rejected")
        await stays(lambda: self.marked() == ["genuine"], 0.5)

        # The link is still fine for genuine commands.
        command = await self.run_verb("mark", {"tag": "after", "sleep": 0})
        self.assertEqual(command.status, "succeeded", command.error)
        self.assertEqual(self.marked(), ["genuine", "after"])

    async def test_injected_cancel_does_not_stop_a_genuine_run(self):
        """An unsigned or forged cancel put on the link (a compromised proxy) is refused: the
        run goes on and succeeds; the backend's own signed cancel still works."""
        await self.stack.start_backend(extra=self.stack.signing_backend())
        gateway = self.stack.start_gateway(marks=self.marks, extra=self.stack.signing_agent())
        await eventually(self.online)
        commands = self.stack.backend.parts.commands
        command, _ = await commands.ledger.submit(
            "gw-1", "mark", {"tag": "genuine", "sleep": 2}, None
        )
        command_id = command.command_id
        await eventually(lambda: command_id in gateway.link._running)
        session = self.stack.backend.parts.registry.get("gw-1")
        theirs = signing.load_private_key(os.path.join(self.stack.pki["theirs"], "signing.key"))
        forged = signing.sign(
            theirs,
            signing.cancel_envelope_for(
                command_id=command_id, agent_id="gw-1", now=gateway.link.reactor.seconds()
            ),
        )
        for extra in ({}, {"signature": forged}):
            session.send_frame(
                protocol.encode("cancel", command_id=command_id, agent_id="gw-1", **extra)
            )
        finished = await commands.waiters.wait(command_id, 20)
        self.assertEqual(finished.status, "succeeded", finished.error)
        self.assertEqual(self.marked(), ["genuine"])

        command, _ = await commands.ledger.submit(
            "gw-1", "mark", {"tag": "stopped", "sleep": 20}, None
        )
        command_id = command.command_id
        await eventually(lambda: command_id in gateway.link._running)
        await commands.ledger.cancel(command_id)
        finished = await commands.waiters.wait(command_id, 20)
        self.assertEqual(finished.status, "cancelled", finished.error)

    async def test_unsigned_backend_is_refused_by_a_signing_agent(self):
        """A backend without [signing] cannot make a signing agent run anything."""
        await self.stack.start_backend()
        self.stack.start_gateway(marks=self.marks, extra=self.stack.signing_agent())
        await eventually(self.online)
        command = await self.run_verb("mark", {"tag": "x", "sleep": 0})
        self.assertEqual(command.status, "rejected")
        self.assertEqual(command.error["code"], signing.INVALID_SIGNATURE)
        self.assertEqual(self.marked(), [])

    async def test_agent_without_signing_shows_off(self):
        """An agent without [signing] still runs (signed) commands and shows signing off."""
        await self.stack.start_backend(extra=self.stack.signing_backend())
        self.stack.start_gateway()
        await eventually(self.online)
        agent = await self.stack.backend.parts.store.get_agent("gw-1")
        self.assertEqual(agent_json(agent, True)["signing"], "off")
        command = await self.run_verb("ping", {})
        self.assertEqual(command.status, "succeeded")
