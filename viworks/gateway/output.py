"""Live output of a running verb, batched into numbered chunks for the backend."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from viworks import protocol

FLUSH_BYTES = 4096
FLUSH_DELAY = 0.25


class OutputBuffer:
    """Collects ``(stream, text)`` pieces and sends them as ``output`` frames.

    A frame goes out when ``FLUSH_BYTES`` have gathered or ``FLUSH_DELAY``
    seconds after the first unsent piece, so a chatty verb costs few frames and
    a quiet one is still seen promptly. Frames are numbered from 0 (``seq``),
    which lets the backend drop duplicates and a follower resume.
    """

    def __init__(
        self,
        command_id: str,
        send: Callable[[bytes], None],
        clock: IReactorTime,
        max_bytes: int = FLUSH_BYTES,
        max_delay: float = FLUSH_DELAY,
    ) -> None:
        self.command_id = command_id
        self.send = send
        self.clock = clock
        self.max_bytes = max_bytes
        self.max_delay = max_delay
        self.seq = 0
        self._pieces: list[tuple[str, str]] = []
        self._size = 0
        self._timer: IDelayedCall | None = None

    def add(self, stream: str, text: str) -> None:
        if not text:
            return
        if self._pieces and self._pieces[-1][0] == stream:
            self._pieces[-1] = (stream, self._pieces[-1][1] + text)
        else:
            self._pieces.append((stream, text))
        self._size += len(text)
        if self._size >= self.max_bytes:
            self.flush()
        elif self._timer is None:
            self._timer = self.clock.callLater(self.max_delay, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        pieces, self._pieces, self._size = self._pieces, [], 0
        for stream, text in pieces:
            self.send(
                protocol.encode(
                    "output", command_id=self.command_id, seq=self.seq, stream=stream, data=text
                )
            )
            self.seq += 1
