"""The audit log's hash chain (pure): how records are canonicalised, hashed and verified.

Each record's ``hash`` is SHA-256 over its canonical form (``at``, ``actor``,
``action``, ``target``, ``outcome`` and the stored ``detail`` JSON) followed by
the previous record's hash (``prev_hash``; :data:`GENESIS` for the first), so
removing, reordering or editing a record breaks the chain at that record. The
store computes the hash when it appends (``store/audit.py``); the backend, the
API and ``viworks audit verify`` check it (:class:`ChainVerifier`).

Details never hold secrets: :func:`encode_detail` masks the values under
secret-looking keys before anything is stored.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from viworks.backend.model import AuditRecord
from viworks.redaction import redact_detail

GENESIS = "0" * 64
Head = tuple[int, str]
"""(seq, hash) of a record; ``(0, GENESIS)`` stands for the empty log."""


def encode_detail(detail: Any) -> str | None:
    """The stored (canonical) JSON of a redacted detail; None stays NULL."""
    if detail is None:
        return None
    return json.dumps(redact_detail(detail), sort_keys=True, separators=(",", ":"), default=str)


def chain_hash(
    *,
    at: float,
    actor: str,
    action: str,
    target: str | None,
    outcome: str,
    detail: str | None,
    prev_hash: str,
) -> str:
    """SHA-256 (hex) of a record's canonical content followed by the previous record's
    hash. ``detail`` is the stored JSON text."""
    canonical = json.dumps(
        {
            "at": float(at),
            "actor": actor,
            "action": action,
            "target": target,
            "outcome": outcome,
            "detail": detail,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256((canonical + prev_hash).encode("utf-8")).hexdigest()


def record_hash(record: AuditRecord) -> str:
    """The hash ``record`` should carry, from its content and its ``prev_hash``."""
    return chain_hash(
        at=record.at,
        actor=record.actor,
        action=record.action,
        target=record.target,
        outcome=record.outcome,
        detail=record.detail,
        prev_hash=record.prev_hash,
    )


def head_text(head: Head) -> str:
    """``SEQ:HASH``, as ``viworks audit head`` prints it."""
    return f"{head[0]}:{head[1]}"


def parse_head(text: str) -> Head:
    """``SEQ:HASH`` -> (seq, hash); ValueError if it is not that."""
    seq, sep, digest = text.strip().partition(":")
    if not (sep and seq.isdigit() and re.fullmatch(r"[0-9a-f]{64}", digest.lower())):
        raise ValueError(f"expected SEQ:HASH (a record number and 64 hex digits), got {text!r}")
    return int(seq), digest.lower()


def anchor_mismatch(expected: Head, found: Head | None, head: Head) -> str | None:
    """Why a log ending at ``head`` fails an anchored head (None: it holds it).

    ``found`` is the log's first record at or after ``expected``'s seq, if any.
    """
    if expected[0] == 0:
        found = (0, GENESIS)  # the empty log, a prefix of every log
    if found is None or found[0] != expected[0]:
        return (
            f"audit log TRUNCATED: it ends at record {head[0]}, but record"
            f" {head_text(expected)} is expected"
        )
    if found[1] != expected[1]:
        return (
            f"audit log REWRITTEN: record {expected[0]} has hash {found[1]},"
            f" not the expected {expected[1]}"
        )
    return None


class AuditTruncated(Exception):
    """The log no longer holds the record a writer last wrote (``expected``).

    ``found`` is the log's head now.
    """

    def __init__(self, expected: Head, found: Head) -> None:
        super().__init__(
            f"the audit log ends at record {head_text(found)} but no longer holds record"
            f" {head_text(expected)}"
        )
        self.expected = expected
        self.found = found


class ChainBroken(Exception):
    """The audit chain is broken at ``seq`` (the first bad record)."""

    def __init__(self, seq: int, message: str) -> None:
        super().__init__(message)
        self.seq = seq
        self.message = message


class ChainVerifier:
    """Checks records fed in ``seq`` order; raises ``ChainBroken`` at the first bad one.

    ``seq_of_hash(h)`` finds the record with hash ``h`` (any position), so that a
    break can be told apart: an out-of-order record follows one that comes
    after it, a record after a removal follows one further back (or one that is
    gone), an edited record no longer matches its own hash.
    """

    def __init__(self, seq_of_hash: Callable[[str], int | None]) -> None:
        self.seq_of_hash = seq_of_hash
        self.prev_hash = GENESIS
        self.prev_seq = 0
        self.count = 0

    def feed(self, record: AuditRecord) -> None:
        seq = record.seq
        if record_hash(record) != record.hash:
            raise ChainBroken(seq, f"record {seq} was edited: its content does not match its hash")
        if record.prev_hash != self.prev_hash:
            follows = None if record.prev_hash == GENESIS else self.seq_of_hash(record.prev_hash)
            if follows is not None and follows > seq:
                raise ChainBroken(
                    seq,
                    f"record {seq} is out of order: it was written after record {follows}",
                )
            if seq != self.prev_seq + 1:
                missing = self._range(self.prev_seq + 1, seq - 1)
                raise ChainBroken(
                    self.prev_seq + 1,
                    f"{missing} removed: record {seq} does not follow record {self.prev_seq}",
                )
            if follows is None and self.prev_seq:
                # Its predecessor is in place but no longer has the hash it was
                # chained with: rewritten (hash recomputed) or replaced.
                raise ChainBroken(
                    self.prev_seq,
                    f"record {self.prev_seq} was edited or replaced: record {seq}"
                    f" does not follow it",
                )
            raise ChainBroken(
                seq,
                f"record {seq} was reordered or records before it were removed: it follows"
                f" record {follows if follows is not None else 'none'},"
                f" not record {self.prev_seq}",
            )
        if seq != self.prev_seq + 1:
            raise ChainBroken(
                self.prev_seq + 1,
                f"record {self.prev_seq + 1} is missing: the chain is intact but renumbered"
                f" (record {seq} follows record {self.prev_seq})",
            )
        self.prev_hash = record.hash
        self.prev_seq = seq
        self.count += 1

    @staticmethod
    def _range(first: int, last: int) -> str:
        return f"record {first} was" if first == last else f"records {first}-{last} were"


def verify_chain(records: Iterable[AuditRecord]) -> int:
    """Verify records in seq order (all in memory); return how many; ``ChainBroken`` if not."""
    records = list(records)
    by_hash = {record.hash: record.seq for record in records}
    verifier = ChainVerifier(by_hash.get)
    for record in records:
        verifier.feed(record)
    return verifier.count
