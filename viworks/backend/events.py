"""An in-process event hub: what happened, for live followers (Server-Sent Events).

Events get increasing ids; a bounded history lets a follower that reconnects with
``Last-Event-ID`` catch up on what it missed (if it is still in the history).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    data: dict[str, Any]


Listener = Callable[[Event], None]


class EventHub:
    """Publish events to whoever listens right now, and remember the last ``history``."""

    def __init__(self, history: int = 10000) -> None:
        self._next_id = 1
        self._history: deque[Event] = deque(maxlen=history)
        self._listeners: list[Listener] = []

    def publish(self, event_type: str, data: dict[str, Any]) -> Event:
        event = Event(self._next_id, event_type, data)
        self._next_id += 1
        self._history.append(event)
        for listener in list(self._listeners):
            listener(event)
        return event

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` for every event from now on; returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    @property
    def last_id(self) -> int:
        """The id of the last event published (0 before the first)."""
        return self._next_id - 1

    def since(self, last_id: int) -> list[Event]:
        """Remembered events after ``last_id``, oldest first."""
        return [event for event in self._history if event.id > last_id]


def sse_frame(event_type: str, data: Any, event_id: int | None = None) -> bytes:
    """One Server-Sent Events message (``data`` as one line of JSON)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    body = json.dumps(data, separators=(",", ":"))
    return f"{head}event: {event_type}\ndata: {body}\n\n".encode()
