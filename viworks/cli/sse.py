"""Server-Sent Events: messages parsed from the lines of a stream (pure)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SSE:
    """One Server-Sent Events message (``data`` parsed as JSON when it is JSON)."""

    event: str
    #: Any JSON value the event carries (or its text when it is not JSON).
    data: Any
    id: str | None = None


def parse_sse(lines: Iterable[bytes]) -> Iterator[SSE]:
    """SSE messages from an iterable of byte lines (comments and ``retry:`` skipped)."""
    event, data, event_id = "message", list[str](), None
    for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                text = "\n".join(data)
                try:
                    payload = json.loads(text)
                except ValueError:
                    payload = text
                yield SSE(event, payload, event_id)
            event, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
