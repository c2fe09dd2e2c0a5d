"""Operators' files (keys, certificates, state directories) and one-line error text.

Whatever goes wrong with a file an operator named must come back as one line that names
the file: ``read_bytes`` turns an ``OSError`` into the caller's own error class with
such a message, and ``one_line`` flattens any error's text for a message or a log field.
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["ensure_private_dir", "one_line", "read_bytes", "read_text"]


def one_line(value: object) -> str:
    """``str(value)`` with every run of whitespace made one space; the type's name if empty."""
    return " ".join(str(value).split()) or type(value).__name__


def read_bytes(path: str | os.PathLike[str], error: Callable[[str], Exception]) -> bytes:
    """The content of ``path``; if it cannot be read, raise ``error(reason)``.

    ``reason`` is ``"cannot read: <strerror>"``: each caller's error class puts the path
    in front its own way (``TLSConfigError(path, reason)``, ``PKIError(f"{path}: ...")``).
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise error(f"cannot read: {e.strerror or one_line(e)}") from None


def read_text(path: str) -> str:
    """The text of ``path`` (a ``/proc`` file, say), undecodable bytes replaced; OSError."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def ensure_private_dir(path: str) -> str:
    """Create directory ``path`` (and parents) with mode 0700 if it is missing; return it.

    An existing directory is left as it is.  Raises OSError if it cannot be created or if
    ``path`` exists and is not a directory.
    """
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
    return path
