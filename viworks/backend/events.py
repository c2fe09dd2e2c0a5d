"""An in-process event hub: what happened, for live followers (Server-Sent Events).

Events get increasing ids; a bounded history lets a follower that reconnects with
``Last-Event-ID`` catch up on what it missed (if it is still in the history). The
history is bounded in events and in bytes: an agent streaming output fills it with
big events, and a count alone let 300 chunks of 1 MiB pin 300 MiB.

An event may also carry a ``detail``: the domain value behind it, in process only
(``command.status`` carries ``viworks.backend.commandevents.CommandChanged``). Only
subscribers that ask for details get it; the history and every other subscriber (the
SSE followers among them) get the event without it, so that nothing kept for
followers holds more than its encoded size (a final command holds its output).

Every subscriber gets every event in id order: an event published by a subscriber
(the jobs publish ``job.progress`` when a command's status changes) is delivered once
the current one has reached everyone. Subscribers that resume waiting code (the
``?wait`` waiters) subscribe ``last``: when they run, every other subscriber has seen
the event. A subscriber that fails is logged; the others still get the event.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from viworks.logs import Logger

DEFAULT_HISTORY = 10000
DEFAULT_HISTORY_BYTES = 16 << 20


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    data: dict[str, Any]
    # This event as a Server-Sent Events message (with its hub id), encoded once: it
    # sizes the event in the history, and every follower writes this same object (a
    # stalled follower's send buffer holds a reference to it, not a copy).
    sse: bytes = field(repr=False, compare=False)
    # In process only, for subscribers that asked for details (see the module's doc).
    detail: object = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> int:
        return len(self.sse)


Listener = Callable[[Event], None]


class EventHub:
    """Publish events to whoever listens right now, and remember the last ``history``
    of them, no more than ``history_bytes`` of encoded data (the oldest go first)."""

    log = Logger()

    def __init__(
        self, history: int = DEFAULT_HISTORY, history_bytes: int = DEFAULT_HISTORY_BYTES
    ) -> None:
        self._next_id = 1
        self._history: deque[Event] = deque()
        self._max_events = history
        self._max_bytes = history_bytes
        self._bytes = 0
        # (listener, whether it gets the events' details), the ``last`` ones after.
        self._listeners: list[tuple[Listener, bool]] = []
        self._last: list[tuple[Listener, bool]] = []
        # Events published while others are being delivered: (without, with detail).
        self._queue: deque[tuple[Event, Event]] = deque()
        self._delivering = False

    def publish(self, event_type: str, data: dict[str, Any], detail: object = None) -> Event:
        """Publish an event; ``data`` is what followers see, ``detail`` goes only to the
        subscribers that asked for details."""
        event = Event(self._next_id, event_type, data, sse_frame(event_type, data, self._next_id))
        self._next_id += 1
        self._remember(event)
        detailed = event if detail is None else Event(event.id, event_type, data, event.sse, detail)
        self._queue.append((event, detailed))
        if not self._delivering:
            self._deliver()
        return event

    def _deliver(self) -> None:
        self._delivering = True
        try:
            while self._queue:
                event, detailed = self._queue.popleft()
                for listener, details in self._listeners + self._last:
                    try:
                        listener(detailed if details else event)
                    except Exception:
                        self.log.failure(
                            "event {event_id} ({event_type}): a subscriber failed",
                            event_id=event.id,
                            event_type=event.type,
                        )
        finally:
            self._delivering = False

    def _remember(self, event: Event) -> None:
        history = self._history
        history.append(event)
        self._bytes += event.size
        while len(history) > self._max_events or self._bytes > self._max_bytes:
            self._bytes -= history.popleft().size

    def subscribe(
        self, listener: Listener, *, details: bool = False, last: bool = False
    ) -> Callable[[], None]:
        """Call ``listener`` for every event from now on (with its ``detail`` if
        ``details``; after the other subscribers if ``last``); returns the
        unsubscribe function."""
        entry = (listener, details)
        group = self._last if last else self._listeners
        group.append(entry)

        def unsubscribe() -> None:
            if entry in group:
                group.remove(entry)

        return unsubscribe

    @property
    def last_id(self) -> int:
        """The id of the last event published (0 before the first)."""
        return self._next_id - 1

    @property
    def history_bytes(self) -> int:
        """Bytes of the encoded events remembered now."""
        return self._bytes

    def since(self, last_id: int) -> list[Event]:
        """Remembered events after ``last_id``, oldest first."""
        return [event for event in self._history if event.id > last_id]


def sse_frame(event_type: str, data: Any, event_id: int | None = None) -> bytes:
    """One Server-Sent Events message (``data`` as one line of JSON)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    body = json.dumps(data, separators=(",", ":"))
    return f"{head}event: {event_type}\ndata: {body}\n\n".encode()
