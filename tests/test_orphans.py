"""No orphan processes: a gateway killed with SIGKILL ends its verbs' groups when it restarts.

Real backend and gateway processes (twistd), as in tests/test_faults.py. The ``mark``
verb sleeps in a Python child; the test finds that process by its tag in /proc.
"""

from __future__ import annotations

import os

from twisted.internet import reactor

from tests.stack import eventually, stays
from tests.test_faults import FaultTestCase
from viworks import lifecycle
from viworks.gateway.procgroups import ProcTable


def processes_tagged(tag: str) -> list[int]:
    """Live (not zombie) processes whose command line holds ``tag``."""
    table = ProcTable()
    found = []
    for stat in table.processes():
        try:
            with open(f"/proc/{stat.pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if tag.encode() in argv and stat.alive:
            found.append(stat.pid)
    return found


def group_alive(pgid: int) -> bool:
    """Whether any live process is in group ``pgid``."""
    return any(p.pgrp == pgid and p.alive for p in ProcTable().processes())


class OrphanTests(FaultTestCase):
    async def test_restart_ends_the_groups_of_a_killed_gateway(self):
        """kill -9 the gateway while a verb sleeps: the verb outlives it (nobody else would
        stop it), and the restarted gateway ends its group within a few seconds, before it
        reports the command lost."""
        await self.start_backend(self.backend())
        gateway = self.gateway().start()
        await self.wait_agent("online")
        tag = f"orphan-{os.getpid()}"
        await self.submit(tag, sleep=30)
        await self.wait_command(tag, (lifecycle.RUNNING,))
        await eventually(lambda: processes_tagged(tag))
        [pid] = processes_tagged(tag)
        self.assertEqual(ProcTable().stat(pid).pgrp, pid, "a verb leads its own group")

        self.assertEqual(gateway.kill(), -9)
        await stays(lambda: group_alive(pid), 1.0)  # orphaned: it would sleep on

        mark = gateway.log_mark()
        restarted = reactor.seconds()
        gateway.start()
        await eventually(lambda: not group_alive(pid), timeout=10)
        self.assertLess(reactor.seconds() - restarted, 10)
        lost = await self.wait_command(tag, lifecycle.FINAL, timeout=15)
        self.assertEqual(
            (lost["status"], lost["error"]["code"]), (lifecycle.LOST, "AGENT_RESTARTED")
        )
        log = gateway.log_text(mark)
        self.assertIn(f"left running by the previous gateway process: [{pid}]", log)
