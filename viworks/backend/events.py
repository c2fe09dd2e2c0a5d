"""An in-process event hub: what happened, for live followers (Server-Sent Events).

Events get increasing ids; a bounded history lets a follower that reconnects with
``Last-Event-ID`` catch up on what it missed (if it is still in the history). The
history is bounded in events and in bytes: an agent streaming output fills it with
big events, and a count alone let 300 chunks of 1 MiB pin 300 MiB.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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

    @property
    def size(self) -> int:
        return len(self.sse)


Listener = Callable[[Event], None]


class EventHub:
    """Publish events to whoever listens right now, and remember the last ``history``
    of them, no more than ``history_bytes`` of encoded data (the oldest go first)."""

    def __init__(
        self, history: int = DEFAULT_HISTORY, history_bytes: int = DEFAULT_HISTORY_BYTES
    ) -> None:
        self._next_id = 1
        self._history: deque[Event] = deque()
        self._max_events = history
        self._max_bytes = history_bytes
        self._bytes = 0
        self._listeners: list[Listener] = []

    def publish(self, event_type: str, data: dict[str, Any]) -> Event:
        event = Event(self._next_id, event_type, data, sse_frame(event_type, data, self._next_id))
        self._next_id += 1
        self._remember(event)
        for listener in list(self._listeners):
            listener(event)
        return event

    def _remember(self, event: Event) -> None:
        history = self._history
        history.append(event)
        self._bytes += event.size
        while len(history) > self._max_events or self._bytes > self._max_bytes:
            self._bytes -= history.popleft().size

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` for every event from now on; returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

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
