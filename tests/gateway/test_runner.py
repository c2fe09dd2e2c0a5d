"""Tests for viworks.gateway.runner.

Most tests spawn real ``sys.executable -c`` children; the timer logic is also
checked deterministically with a fake spawner and a ``Clock``.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import sys
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.trial import unittest

from viworks.config import ConfigError
from viworks.gateway.runner import (
    DEFAULT_ENV,
    LEFTOVER_LINGER,
    SETSID,
    ProcessRunner,
    RunAsError,
    RunResult,
)

PY = sys.executable
#: The system interpreter: the test venv's may not be readable by other users.
SYSTEM_PY = "/usr/bin/python3"


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (zombies count as dead: in a
    container, PID 1 may never reap the orphans we kill)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


async def _wait_for(predicate: Any, seconds: float = 5.0) -> bool:
    """Poll ``predicate`` every 50 ms for up to ``seconds``."""
    for _ in range(int(seconds / 0.05)):
        if predicate():
            return True
        await deferLater(reactor, 0.05, lambda: None)
    return bool(predicate())


class RealProcessTests(unittest.TestCase):
    def setUp(self) -> None:
        self.runner = ProcessRunner(reactor)
        self.tmp = tempfile.mkdtemp()

    def script(self, name: str) -> str:
        return os.path.join(self.tmp, name)

    async def test_exit_code_and_output(self) -> None:
        """Exit code, stdout and stderr are captured separately."""
        code = "import sys; print('hello'); print('oops', file=sys.stderr); sys.exit(3)"
        result = await self.runner.run([PY, "-c", code], timeout=20)
        self.assertIsInstance(result, RunResult)
        self.assertEqual(result.exit_code, 3)
        self.assertIsNone(result.signal)
        self.assertEqual(result.stdout, "hello\n")
        self.assertEqual(result.stderr, "oops\n")
        self.assertFalse(result.stdout_truncated or result.stderr_truncated)
        self.assertFalse(result.timed_out or result.cancelled)
        self.assertLessEqual(result.started_at, result.finished_at)

    async def test_success(self) -> None:
        """A clean exit gives exit_code 0 and no signal."""
        result = await self.runner.run([PY, "-c", "pass"], timeout=20)
        self.assertEqual((result.exit_code, result.signal), (0, None))

    async def test_stdin_delivered_and_closed(self) -> None:
        """stdin bytes reach the child and stdin is then closed (EOF)."""
        code = "import sys; sys.stdout.write(sys.stdin.read().upper())"
        result = await self.runner.run([PY, "-c", code], stdin=b"abc\xc3\xa9", timeout=20)
        self.assertEqual(result.stdout, "ABC\u00c9")
        self.assertEqual(result.exit_code, 0)

    async def test_no_stdin_gives_eof(self) -> None:
        """Without stdin the child reads EOF instead of hanging."""
        code = "import sys; print(len(sys.stdin.read()))"
        result = await self.runner.run([PY, "-c", code], timeout=20)
        self.assertEqual(result.stdout, "0\n")

    async def test_output_cap(self) -> None:
        """Output past the cap is dropped, flagged, and the child still finishes."""
        code = (
            "import sys\n"
            "sys.stdout.write('x' * 1_000_000); sys.stdout.flush()\n"
            "sys.stderr.write('y' * 10)\n"
            "print('done', file=sys.stderr)\n"
        )
        result = await self.runner.run([PY, "-c", code], output_cap=1000, timeout=20)
        self.assertEqual(result.exit_code, 0)
        self.assertEqual(result.stdout, "x" * 1000)
        self.assertTrue(result.stdout_truncated)
        self.assertEqual(result.stderr, "y" * 10 + "done\n")
        self.assertFalse(result.stderr_truncated)

    async def test_incremental_utf8(self) -> None:
        """A character split across writes is decoded whole; bad bytes become U+FFFD."""
        code = (
            "import sys, time\n"
            "o = sys.stdout.buffer\n"
            "o.write(b'\\xc3'); o.flush(); time.sleep(0.2)\n"
            "o.write(b'\\xa9 \\xff'); o.flush()\n"
        )
        result = await self.runner.run([PY, "-c", code], timeout=20)
        self.assertEqual(result.stdout, "\u00e9 \ufffd")

    async def test_env_is_minimal(self) -> None:
        """The child gets exactly the minimal environment, not the agent's."""
        os.environ["VIWORKS_TEST_SECRET"] = "leak"
        self.addCleanup(os.environ.pop, "VIWORKS_TEST_SECRET", None)
        code = "import json, os; print(json.dumps(dict(os.environ)))"
        result = await self.runner.run([PY, "-c", code], timeout=20)
        self.assertEqual(json.loads(result.stdout), dict(DEFAULT_ENV))

    async def test_env_explicit(self) -> None:
        """An explicit env is passed exactly."""
        code = "import json, os; print(json.dumps(dict(os.environ)))"
        env = {"A": "1", "LANG": "C.UTF-8"}  # a LANG stops Python adding LC_CTYPE
        result = await self.runner.run([PY, "-c", code], env=env, timeout=20)
        self.assertEqual(json.loads(result.stdout), env)

    async def test_own_process_group(self) -> None:
        """The child leads its own process group and session (pid == pgid)."""
        code = "import os; print(os.getpid(), os.getpgrp(), os.getsid(0))"
        handle = self.runner.start([PY, "-c", code], timeout=20)
        result = await handle.result
        pid, pgid, sid = map(int, result.stdout.split())
        self.assertEqual(pid, handle.pid)
        self.assertEqual(pgid, pid)
        self.assertEqual(sid, pid)

    async def test_timeout_kills_whole_group(self) -> None:
        """On timeout the whole process group, grandchildren included, is killed."""
        pidfile = self.script("grandchild.pid")
        code = (
            "import subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({pidfile!r} + '.tmp', 'w').write(str(p.pid))\n"
            "import os\n"
            f"os.rename({pidfile!r} + '.tmp', {pidfile!r})\n"
            "time.sleep(60)\n"
        )
        result = await self.runner.run([PY, "-c", code], timeout=3, kill_grace=5)
        self.assertTrue(result.timed_out)
        self.assertFalse(result.cancelled)
        self.assertEqual(result.signal, signal.SIGTERM)
        self.assertIsNone(result.exit_code)
        with open(pidfile) as f:
            grandchild = int(f.read())
        self.assertTrue(await _wait_for(lambda: not _alive(grandchild)))

    async def test_term_ignored_then_killed(self) -> None:
        """A child that ignores SIGTERM is SIGKILLed after the grace period."""
        code = (
            "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)\n"
        )
        result = await self.runner.run([PY, "-c", code], timeout=3, kill_grace=0.5)
        self.assertTrue(result.timed_out)
        self.assertEqual(result.signal, signal.SIGKILL)

    async def test_leftover_grandchild_killed_when_leader_exits(self) -> None:
        """A background process holding the output pipes is killed when the
        direct child exits, instead of keeping the run alive until timeout."""
        pidfile = self.script("bg.pid")
        code = (
            "import subprocess, sys\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({pidfile!r}, 'w').write(str(p.pid))\n"
        )
        result = await self.runner.run([PY, "-c", code], timeout=30, kill_grace=5)
        self.assertEqual(result.exit_code, 0)
        self.assertFalse(result.timed_out)
        self.assertLess(result.finished_at - result.started_at, 20)
        with open(pidfile) as f:
            bg = int(f.read())
        self.assertTrue(await _wait_for(lambda: not _alive(bg)))

    async def test_cancel_handle(self) -> None:
        """handle.cancel() kills the group and result fires with cancelled=True."""
        ready = self.script("ready")
        code = (
            "import sys, time\n"
            "print('partial', flush=True)\n"
            f"open({ready!r}, 'w').close()\n"
            "time.sleep(60)\n"
        )
        handle = self.runner.start([PY, "-c", code], timeout=60)
        self.assertTrue(await _wait_for(lambda: os.path.exists(ready), 10))
        handle.cancel()
        handle.cancel()  # idempotent
        result = await handle.result
        self.assertTrue(result.cancelled)
        self.assertFalse(result.timed_out)
        self.assertEqual(result.signal, signal.SIGTERM)
        self.assertEqual(result.stdout, "partial\n")
        self.assertTrue(handle.done)

    async def test_cancel_deferred(self) -> None:
        """Cancelling the result Deferred itself kills the process and fails
        it with CancelledError (Twisted's convention)."""
        handle = self.runner.start([PY, "-c", "import time; time.sleep(60)"], timeout=60)
        handle.result.cancel()
        with self.assertRaises(CancelledError):
            await handle.result
        # The process is still reaped, and its timers cancelled.
        self.assertTrue(await _wait_for(lambda: handle.done, 10))

    def test_relative_argv_rejected(self) -> None:
        """argv[0] must be an absolute path; nothing is spawned otherwise."""
        with self.assertRaises(ValueError):
            self.runner.start(["python3", "-c", "pass"])
        with self.assertRaises(ValueError):
            self.runner.start([])
        self.failureResultOf(self.runner.run(["ls"]), ValueError)

    async def test_no_output_timeout_kills_whole_group(self) -> None:
        """A child that goes silent for no_output_timeout is killed with its whole
        group (grandchild included) long before its overall timeout; the result
        says timed_out with reason "no_output" and keeps the output so far."""
        pidfile = self.script("silent.pid")
        code = (
            "import os, subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({pidfile!r} + '.tmp', 'w').write(str(p.pid))\n"
            f"os.rename({pidfile!r} + '.tmp', {pidfile!r})\n"
            "for i in range(3):\n"
            "    print('tick', i, flush=True); time.sleep(0.3)\n"
            "time.sleep(60)\n"
        )
        result = await self.runner.run(
            [PY, "-c", code], timeout=60, no_output_timeout=1.5, kill_grace=5
        )
        self.assertTrue(result.timed_out)
        self.assertEqual(result.timeout_reason, "no_output")
        self.assertEqual(result.signal, signal.SIGTERM)
        self.assertEqual(result.stdout, "tick 0\ntick 1\ntick 2\n")
        self.assertLess(result.finished_at - result.started_at, 30)
        with open(pidfile) as f:
            grandchild = int(f.read())
        self.assertTrue(await _wait_for(lambda: not _alive(grandchild)))

    async def test_max_time_reason(self) -> None:
        """A run that is killed for taking too long says timeout_reason "max_time",
        even when it keeps producing output (which holds off no_output_timeout)."""
        code = "import time\nwhile True:\n    print('.', flush=True); time.sleep(0.1)\n"
        result = await self.runner.run(
            [PY, "-c", code], timeout=1.5, no_output_timeout=1, kill_grace=5
        )
        self.assertTrue(result.timed_out)
        self.assertEqual(result.timeout_reason, "max_time")

    async def test_streaming_real_child(self) -> None:
        """on_output sees each stream's output in order as it arrives; the pieces
        add up exactly to the final stdout/stderr."""
        code = (
            "import sys, time\n"
            "for i in range(3):\n"
            "    print('out', i, flush=True); print('err', i, file=sys.stderr, flush=True)\n"
            "    time.sleep(0.2)\n"
        )
        seen: list[tuple[str, str]] = []
        result = await self.runner.run(
            [PY, "-c", code], timeout=20, on_output=lambda s, t: seen.append((s, t))
        )
        out = [t for s, t in seen if s == "stdout"]
        err = [t for s, t in seen if s == "stderr"]
        self.assertEqual("".join(out), result.stdout)
        self.assertEqual("".join(err), result.stderr)
        self.assertEqual(result.stdout, "out 0\nout 1\nout 2\n")
        self.assertGreater(len(out), 1)  # really streamed, not one final blob

    async def test_missing_executable(self) -> None:
        """A missing program fails as a nonzero exit (setsid cannot exec it)."""
        result = await self.runner.run(["/nonexistent/program"], timeout=20)
        self.assertNotEqual(result.exit_code, 0)
        self.assertIn("nonexistent", result.stderr)


class RunAsRealTests(unittest.TestCase):
    """Children run as another user (needs root, ``nobody`` and the system python)."""

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root")
        if not os.access(SYSTEM_PY, os.X_OK):
            raise unittest.SkipTest(f"needs {SYSTEM_PY}")
        try:
            self.nobody = pwd.getpwnam("nobody")
        except KeyError:
            raise unittest.SkipTest("needs the nobody user") from None

    async def test_run_as_nobody(self) -> None:
        """With run_as="nobody" the child has nobody's uid, gid and groups (none of
        root's), HOME/USER/LOGNAME from its passwd entry, and is still the leader
        of its own process group."""
        runner = ProcessRunner(reactor, run_as="nobody")
        self.assertEqual(runner.run_as, "nobody")
        code = (
            "import json, os\n"
            "print(json.dumps({'uid': os.getuid(), 'euid': os.geteuid(), 'gid': os.getgid(),"
            " 'groups': os.getgroups(), 'pgid': os.getpgrp(), 'pid': os.getpid(),"
            " 'env': dict(os.environ)}))\n"
        )
        result = await runner.run([SYSTEM_PY, "-c", code], timeout=20)
        self.assertEqual(result.exit_code, 0, result)
        got = json.loads(result.stdout)
        self.assertEqual((got["uid"], got["euid"]), (self.nobody.pw_uid, self.nobody.pw_uid))
        self.assertEqual(got["gid"], self.nobody.pw_gid)
        self.assertNotIn(0, got["groups"])
        self.assertEqual(got["pgid"], got["pid"])
        self.assertEqual(got["env"]["HOME"], self.nobody.pw_dir)
        self.assertEqual(got["env"]["USER"], "nobody")
        self.assertEqual(got["env"]["LOGNAME"], "nobody")
        self.assertEqual(got["env"]["PATH"], DEFAULT_ENV["PATH"])

    async def test_run_as_timeout_still_kills(self) -> None:
        """The agent (root) can still kill the group of a child running as nobody."""
        runner = ProcessRunner(reactor, run_as="nobody")
        result = await runner.run(
            [SYSTEM_PY, "-c", "import time; time.sleep(60)"], timeout=1, kill_grace=2
        )
        self.assertTrue(result.timed_out)
        self.assertEqual(result.signal, signal.SIGTERM)


class FakeTransport:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.written: list[bytes] = []
        self.stdin_closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def closeStdin(self) -> None:
        self.stdin_closed = True


class FakeSpawner:
    """Records spawnProcess calls and hands back a FakeTransport."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, protocol: Any, executable: str, args: list[str], **kw: Any) -> Any:
        transport = FakeTransport(pid=4242)
        protocol.makeConnection(transport)
        self.calls.append({"protocol": protocol, "executable": executable, "args": args, **kw})
        return transport


class FakeTimerTests(unittest.TestCase):
    """The kill sequence with a Clock: no real processes, no sleeping."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.spawner = FakeSpawner()
        self.signals: list[tuple[int, int]] = []
        self.runner = ProcessRunner(
            self.clock,
            self.spawner,
            killpg=lambda pid, sig: self.signals.append((pid, sig)),
        )

    def end(self, reason: Exception) -> None:
        protocol = self.spawner.calls[-1]["protocol"]
        protocol.processExited(Failure(reason))
        protocol.processEnded(Failure(reason))

    def test_spawn_arguments(self) -> None:
        """The command runs through setsid with the minimal env; stdin is
        written then closed."""
        handle = self.runner.start(["/bin/true", "x"], stdin=b"in", cwd="/tmp")
        call = self.spawner.calls[0]
        self.assertEqual(call["executable"], SETSID)
        self.assertEqual(call["args"], [SETSID, "/bin/true", "x"])
        self.assertEqual(call["env"], dict(DEFAULT_ENV))
        self.assertEqual(call["path"], "/tmp")
        transport = call["protocol"].transport
        self.assertEqual(transport.written, [b"in"])
        self.assertTrue(transport.stdin_closed)
        self.assertEqual(handle.pid, 4242)
        self.end(ProcessDone(0))
        self.assertEqual(self.successResultOf(handle.result).exit_code, 0)

    def test_timers_cancelled_on_exit(self) -> None:
        """No timer is left pending once the process has ended."""
        handle = self.runner.start(["/bin/true"], timeout=10)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.end(ProcessDone(0))
        self.successResultOf(handle.result)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.signals, [])

    def test_timeout_term_then_kill(self) -> None:
        """Timeout sends TERM to the group, then KILL after the grace period."""
        handle = self.runner.start(["/bin/sleep"], timeout=10, kill_grace=2)
        self.clock.advance(9.9)
        self.assertEqual(self.signals, [])
        self.clock.advance(0.1)
        self.assertEqual(self.signals, [(4242, signal.SIGTERM)])
        self.clock.advance(1.9)
        self.assertEqual(len(self.signals), 1)
        self.clock.advance(0.1)
        self.assertEqual(self.signals[-1], (4242, signal.SIGKILL))
        self.end(ProcessTerminated(signal=signal.SIGKILL))
        result = self.successResultOf(handle.result)
        self.assertTrue(result.timed_out)
        self.assertEqual(result.timeout_reason, "max_time")
        self.assertEqual(result.signal, signal.SIGKILL)
        self.assertEqual(result.finished_at - result.started_at, 12)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_output_timeout_term_then_kill(self) -> None:
        """Each output (even past the cap) restarts the silence clock; after
        no_output_timeout of silence the group gets TERM, then KILL after the
        grace period, and the result says timeout_reason "no_output"."""
        handle = self.runner.start(
            ["/bin/sleep"], timeout=100, no_output_timeout=5, kill_grace=2, output_cap=1
        )
        protocol = self.spawner.calls[-1]["protocol"]
        self.clock.advance(3)
        protocol.childDataReceived(1, b"ab")  # "a" kept, "b" past the cap
        self.clock.advance(4)
        protocol.childDataReceived(2, b"")  # an empty read is not output...
        protocol.childDataReceived(1, b"c")  # ...but bytes past the cap are
        self.clock.advance(4.9)
        self.assertEqual(self.signals, [])
        self.clock.advance(0.1)
        self.assertEqual(self.signals, [(4242, signal.SIGTERM)])
        self.clock.advance(2)
        self.assertEqual(self.signals[-1], (4242, signal.SIGKILL))
        self.end(ProcessTerminated(signal=signal.SIGKILL))
        result = self.successResultOf(handle.result)
        self.assertTrue(result.timed_out)
        self.assertFalse(result.cancelled)
        self.assertEqual(result.timeout_reason, "no_output")
        self.assertEqual((result.stdout, result.stdout_truncated), ("a", True))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_silent_from_the_start(self) -> None:
        """A child that never writes anything is killed no_output_timeout after spawn."""
        handle = self.runner.start(["/bin/sleep"], timeout=100, no_output_timeout=5)
        self.clock.advance(5)
        self.assertEqual(self.signals, [(4242, signal.SIGTERM)])
        self.end(ProcessTerminated(signal=signal.SIGTERM))
        self.assertEqual(self.successResultOf(handle.result).timeout_reason, "no_output")

    def test_no_timeout_reason_on_normal_exit(self) -> None:
        """A normal exit has timeout_reason None and leaves no silence timer behind."""
        handle = self.runner.start(["/bin/true"], timeout=10, no_output_timeout=5)
        self.end(ProcessDone(0))
        result = self.successResultOf(handle.result)
        self.assertIsNone(result.timeout_reason)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bad_no_output_timeout(self) -> None:
        """A non-positive no_output_timeout is refused and nothing is spawned."""
        with self.assertRaises(ValueError):
            self.runner.start(["/bin/true"], no_output_timeout=0)
        self.assertEqual(self.spawner.calls, [])

    def test_on_output_capped_and_decoded(self) -> None:
        """on_output gets decoded text in order per stream: a character split
        across reads arrives whole, nothing past the cap is passed, no empty
        pieces, and a dangling partial character is flushed at the end."""
        seen: list[tuple[str, str]] = []
        handle = self.runner.start(
            ["/bin/true"], output_cap=6, on_output=lambda s, t: seen.append((s, t))
        )
        protocol = self.spawner.calls[-1]["protocol"]
        protocol.childDataReceived(1, b"ab\xc3")
        protocol.childDataReceived(2, b"err")
        protocol.childDataReceived(1, b"\xa9cd")
        protocol.childDataReceived(1, b"PAST THE CAP")
        protocol.childDataReceived(2, b"\xe2\x82")  # incomplete at the end
        self.end(ProcessDone(0))
        result = self.successResultOf(handle.result)
        self.assertEqual(
            seen,
            [
                ("stdout", "ab"),
                ("stderr", "err"),
                ("stdout", "\u00e9cd"),
                ("stderr", "\ufffd"),
            ],
        )
        self.assertEqual(result.stdout, "ab\u00e9cd")
        self.assertTrue(result.stdout_truncated)
        self.assertEqual(result.stderr, "err\ufffd")

    def test_on_output_error_does_not_break_the_run(self) -> None:
        """An exception in on_output is logged; the output is still captured."""

        def broken(stream: str, text: str) -> None:
            raise RuntimeError("callback bug")

        handle = self.runner.start(["/bin/true"], on_output=broken)
        self.spawner.calls[-1]["protocol"].childDataReceived(1, b"x")
        self.end(ProcessDone(0))
        self.assertEqual(self.successResultOf(handle.result).stdout, "x")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_run_as_spawn_arguments(self) -> None:
        """As root with run_as, spawnProcess gets the user's uid/gid and the env its
        HOME/USER/LOGNAME (an explicit env's own HOME wins); setsid still wraps."""
        nobody = pwd.getpwnam("nobody")
        runner = ProcessRunner(self.clock, self.spawner, run_as="nobody", geteuid=lambda: 0)
        runner.start(["/bin/true"])
        runner.start(["/bin/true"], env={"HOME": "/tmp"})
        first, second = self.spawner.calls
        self.assertEqual((first["uid"], first["gid"]), (nobody.pw_uid, nobody.pw_gid))
        self.assertEqual(first["args"], [SETSID, "/bin/true"])
        self.assertEqual(
            first["env"],
            {**DEFAULT_ENV, "HOME": nobody.pw_dir, "USER": "nobody", "LOGNAME": "nobody"},
        )
        self.assertEqual(second["env"]["HOME"], "/tmp")

    def test_no_run_as_passes_no_ids(self) -> None:
        """Without run_as, no uid/gid is passed: children run as the agent."""
        self.runner.start(["/bin/true"])
        self.assertNotIn("uid", self.spawner.calls[0])
        self.assertNotIn("gid", self.spawner.calls[0])
        self.assertIsNone(self.runner.run_as)

    def test_run_as_needs_root(self) -> None:
        """Not root and asked to run as another user: a clear configuration error
        (the agent refuses to start rather than silently run verbs as itself)."""
        with self.assertRaises(RunAsError) as cm:
            ProcessRunner(self.clock, self.spawner, run_as="nobody", geteuid=lambda: 1000)
        self.assertIsInstance(cm.exception, ConfigError)
        self.assertIn("root", str(cm.exception))
        self.assertIn("run_as_user", str(cm.exception))

    def test_run_as_self_without_root(self) -> None:
        """Not root but already the run-as user: allowed, and no uid switch is attempted."""
        nobody = pwd.getpwnam("nobody")
        runner = ProcessRunner(
            self.clock, self.spawner, run_as="nobody", geteuid=lambda: nobody.pw_uid
        )
        runner.start(["/bin/true"])
        self.assertNotIn("uid", self.spawner.calls[0])
        self.assertEqual(self.spawner.calls[0]["env"]["USER"], "nobody")

    def test_run_as_unknown_user(self) -> None:
        """An unknown run-as user is a clear configuration error naming it."""
        with self.assertRaises(RunAsError) as cm:
            ProcessRunner(self.clock, self.spawner, run_as="no-such-user-xyz", geteuid=lambda: 0)
        self.assertIn("unknown user 'no-such-user-xyz'", str(cm.exception))

    def test_cancel_after_exit_is_noop(self) -> None:
        """Cancelling a finished process sends no signal."""
        handle = self.runner.start(["/bin/true"])
        self.end(ProcessDone(0))
        handle.cancel()
        self.assertEqual(self.signals, [])
        self.assertFalse(self.successResultOf(handle.result).cancelled)

    def test_group_gone_is_tolerated(self) -> None:
        """ProcessLookupError from killpg (group already gone) is ignored."""

        def gone(pid: int, sig: int) -> None:
            raise ProcessLookupError

        runner = ProcessRunner(self.clock, self.spawner, killpg=gone)
        handle = runner.start(["/bin/sleep"], timeout=1, kill_grace=1)
        self.clock.advance(2)
        self.end(ProcessTerminated(signal=signal.SIGTERM))
        self.assertTrue(self.successResultOf(handle.result).timed_out)

    def test_leftovers_killed_after_linger(self) -> None:
        """If the output pipes stay open after the child exits, the rest of
        its group is killed after LEFTOVER_LINGER; a normal end sends nothing."""
        handle = self.runner.start(["/bin/true"], timeout=30, kill_grace=2)
        protocol = self.spawner.calls[-1]["protocol"]
        protocol.processExited(Failure(ProcessDone(0)))
        self.clock.advance(LEFTOVER_LINGER)
        self.assertEqual(self.signals, [(4242, signal.SIGTERM)])
        protocol.processEnded(Failure(ProcessDone(0)))
        result = self.successResultOf(handle.result)
        self.assertEqual(result.exit_code, 0)
        self.assertFalse(result.timed_out or result.cancelled)
        self.assertEqual(self.clock.getDelayedCalls(), [])
