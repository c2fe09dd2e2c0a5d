"""A hostile agent cannot fill the backend's memory or disk (issue 12, item 3), measured.

``FloodTests`` runs the real backend (twistd, ``tests.processes``) and a rogue agent in
this process (``tests.rogue_agent``: a bare mutual-TLS WebSocket client with gw-1's
real certificate). The rogue sends over 50 MiB of output and telemetry frames; the
backend's resident memory (``VmRSS``) and its SQLite files (database and WAL) are
measured before and after. ``StalledViewerTests`` opens event streams on a real socket
and stops reading.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from bench.common import rss_bytes
from tests.processes import Api, Twistd, create_token
from tests.rogue_agent import connect_rogue
from tests.stack import Stack, eventually, poll
from viworks.backend import websession
from viworks.backend.tokens import hash_token

MIB = 1 << 20
# Frames of just under [backend] max_message_size (1 MiB) once encoded.
CHUNK = "x" * (MIB - 1024)
VIEWERS = 40
VIEWED_COMMANDS = 4
RESULT = {
    "status": "succeeded",
    "exit_code": 0,
    "result": None,
    "stdout": "done",
    "stderr": "",
    "stdout_truncated": False,
    "stderr_truncated": False,
    "error": None,
    "started_at": None,
    "finished_at": None,
}


def scrape(base: str) -> dict[str, float]:
    """The backend's /metrics: sample (name and labels, as written) -> value."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = (line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    return {sample: float(value) for sample, value in samples}


def stalled_viewer(
    testcase: unittest.TestCase, port: int, token: str, session_id: str | None = None
) -> socket.socket:
    """A GET /api/v1/events on a socket with a small receive buffer that nothing reads
    (unless the test does); closed at cleanup. With ``session_id`` it is authenticated as
    the web console's EventSource is, by the session cookie, instead of the token."""
    sock = socket.socket()
    testcase.addCleanup(sock.close)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.connect(("127.0.0.1", port))
    credentials = (
        f"Authorization: Bearer {token}"
        if session_id is None
        else f"Cookie: viworks_session={session_id}"
    )
    request = f"GET /api/v1/events HTTP/1.1\r\nHost: api\r\n{credentials}\r\n\r\n"
    sock.sendall(request.encode())
    return sock


def database_bytes(path: str) -> int:
    """The SQLite database on disk: the file and its write-ahead log."""
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


class FloodTests(unittest.TestCase):
    timeout = 120

    async def _setUp(self) -> None:
        self.stack = Stack(self)
        self.config = self.stack.backend_config(heartbeat_interval=5)
        self.api = Api(f"http://127.0.0.1:{self.stack.http_port}", create_token(self.config.path))
        log = os.path.join(self.stack.dir, "backend.log")
        self.backend = Twistd(self, "viworks-backend", self.config.path, log).start()
        await poll(lambda: self.api.call("GET", "/health"), lambda r: r[0] == 200, 30, 0.1)
        self.rogue = await connect_rogue(
            reactor, self.stack.ws_port, self.stack.pki["ours"], "gw-1"
        )
        self.addCleanup(self.rogue.dropConnection, abort=True)

    def setUp(self) -> Deferred:
        return Deferred.fromCoroutine(self._setUp())

    async def test_flood_bounded_memory_and_disk(self):
        """After 50 MiB of hostile output and telemetry frames (output for a finished
        command, far more output than the cap for a running one, telemetry over 64 KiB,
        telemetry faster than the spacing), the backend's RSS grows by under 50 MiB and
        its database (file + WAL) by under 3 MiB. Today it stored every byte and kept
        every output chunk in the event history."""
        api, rogue = self.api, self.rogue
        finished, running = await self.running_commands(2)
        rogue.send("result", command_id=finished, **RESULT)
        await rogue.frame("result_ack")
        await deferLater(reactor, 1.0, lambda: None)  # the first telemetry slot is free
        rss, disk = self.rss(), database_bytes(self.config.backend.database)

        sent = 0
        for seq in range(20):  # refused: the command is final
            sent += self.output(finished, seq, "stdout")
        for seq in range(16):  # 1 MiB kept of each stream
            sent += self.output(running, seq, "stdout" if seq % 2 else "stderr")
        for _ in range(16):  # refused: over 64 KiB
            rogue.send("telemetry", ts=1.0, metrics={"pad": CHUNK})
            sent += len(CHUNK)
        for _ in range(10):  # one stored, the others too soon after it
            rogue.send("telemetry", ts=1.0, metrics={"pad": "t" * 60000})
            sent += 60000
        self.assertGreaterEqual(sent, 50 * MIB)
        await self.received(output=36, telemetry=26)
        command = await self.output_stored(running, 2 * MIB)

        rss_growth = self.rss() - rss
        disk_growth = database_bytes(self.config.backend.database) - disk
        print(
            f"\n  flood of {sent / MIB:.1f} MiB: backend RSS +{rss_growth / MIB:.1f} MiB,"
            f" database (file + WAL) +{disk_growth / MIB:.2f} MiB"
        )
        self.assertLess(rss_growth, 50 * MIB)
        self.assertLess(disk_growth, 3 * MIB)
        # Every refusal was answered.
        self.assertEqual(
            sorted(rogue.error_codes()),
            ["NOT_RUNNING"] * 20 + ["RATE_LIMITED"] * 9 + ["TOO_LARGE"] * 16,
        )
        self.assertEqual(len(command["stdout"]) + len(command["stderr"]), 2 * MIB)
        self.assertTrue(command["stdout_truncated"] and command["stderr_truncated"])
        code, done = await api.call("GET", f"/api/v1/commands/{finished}")
        self.assertEqual((code, done["stdout"]), (200, "done"))
        code, history = await api.call("GET", "/api/v1/agents/gw-1/telemetry/history")
        self.assertEqual([len(h["metrics"]["pad"]) for h in history["history"]], [60000])

    async def test_stalled_viewers_dropped_and_memory_returned(self):
        """Event-stream viewers that stop reading while an agent streams output are
        dropped (viworks_sse_dropped_total) and what was buffered for them is freed: the
        backend's RSS grows by under 50 MiB. Today every stalled viewer held a copy of
        everything the hub published."""
        commands = await self.running_commands(VIEWED_COMMANDS)
        # A token of their own: the API's rate limit is per token (burst 40).
        token = await deferToThread(create_token, self.config.path, "viewers")
        for _ in range(VIEWERS):
            stalled_viewer(self, self.stack.http_port, token)
        await deferLater(reactor, 1.0, lambda: None)  # the streams are open
        rss = self.rss()
        for seq in range(2):  # 1 MiB of each stream of each command: all kept, all events
            for command_id in commands:
                self.output(command_id, seq, ("stdout", "stderr")[seq])
        figures = await self.received(output=2 * VIEWED_COMMANDS)
        for command_id in commands:
            await self.output_stored(command_id, 2 * len(CHUNK))
        figures = await poll(
            lambda: deferToThread(scrape, self.api.base),
            lambda m: m.get("viworks_sse_dropped_total", 0) >= VIEWERS,
            30,
            0.2,
        )
        rss_growth = self.rss() - rss
        print(
            f"\n  {2 * VIEWED_COMMANDS} MiB of output events, {VIEWERS} stalled viewers:"
            f" {figures['viworks_sse_dropped_total']:g} dropped,"
            f" backend RSS +{rss_growth / MIB:.1f} MiB"
        )
        self.assertLess(rss_growth, 50 * MIB)

    # -- helpers ------------------------------------------------------------------------

    def rss(self) -> int:
        return rss_bytes(self.backend.process.pid)

    async def running_commands(self, count: int) -> list[str]:
        """``count`` commands for gw-1 that the rogue agent acknowledged (running)."""
        ids = []
        for _ in range(count):
            code, body = await self.api.call(
                "POST", "/api/v1/agents/gw-1/commands", {"verb": "ping", "timeout": 600}
            )
            self.assertEqual(code, 201, body)
            ids.append(body["command_id"])
        await self.rogue.frame("command", count)
        for command_id in ids:
            self.rogue.send("ack", command_id=command_id)
        return ids

    def output(self, command_id: str, seq: int, stream: str) -> int:
        self.rogue.send("output", command_id=command_id, seq=seq, stream=stream, data=CHUNK)
        return len(CHUNK)

    async def received(self, **frames: int) -> dict[str, float]:
        """Wait until the backend has read that many frames of each type; its metrics."""
        sample = 'viworks_frames_received_total{type="%s"}'
        return await poll(
            lambda: deferToThread(scrape, self.api.base),
            lambda m: all(m.get(sample % t, 0) >= n for t, n in frames.items()),
            60,
            0.2,
        )

    async def output_stored(self, command_id: str, size: int) -> dict:
        """The command once at least ``size`` characters of its output are stored (and
        a second for the writes queued behind them)."""
        _, command = await poll(
            lambda: self.api.call("GET", f"/api/v1/commands/{command_id}"),
            lambda r: r[0] == 200 and len(r[1]["stdout"]) + len(r[1]["stderr"]) >= size,
            30,
            0.2,
        )
        await deferLater(reactor, 1.0, lambda: None)
        return command


class StalledViewerTests(unittest.TestCase):
    timeout = 60

    async def test_stalled_event_stream_dropped(self):
        """A client of GET /api/v1/events that stops reading (here the web console's,
        authenticated by its session cookie) is dropped (logged, counted in
        viworks_sse_dropped_total) once its unsent data passes [api] sse_buffer_bytes,
        and the backend lets go of its stream; a client that reads keeps its stream.
        Today the backend buffered everything for it, without end."""
        stack = Stack(self)
        backend = await stack.start_backend()
        api, hub = backend.parts.api, backend.parts.hub
        await backend.parts.store.create_token("viewer", hash_token("vw_viewer"), 1.0)
        now = reactor.seconds()
        await backend.parts.store.create_console_session(
            websession.session_hash("console-tab"), "viewer", now, now + 3600
        )
        logged: list[dict] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)

        stalled_viewer(self, stack.http_port, "vw_viewer", session_id="console-tab")
        reader = stalled_viewer(self, stack.http_port, "vw_viewer")  # read below
        received = self.read_all(reader)
        await eventually(lambda: len(api.streams.open) == 2)
        streams = set(api.streams.open)

        # Until the stalled client is dropped: the kernel's socket buffers take a few MiB
        # first, then the backend's own buffer fills.
        for seq in range(60):
            hub.publish("command.output", {"command_id": "c1", "seq": seq, "data": CHUNK})
            await deferLater(reactor, 0.02, lambda: None)
            if len(api.streams.open) < 2:
                break
        await eventually(lambda: len(api.streams.open) == 1)
        self.assertEqual(api.metrics.sse_dropped._value.get(), 1)
        dropped = streams - api.streams.open
        self.assertEqual(len(dropped), 1)
        self.assertTrue(dropped.pop().gone)
        messages = [e.get("log_format", "") for e in logged]
        self.assertTrue(any("stopped reading" in m for m in messages), messages)
        # The reading client got everything published so far and is still served.
        await eventually(lambda: received[0] > (seq + 1) * len(CHUNK))
        hub.publish("agent.online", {"agent_id": "after-the-drop"})
        await eventually(lambda: b"after-the-drop" in received[1])

    def read_all(self, sock: socket.socket) -> list[Any]:
        """Read ``sock`` in a thread until it closes: [bytes read, the last 64 KiB]."""
        state: list[Any] = [0, b""]

        def run() -> None:
            while True:
                try:
                    data = sock.recv(1 << 16)
                except OSError:
                    return
                if not data:
                    return
                state[0] += len(data)
                state[1] = (state[1] + data)[-(1 << 16) :]

        def stop() -> None:
            sock.shutdown(socket.SHUT_RDWR)  # ends the blocking recv
            thread.join(10)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.addCleanup(stop)
        return state
