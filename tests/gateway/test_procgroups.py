"""The verbs' process groups: recorded in the journal, and after a crash ended only if ours.

Most tests run over a fake ``/proc`` (a directory the test writes) with a recording
``killpg`` and a ``Clock``; the last ones use real processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.stack import eventually
from viworks.gateway.journal import Journal, ProcessGroupRecord
from viworks.gateway.procgroups import (
    LEFTOVER_GRACE,
    ProcessGroups,
    ProcTable,
    parse_stat,
)
from viworks.gateway.runner import SETSID, ProcessRunner

BOOT = "boot-1"
OUR_CGROUP = "0::/system.slice/viworks-gateway-agent.service\n"


class FakeProc:
    """A directory laid out like /proc, with the processes a test puts there."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.write("sys/kernel/random/boot_id", BOOT + "\n")
        self.write("self/cgroup", OUR_CGROUP)

    def write(self, relative: str, text: str) -> None:
        path = os.path.join(self.root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)

    def add(
        self, pid: int, pgrp: int, start: int, state: str = "S", cgroup: str = OUR_CGROUP
    ) -> None:
        # Fields after the name: state ppid pgrp session, 15 more, then starttime (22).
        rest = " ".join(["0"] * 15)
        self.write(f"{pid}/stat", f"{pid} (a (b) c) {state} 1 {pgrp} {pgrp} {rest} {start} 0 0\n")
        self.write(f"{pid}/cgroup", cgroup)

    def remove(self, pid: int) -> None:
        for name in ("stat", "cgroup"):
            os.unlink(os.path.join(self.root, str(pid), name))
        os.rmdir(os.path.join(self.root, str(pid)))


class ProcessGroupTests(unittest.TestCase):
    def setUp(self):
        base = os.path.abspath(self.mktemp())
        self.proc = FakeProc(os.path.join(base, "proc"))
        self.journal = Journal(os.path.join(base, "journal.db"))
        self.journal.open()
        self.addCleanup(self.journal.close)
        self.clock = Clock()
        self.signals: list[tuple[int, int]] = []
        self.on_signal = lambda pgid, sig: None
        self.groups = self.new_groups()

    def new_groups(self) -> ProcessGroups:
        def killpg(pgid: int, sig: int) -> None:
            self.signals.append((pgid, sig))
            self.on_signal(pgid, sig)

        return ProcessGroups(self.journal, self.clock, ProcTable(self.proc.root), killpg)

    def end_leftovers(self) -> list[int]:
        """Run end_leftovers to completion on the test's clock."""
        done: list = []
        Deferred.fromCoroutine(self.groups.end_leftovers()).addBoth(done.append)
        for _ in range(200):
            if done:
                break
            self.clock.advance(0.1)
        [result] = done
        if not isinstance(result, list):
            result.raiseException()
        return result

    def record(self, pgid: int, start: int, boot: str = BOOT) -> None:
        self.journal.record_group(pgid, boot, start)

    def test_parse_stat(self):
        """The command name may hold spaces and parentheses; fields count from its end."""
        stat = parse_stat(42, "42 (a (b) c) S 1 40 40 0 -1 " + "0 " * 13 + "777 0 0")
        self.assertEqual((stat.pid, stat.state, stat.pgrp, stat.start_time), (42, "S", 40, 777))
        self.assertRaises(ValueError, parse_stat, 1, "garbage")

    def test_started_and_ended_are_recorded(self):
        """A group is recorded with the leader's boot and start time, and forgotten at its end."""
        self.proc.add(100, 100, start=5000)
        self.groups.started(100)
        self.assertEqual(self.journal.process_groups(), [ProcessGroupRecord(100, BOOT, 5000)])
        self.groups.ended(100)
        self.assertEqual(self.journal.process_groups(), [])
        self.groups.started(101)  # gone before it could be read: nothing to leave behind
        self.assertEqual(self.journal.process_groups(), [])

    def test_leftover_ended_with_term(self):
        """A recorded group whose leader still runs is sent SIGTERM; no SIGKILL when it goes."""
        self.proc.add(100, 100, start=5000)
        self.proc.add(101, 100, start=5001)
        self.record(100, 5000)
        self.on_signal = lambda pgid, sig: [self.proc.remove(p) for p in (100, 101)]
        self.assertEqual(self.end_leftovers(), [100])
        self.assertEqual(self.signals, [(100, signal.SIGTERM)])
        self.assertEqual(self.journal.process_groups(), [])

    def test_kill_after_grace(self):
        """A group that ignores SIGTERM gets SIGKILL after the grace."""
        self.proc.add(100, 100, start=5000)
        self.record(100, 5000)
        self.on_signal = lambda pgid, sig: sig == signal.SIGKILL and self.proc.remove(100)
        self.assertEqual(self.end_leftovers(), [100])
        self.assertEqual(self.signals, [(100, signal.SIGTERM), (100, signal.SIGKILL)])
        self.assertGreaterEqual(self.clock.seconds(), LEFTOVER_GRACE)

    def test_recycled_pid_never_signalled(self):
        """A pid now held by another process (other start time) is left alone, and forgotten."""
        self.proc.add(100, 100, start=9999)
        self.record(100, 5000)
        self.assertEqual(self.end_leftovers(), [])
        self.assertEqual(self.signals, [])
        self.assertEqual(self.journal.process_groups(), [])

    def test_other_boot_never_signalled(self):
        """After a reboot start times repeat: a record from another boot matches nothing."""
        self.proc.add(100, 100, start=5000)
        self.record(100, 5000, boot="boot-0")
        self.assertEqual(self.end_leftovers(), [])
        self.assertEqual(self.signals, [])

    def test_gone_groups_forgotten(self):
        """A recorded group that ended meanwhile is only forgotten."""
        self.record(100, 5000)
        self.assertEqual(self.end_leftovers(), [])
        self.assertEqual((self.signals, self.journal.process_groups()), ([], []))

    def test_leaderless_group_in_our_cgroup_ended(self):
        """Members left by an exited leader (zombie or reaped) are ended when they are ours."""
        self.proc.add(100, 100, start=5000, state="Z")
        self.proc.add(101, 100, start=5001)
        self.proc.add(201, 200, start=6001)  # leader 200 reaped: a member only
        self.record(100, 5000)
        self.record(200, 6000)
        self.on_signal = lambda pgid, sig: self.proc.remove(pgid + 1)
        self.assertEqual(self.end_leftovers(), [100, 200])
        self.assertEqual(self.signals, [(100, signal.SIGTERM), (200, signal.SIGTERM)])

    def test_leaderless_group_elsewhere_never_signalled(self):
        """Members of a group with that number outside our cgroup, or older than our leader,
        are not ours."""
        self.proc.add(201, 200, start=6001, cgroup="0::/user.slice\n")
        self.proc.add(301, 300, start=6999)
        self.record(200, 6000)
        self.record(300, 7000)
        self.assertEqual(self.end_leftovers(), [])
        self.assertEqual(self.signals, [])


class RealProcessGroupTests(unittest.TestCase):
    """Real processes, the real /proc and os.killpg."""

    timeout = 30

    def setUp(self):
        self.journal = Journal(os.path.join(self.mktemp() + ".db"))
        self.journal.open()
        self.addCleanup(self.journal.close)
        self.groups = ProcessGroups(self.journal, reactor)

    async def test_runner_records_its_groups(self):
        """Every group the runner spawns is in the journal while it runs, with the leader's
        real start time, and is forgotten once it ended."""
        runner = ProcessRunner(reactor, groups=self.groups)
        handle = runner.start([sys.executable, "-c", "import time; time.sleep(30)"], timeout=20)
        [record] = self.journal.process_groups()
        self.assertEqual(record.pgid, handle.pid)
        self.assertEqual(record.start_time, ProcTable().stat(handle.pid).start_time)
        handle.cancel()
        await handle.result
        self.assertEqual(self.journal.process_groups(), [])

    async def test_leftover_group_ended(self):
        """A group recorded by a 'previous life' is found running and ended with SIGTERM."""
        child = subprocess.Popen([SETSID, "sleep", "60"])
        self.addCleanup(lambda: child.poll() is None and child.kill())
        await eventually(lambda: ProcTable().stat(child.pid).pgrp == child.pid)
        self.groups.started(child.pid)
        ended = await self.groups.end_leftovers()
        self.assertEqual(ended, [child.pid])
        self.assertEqual(child.wait(5), -signal.SIGTERM)
        self.assertEqual(self.journal.process_groups(), [])
