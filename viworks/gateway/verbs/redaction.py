"""Secrets echoed in what a verb produced, replaced by ``***`` before anything leaves.

Secret arguments travel on stdin only, but a tool may echo its input. Every outcome of a
verb with secret arguments is scrubbed (:func:`scrub`: output, error messages), and so
is its live output (:class:`ScrubbedStream`), which must hold back the last
``len(longest secret) - 1`` characters of each chunk in case a secret is split across
two. A trailing piece of a secret cut off by the output cap is redacted too. The marker
is ``viworks.redaction.REDACTED``, the one that stands for secret arguments.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from viworks.gateway.runner import OutputCallback
from viworks.gateway.verbs.model import VerbOutcome
from viworks.redaction import REDACTED

__all__ = ["ScrubbedStream", "SecretRedactor", "scrub"]


class SecretRedactor:
    """Replaces secrets in text, all at once or as a stream.

    Matching is leftmost-first, longest secret first at a given position. The
    decision at a position depends only on the ``longest`` characters from
    there, so a stream can emit everything but its last ``longest - 1``
    characters and get exactly what the whole text would give.
    """

    def __init__(self, secrets: Sequence[str]) -> None:
        ordered = sorted({s for s in secrets if s}, key=len, reverse=True)
        self.secrets = ordered
        self.longest = len(ordered[0]) if ordered else 0
        self._pattern = re.compile("|".join(re.escape(s) for s in ordered)) if ordered else None

    def _scan(self, text: str, safe: int) -> tuple[list[str], int]:
        """Redact the matches starting before ``safe``; return the pieces and where they end."""
        out: list[str] = []
        pos = 0
        if self._pattern is not None:
            while (m := self._pattern.search(text, pos)) is not None and m.start() < safe:
                out += (text[pos : m.start()], REDACTED)
                pos = m.end()
        return out, pos

    def partial(self, text: str) -> tuple[str, str]:
        """For a stream: ``(clean text to emit, raw text to hold back)``."""
        safe = len(text) - self.longest + 1
        out, pos = self._scan(text, safe)
        cut = max(pos, safe)
        out.append(text[pos:cut])
        return "".join(out), text[cut:]

    def final(self, text: str, truncated: bool = False) -> str:
        """Clean ``text`` to its end. When the output was cut by the cap, a trailing
        beginning of a secret (what the cap left of it) is redacted too."""
        out, pos = self._scan(text, len(text))
        tail = text[pos:]
        if truncated:
            for k in range(min(len(tail), self.longest - 1), 0, -1):
                if any(len(s) > k and s.startswith(tail[-k:]) for s in self.secrets):
                    tail = tail[:-k] + REDACTED
                    break
        out.append(tail)
        return "".join(out)


class ScrubbedStream:
    """One output stream on its way to ``on_output``, with secrets redacted."""

    def __init__(self, redactor: SecretRedactor, stream: str, emit: OutputCallback) -> None:
        self._redactor = redactor
        self._stream = stream
        self._emit = emit
        self._held = ""

    def feed(self, text: str) -> None:
        clean, self._held = self._redactor.partial(self._held + text)
        if clean:
            self._emit(self._stream, clean)

    def finish(self, truncated: bool) -> None:
        clean = self._redactor.final(self._held, truncated)
        self._held = ""
        if clean:
            self._emit(self._stream, clean)


def scrub(outcome: VerbOutcome, secrets: Sequence[str]) -> VerbOutcome:
    """``outcome`` with every secret redacted from its output and error message."""
    # Defence in depth: a tool that echoes its input must not leak a secret.
    if not secrets:
        return outcome
    redactor = SecretRedactor(secrets)
    error = outcome.error
    if error is not None:
        error = {k: redactor.final(v) for k, v in error.items()}
    return VerbOutcome(
        status=outcome.status,
        exit_code=outcome.exit_code,
        result=outcome.result,
        stdout=redactor.final(outcome.stdout, outcome.stdout_truncated),
        stderr=redactor.final(outcome.stderr, outcome.stderr_truncated),
        stdout_truncated=outcome.stdout_truncated,
        stderr_truncated=outcome.stderr_truncated,
        error=error,
    )
