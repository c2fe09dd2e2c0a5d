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
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from bench.common import rss_bytes
from tests.processes import Api, Twistd, create_token
from tests.rogue_agent import RogueAgent, connect_rogue
from tests.stack import Stack, eventually, poll
from viworks.backend.api import hash_token

MIB = 1 << 20
# Frames of just under [backend] max_message_size (1 MiB) once encoded.
CHUNK = "x" * (MIB - 1024)


def frames_received(base: str) -> dict[str, float]:
    """viworks_frames_received_total by frame type, from the backend's /metrics."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith('viworks_frames_received_total{type="'):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('"')[1]] = float(value)
    return counts


def database_bytes(path: str) -> int:
    """The SQLite database on disk: the file and its write-ahead log."""
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


class FloodTests(unittest.TestCase):
    timeout = 120

    async def test_flood_bounded_memory_and_disk(self):
        """After 50 MiB of hostile output and telemetry frames (output for a finished
        command, far more output than the cap for a running one, telemetry over 64 KiB,
        telemetry faster than the spacing), the backend's RSS grows by under 50 MiB and
        its database (file + WAL) by under 3 MiB. Today it stored every byte and kept
        every output chunk in the event history."""
        stack = Stack(self)
        config = stack.backend_config(heartbeat_interval=5)
        api = Api(f"http://127.0.0.1:{stack.http_port}", create_token(config.path))
        backend = Twistd(
            self, "viworks-backend", config.path, os.path.join(stack.dir, "backend.log")
        ).start()
        await poll(lambda: api.call("GET", "/health"), lambda r: r[0] == 200, 30, 0.1)
        rogue = await connect_rogue(reactor, stack.ws_port, stack.pki["ours"], "gw-1")
        self.addCleanup(rogue.dropConnection, abort=True)

        # A finished command and a running one, both really gw-1's.
        finished, running = [await self.submit(api) for _ in range(2)]
        await rogue.frame("command", 2)
        rogue.send("ack", command_id=finished)
        rogue.send("ack", command_id=running)
        rogue.send(
            "result",
            command_id=finished,
            status="succeeded",
            exit_code=0,
            result=None,
            stdout="done",
            stderr="",
            stdout_truncated=False,
            stderr_truncated=False,
            error=None,
            started_at=None,
            finished_at=None,
        )
        await rogue.frame("result_ack")
        await deferLater(reactor, 1.0, lambda: None)  # the first telemetry slot is free
        rss, disk = rss_bytes(backend.process.pid), database_bytes(config.backend.database)

        sent = 0
        for seq in range(20):  # refused: the command is final
            sent += self.output(rogue, finished, seq, "stdout")
        for seq in range(16):  # 1 MiB kept of each stream
            sent += self.output(rogue, running, seq, "stdout" if seq % 2 else "stderr")
        for _ in range(16):  # refused: over 64 KiB
            sent += self.telemetry(rogue, CHUNK)
        for _ in range(10):  # one stored, the others too soon after it
            sent += self.telemetry(rogue, "t" * 60000)
        self.assertGreaterEqual(sent, 50 * MIB)
        # The backend has read the whole flood, and written what it keeps of it.
        await poll(
            lambda: deferToThread(frames_received, api.base),
            lambda n: n.get("output", 0) >= 36 and n.get("telemetry", 0) >= 26,
            60,
            0.2,
        )
        command = await poll(
            lambda: api.call("GET", f"/api/v1/commands/{running}"),
            lambda r: r[0] == 200 and len(r[1]["stdout"]) + len(r[1]["stderr"]) >= 2 * MIB,
            30,
            0.2,
        )
        await deferLater(reactor, 1.0, lambda: None)  # writes queued behind it

        rss_growth = rss_bytes(backend.process.pid) - rss
        disk_growth = database_bytes(config.backend.database) - disk
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
        body = command[1]
        self.assertEqual(len(body["stdout"]) + len(body["stderr"]), 2 * MIB)
        self.assertTrue(body["stdout_truncated"] and body["stderr_truncated"], body["status"])
        code, done = await api.call("GET", f"/api/v1/commands/{finished}")
        self.assertEqual((code, done["stdout"]), (200, "done"))
        code, history = await api.call("GET", "/api/v1/agents/gw-1/telemetry/history")
        self.assertEqual([len(h["metrics"]["pad"]) for h in history["history"]], [60000])

    async def submit(self, api: Api) -> str:
        code, body = await api.call(
            "POST", "/api/v1/agents/gw-1/commands", {"verb": "ping", "timeout": 600}
        )
        self.assertEqual(code, 201, body)
        return body["command_id"]

    def output(self, rogue: RogueAgent, command_id: str, seq: int, stream: str) -> int:
        rogue.send("output", command_id=command_id, seq=seq, stream=stream, data=CHUNK)
        return len(CHUNK)

    def telemetry(self, rogue: RogueAgent, pad: str) -> int:
        rogue.send("telemetry", ts=1.0, metrics={"pad": pad})
        return len(pad)


class StalledViewerTests(unittest.TestCase):
    timeout = 60

    async def test_stalled_event_stream_dropped(self):
        """A client of GET /api/v1/events that stops reading is dropped (logged, counted in
        viworks_sse_dropped_total) once its unsent data passes [api] sse_buffer_bytes,
        and the backend lets go of its stream; a client that reads keeps its stream.
        Today the backend buffered everything for it, without end."""
        stack = Stack(self)
        backend = await stack.start_backend()
        api, hub = backend.api, backend.ledger.hub
        await backend.store.create_token("viewer", hash_token("vw_viewer"), 1.0)
        logged: list[dict] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)

        self.viewer(stack.http_port)  # stalled: never read
        reader = self.viewer(stack.http_port)
        received = self.read_all(reader)
        await eventually(lambda: len(api._streams) == 2)
        streams = set(api._streams)

        # Until the stalled client is dropped: the kernel's socket buffers take a few MiB
        # first, then the backend's own buffer fills.
        for seq in range(60):
            hub.publish("command.output", {"command_id": "c1", "seq": seq, "data": CHUNK})
            await deferLater(reactor, 0.02, lambda: None)
            if len(api._streams) < 2:
                break
        await eventually(lambda: len(api._streams) == 1)
        self.assertEqual(api.metrics.sse_dropped._value.get(), 1)
        dropped = streams - api._streams
        self.assertEqual(len(dropped), 1)
        self.assertTrue(dropped.pop().gone)
        messages = [e.get("log_format", "") for e in logged]
        self.assertTrue(any("stopped reading" in m for m in messages), messages)
        # The reading client got everything published so far and is still served.
        await eventually(lambda: received[0] > (seq + 1) * len(CHUNK))
        hub.publish("agent.online", {"agent_id": "after-the-drop"})
        await eventually(lambda: b"after-the-drop" in received[1])

    def viewer(self, port: int) -> socket.socket:
        """An event-stream request on a socket with a small receive buffer (closed at
        cleanup); nothing reads it unless the test does."""
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.connect(("127.0.0.1", port))
        sock.sendall(
            b"GET /api/v1/events HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer vw_viewer\r\n\r\n"
        )
        return sock

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
