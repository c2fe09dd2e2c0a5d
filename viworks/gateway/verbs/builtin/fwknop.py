"""fwknopd ``access.conf``: one managed stanza per VPN user, rewritten atomically.

A managed stanza sits between two marker comments. Everything outside the markers (the
operator's own stanzas and comments) is kept byte for byte::

    # viworks-user: alice (managed by viworks; do not edit)
    SOURCE 192.0.2.10
    OPEN_PORTS tcp/443
    KEY_BASE64 <base64>
    HMAC_KEY_BASE64 <base64>
    FW_ACCESS_TIMEOUT 3600
    MAX_FW_TIMEOUT 3600
    # viworks-end: alice

These are fwknopd 2.6.10 facts, checked with ``fwknopd -a FILE --dump-config -f``:

- ``MAX_FW_TIMEOUT`` defaults to 300 and caps ``FW_ACCESS_TIMEOUT``. fwknopd warns that
  it "honors MAX_FW_TIMEOUT". Both are written, so the requested timeout really applies.
- ``SOURCE`` must be IPv4. An IPv6 address is a fatal error ("error parsing IP to int")
  that makes fwknopd refuse the whole file, so :func:`render_stanza` refuses it.
- A ``KEY_BASE64`` equal to the ``HMAC_KEY_BASE64`` is a "Data error" for the whole file.
- The file should be mode 0600: fwknopd warns about anything wider.

Writing: :func:`stage` writes the new text to a temporary file (mode 0600) in the same
directory and fsyncs it. The caller may have fwknopd check it (:func:`validate_argv`).
:func:`commit` then renames it over the access file and fsyncs the directory, or
:func:`discard` removes it. A reader therefore sees either the old file or the new one,
never a partial file.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from dataclasses import dataclass

__all__ = [
    "AccessFileError",
    "Stanza",
    "commit",
    "discard",
    "managed_stanzas",
    "read",
    "remove_stanza",
    "render_stanza",
    "set_stanza",
    "stage",
    "validate_argv",
]

BEGIN = "# viworks-user: "
END = "# viworks-end: "
_BEGIN_SUFFIX = " (managed by viworks; do not edit)"
_OPEN_PORTS = re.compile(r"(?:tcp|udp)/\d{1,5}(?:\s*,\s*(?:tcp|udp)/\d{1,5})*")
_USERNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


class AccessFileError(Exception):
    """The access file cannot be read, parsed or written.

    The message never includes the file's content, because it holds keys.
    """


@dataclass(frozen=True)
class Stanza:
    """One user's SPA access: keys are base64 (fwknop ``--key-gen`` style)."""

    username: str
    source: str
    open_ports: str
    key_base64: str
    hmac_key_base64: str
    timeout: int


def check_open_ports(value: str) -> str:
    """``value`` if it is a valid OPEN_PORTS list (``tcp/443, udp/1194``); else ValueError."""
    if not _OPEN_PORTS.fullmatch(value.strip()) or any(
        not 0 < int(p) < 65536 for p in re.findall(r"/(\d+)", value)
    ):
        raise ValueError(f"open_ports must look like 'tcp/443, udp/1194', got {value!r}")
    return value.strip()


def render_stanza(stanza: Stanza) -> str:
    """The stanza's text, markers included, ending with a newline.

    Raises ValueError for values fwknopd would refuse or that could break the file's
    structure. Key values are never included in the message.
    """
    if not _USERNAME.fullmatch(stanza.username):
        raise ValueError("invalid username")
    address = ipaddress.ip_address(stanza.source)
    if address.version != 4:
        raise ValueError("fwknopd (2.6) accepts only IPv4 addresses in SOURCE")
    check_open_ports(stanza.open_ports)
    for name, key in (("spa_key", stanza.key_base64), ("spa_hmac_key", stanza.hmac_key_base64)):
        if not re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", key):
            raise ValueError(f"{name} must be base64")
    if stanza.key_base64 == stanza.hmac_key_base64:
        raise ValueError("spa_key and spa_hmac_key must differ (fwknopd refuses equal keys)")
    if isinstance(stanza.timeout, bool) or not isinstance(stanza.timeout, int):
        raise ValueError("timeout must be an integer")
    if stanza.timeout <= 0:
        raise ValueError("timeout must be positive")
    return (
        f"{BEGIN}{stanza.username}{_BEGIN_SUFFIX}\n"
        f"SOURCE {address}\n"
        f"OPEN_PORTS {stanza.open_ports.strip()}\n"
        f"KEY_BASE64 {stanza.key_base64}\n"
        f"HMAC_KEY_BASE64 {stanza.hmac_key_base64}\n"
        f"FW_ACCESS_TIMEOUT {stanza.timeout}\n"
        f"MAX_FW_TIMEOUT {stanza.timeout}\n"
        f"{END}{stanza.username}\n"
    )


def _marker_name(line: str, prefix: str) -> str | None:
    if not line.startswith(prefix):
        return None
    rest = line[len(prefix) :].strip()
    name = rest.split(" ", 1)[0]
    return name or None


def _split(text: str) -> list[tuple[str | None, list[str]]]:
    """``text`` as segments: ``(None, lines)`` unmanaged, ``(name, lines)`` managed.

    Raises :class:`AccessFileError` for a marker without its partner.
    """
    segments: list[tuple[str | None, list[str]]] = []
    current: list[str] = []
    owner: str | None = None
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        stripped = line.rstrip("\r\n")
        begin = _marker_name(stripped, BEGIN)
        end = _marker_name(stripped, END)
        if owner is None:
            if end is not None:
                raise AccessFileError(f"line {number}: end marker without a begin marker")
            if begin is not None:
                if current:
                    segments.append((None, current))
                current, owner = [line], begin
            else:
                current.append(line)
        else:
            if begin is not None:
                raise AccessFileError(f"line {number}: stanza of {owner!r} has no end marker")
            current.append(line)
            if end is not None:
                if end != owner:
                    raise AccessFileError(f"line {number}: end marker does not match {owner!r}")
                segments.append((owner, current))
                current, owner = [], None
    if owner is not None:
        raise AccessFileError(f"stanza of {owner!r} has no end marker")
    if current:
        segments.append((None, current))
    return segments


def managed_stanzas(text: str) -> dict[str, dict[str, str]]:
    """The managed stanzas in ``text``: username to its non-secret settings.

    Each value maps ``SOURCE``, ``OPEN_PORTS``, ``FW_ACCESS_TIMEOUT`` (when present) to
    their text. Key lines are never returned.
    """
    public = ("SOURCE", "OPEN_PORTS", "FW_ACCESS_TIMEOUT")
    out: dict[str, dict[str, str]] = {}
    for owner, lines in _split(text):
        if owner is None:
            continue
        settings: dict[str, str] = {}
        for line in lines:
            parts = line.strip().split(None, 1)
            if len(parts) == 2 and parts[0] in public:
                settings[parts[0]] = parts[1]
        out[owner] = settings
    return out


def set_stanza(text: str, stanza_text: str, username: str) -> str:
    """``text`` with ``username``'s managed stanza replaced by ``stanza_text`` (or appended)."""
    segments = _split(text)
    out: list[str] = []
    replaced = False
    for owner, lines in segments:
        if owner == username:
            if not replaced:
                out.append(stanza_text)
                replaced = True
            continue  # drop duplicates
        out.extend(lines)
    if not replaced:
        body = "".join(out)
        if body and not body.endswith("\n"):
            out.append("\n")
        if body.strip() and not body.endswith("\n\n"):
            out.append("\n")  # a blank line between stanzas, for the reader
        out.append(stanza_text)
    return "".join(out)


def remove_stanza(text: str, username: str) -> tuple[str, bool]:
    """``text`` without ``username``'s managed stanza, and whether there was one."""
    out: list[str] = []
    found = False
    skip_blank = False
    for owner, lines in _split(text):
        if owner == username:
            found = True
            skip_blank = True
            continue
        if skip_blank and owner is None and lines and not lines[0].strip():
            lines = lines[1:]  # the blank line set_stanza put before the next one
        skip_blank = False
        out.extend(lines)
    return "".join(out), found


def read(path: str) -> str:
    """The access file's text ("" if it does not exist yet)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "not UTF-8"
        raise AccessFileError(f"cannot read {path}: {reason}") from None


def stage(path: str, text: str) -> str:
    """Write ``text`` to a new 0600 file next to ``path``, fsynced; return its path."""
    directory = os.path.dirname(path) or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    except OSError as e:
        raise AccessFileError(f"cannot write in {directory}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        discard(tmp)
        raise AccessFileError(f"cannot write {tmp}: {e.strerror}") from None
    return tmp


def commit(tmp: str, path: str) -> None:
    """Atomically replace ``path`` by the staged file ``tmp`` and fsync the directory."""
    try:
        os.replace(tmp, path)
    except OSError as e:
        discard(tmp)
        raise AccessFileError(f"cannot replace {path}: {e.strerror}") from None
    try:
        dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # the rename is done; a failed directory fsync only weakens durability


def discard(tmp: str) -> None:
    """Remove a staged file (if it is still there)."""
    try:
        os.unlink(tmp)
    except OSError:
        pass


def validate_argv(fwknopd: str, access_file: str) -> list[str]:
    """fwknopd parsing ``access_file`` and dumping its settings (exit 0 if it accepts it).

    ``-f`` keeps it in the foreground so the dump goes to stdout. Key values are shown
    as ``<see the access.conf file>``, never printed.
    """
    return [fwknopd, "-f", "-a", access_file, "--dump-config"]
