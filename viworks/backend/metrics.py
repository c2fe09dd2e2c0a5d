"""Prometheus metrics for the backend, in a private registry served at ``GET /metrics``.

One ``Metrics`` object is shared by the sessions, the ledger and the API of one backend
(tests build several backends in one process, so nothing goes to the global registry).
Every name starts with ``viworks_``. The hot path (frames) only increments counters.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator, Sized
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.internet.defer import Deferred

from viworks import lifecycle
from viworks.backend.model import OUTPUT_STREAMS, Command
from viworks.backend.store import Store
from viworks.backend.store.batch import BatchRunner
from viworks.ratelimit import TokenBucket

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Command latencies go from milliseconds (dispatch to an online agent) to hours (a queued
# command waiting for its agent, a long verb).
LATENCY_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    """The backend's metrics; ``render()`` is the Prometheus text exposition."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.agents_connected = Gauge(
            "viworks_agents_connected", "Agents with a live session now.", registry=r
        )
        self.sessions_opened = Counter(
            "viworks_sessions_opened", "Agent sessions accepted (HELLO accepted).", registry=r
        )
        self.sessions_refused = Counter(
            "viworks_sessions_refused",
            "Agent connections refused, by reason (busy, no_certificate, or the error code).",
            ["reason"],
            registry=r,
        )
        self.reconnects = Counter(
            "viworks_reconnects",
            "Sessions opened by an agent that already had one since this process started.",
            registry=r,
        )
        self.handshakes_refused = Counter(
            "viworks_handshakes_refused",
            "WebSocket handshakes shed by admission control (no token in the bucket).",
            registry=r,
        )
        self.handshake_tokens = Gauge(
            "viworks_handshake_tokens_available",
            "Tokens in the admission bucket now (handshakes that would be admitted at once).",
            registry=r,
        )
        self.frames_in = Counter(
            "viworks_frames_received", "Frames received from agents, by type.", ["type"], registry=r
        )
        self.frames_out = Counter(
            "viworks_frames_sent", "Frames sent to agents, by type.", ["type"], registry=r
        )
        self.commands = Counter(
            "viworks_commands",
            "Commands that reached a final status, by verb and status.",
            ["verb", "status"],
            registry=r,
        )
        self.dispatch_latency = Histogram(
            "viworks_command_dispatch_seconds",
            "Seconds from a command's creation to its first dispatch to the agent.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.execution_latency = Histogram(
            "viworks_command_execution_seconds",
            "Seconds from a command's start on the agent to its final status.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.output_truncations = Counter(
            "viworks_output_truncations",
            "Command results whose stdout or stderr was truncated, by stream.",
            ["stream"],
            registry=r,
        )
        self.frames_refused = Counter(
            "viworks_frames_refused",
            "Agent frames refused, by reason: not_running (output for a command not running"
            " on that agent), too_large (telemetry over its size cap), too_often (telemetry"
            " sooner than [backend] telemetry_min_interval).",
            ["reason"],
            registry=r,
        )
        self.output_cut = Counter(
            "viworks_output_cut",
            "Command output streams cut at [backend] max_output_bytes by the backend, by stream.",
            ["stream"],
            registry=r,
        )
        self.sse_dropped = Counter(
            "viworks_sse_dropped",
            "Event streams dropped because the client stopped reading (unsent data past"
            " [api] sse_buffer_bytes).",
            registry=r,
        )
        self.store_latency = Histogram(
            "viworks_store_seconds",
            "Seconds spent in store calls made by the command ledger, by operation.",
            ["operation"],
            buckets=STORE_BUCKETS,
            registry=r,
        )
        self._seen_agents: set[str] = set()
        self._batches_watched = False
        self._in: dict[str, Any] = {}
        self._out: dict[str, Any] = {}

    # -- wiring -------------------------------------------------------------------------

    def watch_sessions(self, registry: Sized, admission: TokenBucket | None = None) -> None:
        """Read the connected agents and the admission bucket when scraped."""
        self.agents_connected.set_function(lambda: len(registry))
        if admission is not None:
            self.handshake_tokens.set_function(admission.available)

    def timed_store(self, store: Store) -> Store:
        """``store`` with every method call timed into ``viworks_store_seconds``; its
        group-commit figures (``viworks_store_transactions/calls_total``) read when scraped."""
        batches = getattr(store, "batches", None)
        if batches is not None and not self._batches_watched:
            self._batches_watched = True
            self.registry.register(_BatchFigures(batches))
        return cast(Store, _TimedStore(store, self.store_latency))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- events (cheap: counters and a dict lookup) -----------------------------------------

    def frame_in(self, frame_type: str) -> None:
        child = self._in.get(frame_type)
        if child is None:
            child = self._in[frame_type] = self.frames_in.labels(frame_type)
        child.inc()

    def frame_out(self, payload: bytes) -> None:
        # protocol.encode writes {"type":"<type>",...} first: no JSON parse needed.
        frame_type = _frame_type(payload)
        child = self._out.get(frame_type)
        if child is None:
            child = self._out[frame_type] = self.frames_out.labels(frame_type)
        child.inc()

    def session_opened(self, agent_id: str) -> None:
        self.sessions_opened.inc()
        if agent_id in self._seen_agents:
            self.reconnects.inc()
        else:
            self._seen_agents.add(agent_id)

    def session_refused(self, reason: str) -> None:
        self.sessions_refused.labels(reason).inc()

    def command_dispatched(self, command: Command, now: float) -> None:
        self.dispatch_latency.observe(max(0.0, now - command.created_at))

    def command_final(self, command: Command) -> None:
        if command.status not in lifecycle.FINAL:
            return
        self.commands.labels(command.verb, command.status).inc()
        started, finished = command.started_at, command.finished_at
        if started is not None and finished is not None:
            self.execution_latency.observe(max(0.0, finished - started))
        for stream in OUTPUT_STREAMS:
            if command.truncated(stream):
                self.output_truncations.labels(stream).inc()


_TYPE_PREFIX = b'{"type":"'


def _frame_type(payload: bytes) -> str:
    if payload.startswith(_TYPE_PREFIX):
        end = payload.find(b'"', len(_TYPE_PREFIX))
        if 0 < end <= 40:
            return payload[len(_TYPE_PREFIX) : end].decode("ascii", "replace")
    return "other"


class _BatchFigures:
    """The store's group commit, as counters: calls per transaction = calls / transactions."""

    def __init__(self, batches: BatchRunner) -> None:
        self.batches = batches

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "viworks_store_transactions",
            "Store transactions run (each holds one or more calls).",
            value=self.batches.batches,
        )
        yield CounterMetricFamily(
            "viworks_store_calls", "Store calls run.", value=self.batches.interactions
        )


class _TimedStore:
    """A transparent proxy timing each call (its Deferred or coroutine) by method name."""

    def __init__(self, store: Store, histogram: Histogram) -> None:
        self._store = store
        self._histogram = histogram

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name.startswith("_") or not callable(attr):
            return attr
        # Kept on the instance: later lookups no longer come through here.
        wrapped = self._wrap(name)
        setattr(self, name, wrapped)
        return wrapped

    def _wrap(self, name: str) -> Callable[..., Any]:
        child = self._histogram.labels(name)
        store = self._store

        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = getattr(store, name)(*args, **kwargs)
            d: Deferred[Any]
            if inspect.iscoroutine(result):
                d = Deferred.fromCoroutine(result)
            elif isinstance(result, Deferred):
                d = result
            else:
                child.observe(time.perf_counter() - start)
                return result

            def done(outcome: Any) -> Any:
                child.observe(time.perf_counter() - start)
                return outcome

            return d.addBoth(done)

        return call
