"""A private ``redis-server`` for one test: a free loopback port, no persistence.

Tests that stop, pause or restart Redis must never touch the shared one on 6379, so
each gets its own: ``redis-server --port N --bind 127.0.0.1 --save "" --appendonly no``
in the test's directory, stopped by PID at cleanup. ``start`` and ``stop`` block
(bounded): call them through ``deferToThread`` from a test running on the reactor,
or use ``start_redis``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from typing import Any

from twisted.internet.threads import deferToThread

from tests.processes import wait_for
from tests.stack import free_port

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
SKIP = (
    None
    if REDIS_SERVER and REDIS_CLI
    else "redis-server and redis-cli are needed (Debian: apt-get install redis-server)"
)
WAIT = 15.0


class RedisServer:
    """One redis-server process on ``127.0.0.1:port``; the same port across restarts."""

    def __init__(self, testcase: Any, directory: str) -> None:
        self.port = free_port()
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.log = os.path.join(directory, "redis.log")
        self.process: subprocess.Popen | None = None
        testcase.addCleanup(lambda: deferToThread(self.stop))

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        """Start and wait until it answers PING (bounded)."""
        if self.running:
            raise AssertionError("redis-server is already running")
        assert REDIS_SERVER is not None
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", self.dir,
                 "--daemonize", "no", "--protected-mode", "yes"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            wait_for(lambda: self._exited() or self.ping(), WAIT, 0.02)
        finally:
            if self._exited():
                raise AssertionError(f"redis-server exited at once:\n{self.log_text()}")
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def ping(self) -> bool:
        """Whether it answers PING now (a raw RESP exchange, one second at most)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> int | None:
        """SIGTERM (nothing is saved) and wait; SIGKILL if it does not exit in time."""
        return self._signal(signal.SIGTERM, wait=True)

    def kill(self) -> int | None:
        """SIGKILL: it vanishes without a word to its clients."""
        return self._signal(signal.SIGKILL, wait=True)

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers."""
        self._signal(signal.SIGSTOP, wait=False)

    def resume(self) -> None:
        self._signal(signal.SIGCONT, wait=False)

    def _signal(self, signum: int, wait: bool) -> int | None:
        process = self.process
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        if signum in (signal.SIGTERM, signal.SIGKILL):
            process.send_signal(signal.SIGCONT)  # a paused server cannot exit
        process.send_signal(signum)
        if not wait:
            return None
        try:
            process.wait(WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(WAIT)
        return process.returncode

    def cli(self, *args: str | int, db: int = 0) -> str:
        """Run one command with redis-cli (blocking, bounded); its raw output."""
        assert REDIS_CLI is not None
        done = subprocess.run(
            [REDIS_CLI, "-p", str(self.port), "-n", str(db), "--raw", *map(str, args)],
            capture_output=True, text=True, timeout=WAIT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(f"redis-cli {args}: {done.stderr}")
        return done.stdout.strip()

    def log_text(self) -> str:
        if not os.path.exists(self.log):
            return ""
        with open(self.log, errors="replace") as f:
            return f.read()


async def start_redis(testcase: Any, name: str = "redis") -> RedisServer:
    """A private redis-server in the test's directory, started (stopped at cleanup)."""
    directory = os.path.join(os.path.abspath(testcase.mktemp()), name)
    server = RedisServer(testcase, directory)
    await deferToThread(server.start)
    return server
