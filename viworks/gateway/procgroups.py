"""The verbs' process groups: recorded while they run, ended when a crash left them.

Every subprocess a verb runs leads a process group of its own (the runner execs
it through setsid, so pid == pgid). :class:`ProcessGroups` hears from the runner
when each group starts and ends and keeps it in the gateway's journal, with what
tells the group's leader apart from any later process that gets its pid: the
boot it ran in (``/proc/sys/kernel/random/boot_id``) and its start time (field
22 of ``/proc/PID/stat``, clock ticks since boot).

A gateway that dies without stopping its verbs (``kill -9``, the OOM killer)
leaves those groups running, past their timeouts, with nobody to report them.
At the next start :meth:`ProcessGroups.end_leftovers` ends the recorded groups
that are still the ones it started (SIGTERM, then SIGKILL after a grace) before
the gateway connects and reports their commands ``lost``. A group is ours when:

* its leader is alive with the recorded start time, in the same boot; or
* its leader is gone (or a zombie) but live members remain, each started no
  earlier than the leader and in the gateway's own cgroup. The kernel does not
  hand a group's number out again while any member lives, so those members
  are the leader's descendants; the cgroup check guards against a later group
  that took the same number after ours had emptied.

A pid that now belongs to another process (recycled) is never signalled.
Reading ``/proc`` goes through :class:`ProcTable`, whose root tests can point
at a directory of their own.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from viworks.files import read_text
from viworks.gateway.journal import Journal, JournalError, ProcessGroupRecord
from viworks.logs import Logger

__all__ = ["ProcStat", "ProcTable", "ProcessGroups", "parse_stat"]

log = Logger()

#: Seconds between SIGTERM and SIGKILL for a group left by a previous life.
LEFTOVER_GRACE = 5.0
#: How long to wait for SIGKILL to take effect before reporting anyway.
KILL_WAIT = 2.0
POLL_INTERVAL = 0.1


@dataclass(frozen=True)
class ProcStat:
    """What ``/proc/PID/stat`` says about one process."""

    pid: int
    state: str
    pgrp: int
    start_time: int

    @property
    def alive(self) -> bool:
        """Not a zombie (an exited process its parent has not reaped yet)."""
        return self.state not in ("Z", "X")


def parse_stat(pid: int, text: str) -> ProcStat:
    """Parse ``/proc/PID/stat``; the command name (in parentheses) may hold anything.

    :raises ValueError: the text is not a stat line.
    """
    fields = text[text.rindex(")") + 2 :].split()
    # After the name: state (3), ppid (4), pgrp (5), ... starttime (22).
    return ProcStat(pid=pid, state=fields[0], pgrp=int(fields[2]), start_time=int(fields[19]))


class ProcTable:
    """The processes of this host as ``/proc`` (or ``root``) shows them."""

    def __init__(self, root: str = "/proc") -> None:
        self.root = root

    def _read(self, *parts: str) -> str | None:
        try:
            return read_text(os.path.join(self.root, *parts))
        except OSError:
            return None

    def stat(self, pid: int) -> ProcStat | None:
        """The process ``pid``, or None if there is none (any more)."""
        text = self._read(str(pid), "stat")
        if text is None:
            return None
        try:
            return parse_stat(pid, text)
        except (ValueError, IndexError):
            return None

    def processes(self) -> list[ProcStat]:
        """Every process there is (those that vanish while being read are left out)."""
        try:
            names = os.listdir(self.root)
        except OSError:
            return []
        found = (self.stat(int(name)) for name in names if name.isdigit())
        return [stat for stat in found if stat is not None]

    def boot_id(self) -> str:
        return (self._read("sys", "kernel", "random", "boot_id") or "").strip()

    def cgroup(self, pid: int | str) -> str | None:
        return self._read(str(pid), "cgroup")


class ProcessGroups:
    """The runner's record of the groups it started (see the module docstring)."""

    def __init__(
        self,
        journal: Journal,
        clock: IReactorTime,
        proc: ProcTable | None = None,
        killpg: Callable[[int, int], None] = os.killpg,
        grace: float = LEFTOVER_GRACE,
    ) -> None:
        self.journal = journal
        self.clock = clock
        self.proc = proc or ProcTable()
        self.killpg = killpg
        self.grace = grace
        self._boot_id = self.proc.boot_id()
        self._cgroup = self.proc.cgroup("self")

    # -- what the runner reports ----------------------------------------------------

    def started(self, pgid: int) -> None:
        """A group was spawned: record it before it can outlive us."""
        stat = self.proc.stat(pgid)
        if stat is None:
            return  # already gone: nothing could be left behind
        self._write(lambda: self.journal.record_group(pgid, self._boot_id, stat.start_time))

    def ended(self, pgid: int) -> None:
        """The group's leader was reaped (and the group killed if it lingered)."""
        self._write(lambda: self.journal.forget_group(pgid))

    def _write(self, change: Callable[[], Any]) -> None:
        # A group ending after the journal closed (shutdown) stays recorded: the next
        # start finds it gone and forgets it.
        try:
            change()
        except JournalError as e:
            log.warn("process group not recorded: {error}", error=str(e))

    # -- after a crash ---------------------------------------------------------------

    async def end_leftovers(self) -> list[int]:
        """End the recorded groups still running (TERM, then KILL); their pgids.

        Returns once they are gone (or after the grace and ``KILL_WAIT``);
        every record is forgotten.
        """
        records = self.journal.process_groups()
        leftovers = [record for record in records if self._ours(record)]
        if leftovers:
            pgids = [record.pgid for record in leftovers]
            log.warn(
                "ending {count} process group(s) left running by the previous gateway"
                " process: {pgids} (SIGTERM, SIGKILL after {grace} s)",
                count=len(pgids),
                pgids=pgids,
                grace=self.grace,
            )
            self._signal(leftovers, signal.SIGTERM)
            alive = await self._wait(leftovers, self.grace)
            if alive:
                log.warn(
                    "process group(s) {pgids} survived SIGTERM: SIGKILL",
                    pgids=[record.pgid for record in alive],
                )
                self._signal(alive, signal.SIGKILL)
                alive = await self._wait(alive, KILL_WAIT)
            for record in alive:
                log.error("process group {pgid} is still running after SIGKILL", pgid=record.pgid)
        for record in records:
            self.journal.forget_group(record.pgid)
        return [record.pgid for record in leftovers]

    async def _wait(self, records: list[ProcessGroupRecord], seconds: float) -> list:
        """The records whose groups still run after up to ``seconds``."""
        deadline = self.clock.seconds() + seconds
        alive = [record for record in records if self._ours(record)]
        while alive and self.clock.seconds() < deadline:
            await deferLater(self.clock, POLL_INTERVAL, lambda: None)
            alive = [record for record in alive if self._ours(record)]
        return alive

    def _signal(self, records: list[ProcessGroupRecord], sig: int) -> None:
        for record in records:
            # Checked again just before: a group that emptied meanwhile is not signalled.
            if not self._ours(record):
                continue
            try:
                self.killpg(record.pgid, sig)
            except ProcessLookupError:
                pass
            except PermissionError as e:
                log.error("cannot signal process group {pgid}: {error}", pgid=record.pgid, error=e)

    def _ours(self, record: ProcessGroupRecord) -> bool:
        """Whether the group still has live processes that we started."""
        if record.boot_id != self._boot_id:
            return False  # the host rebooted since: nothing of that boot runs
        leader = self.proc.stat(record.pgid)
        if leader is not None:
            if leader.start_time != record.start_time:
                return False  # the pid was recycled: another process, never ours
            if leader.alive:
                return True
        members = [p for p in self.proc.processes() if p.pgrp == record.pgid and p.alive]
        if leader is not None:
            return bool(members)  # our zombie leader pins the group's number
        return bool(members) and all(
            p.start_time >= record.start_time and self.proc.cgroup(p.pid) == self._cgroup
            for p in members
        )
