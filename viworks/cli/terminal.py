"""What the CLI prints and asks: tables, JSON, and its seams to the terminal and the clock.

``sleep``, ``stdin_is_tty`` and ``ask`` are looked up on this module at each call
(``terminal.sleep(...)``), so that tests replace them here.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence


def table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """Left-aligned columns two spaces apart, the headers first; no trailing blanks."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    return "\n".join(
        "  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=False)).rstrip()
        for line in [headers, *rows]
    )


def print_json(body: object) -> None:
    """The API's JSON (any JSON value), indented, on stdout."""
    print(json.dumps(body, indent=2), flush=True)


def sleep(seconds: float) -> None:
    time.sleep(seconds)


def stdin_is_tty() -> bool:
    return sys.stdin.isatty()


def ask(prompt: str) -> str:
    return input(prompt)
