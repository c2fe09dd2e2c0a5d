"""How much command output the backend keeps: ``[backend] max_output_bytes`` per stream.

The gateway caps the output of its verbs, but a compromised agent sends whatever it
likes; the backend enforces its own cap on the chunks streamed while a command runs
and on the stdout/stderr of its result. Sizes are bytes of UTF-8, and text is cut
on a character boundary. Pure code, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

STREAMS = ("stdout", "stderr")


def utf8_size(text: str) -> int:
    """Bytes of ``text`` in UTF-8 (a lone surrogate, which JSON allows, counts 3)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def cap_text(text: str, limit: int) -> tuple[str, bool]:
    """``text`` cut to at most ``limit`` bytes of UTF-8, and whether it was cut."""
    if len(text) <= limit // 4:  # at most 4 bytes a character: fits without encoding
        return text, False
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text, False
    end = max(0, limit)
    while end > 0 and data[end] & 0xC0 == 0x80:  # not inside a character
        end -= 1
    return data[:end].decode("utf-8", "surrogatepass"), True


class OutputBudget:
    """What one command of ``agent_id`` may still store of each stream."""

    def __init__(
        self,
        agent_id: str,
        limit: int,
        used: Mapping[str, int] | None = None,
        truncated: Iterable[str] = (),
    ) -> None:
        self.agent_id = agent_id
        self.limit = limit
        self.used = {stream: 0 for stream in STREAMS}
        self.used.update(used or {})
        # Streams the cap has cut so far.
        self.truncated = set(truncated)

    def take(self, stream: str, text: str) -> tuple[str, bool]:
        """The part of ``text`` that still fits (maybe ""), and whether this call cut the
        stream for the first time."""
        kept, cut = cap_text(text, self.limit - self.used[stream])
        self.used[stream] += utf8_size(kept) if cut else utf8_size(text)
        first_cut = cut and stream not in self.truncated
        if cut:
            self.truncated.add(stream)
        return kept, first_cut
