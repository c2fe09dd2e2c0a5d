"""The tamper-evident audit log: who did what to what, when, and how it ended.

Records live in the store's append-only ``audit_log`` table. Each record's
``hash`` is SHA-256 over its canonical form (``at``, ``actor``, ``action``,
``target``, ``outcome`` and the stored ``detail`` JSON) followed by the previous
record's hash (``prev_hash``; 64 zeros for the first), so removing, reordering
or editing a record breaks the chain at that record (``verify_chain``). The
store appends under a lock (PostgreSQL advisory lock, SQLite ``BEGIN
IMMEDIATE``) so concurrent writers, even in other processes, cannot fork it.

The chain proves order and integrity against edits made without recomputing
every later hash; it does not stop someone who can rewrite the whole table (or
drop its newest records): export it regularly (``viworks audit export``) and
keep the head (``viworks audit head``: ``SEQ:HASH``) somewhere else, then
``viworks audit verify --expect-head SEQ:HASH`` finds a truncation.

A running backend remembers the last record it wrote (``AuditLog.head``). If
the log no longer holds it (records were removed from the end, or rewritten),
the backend does not chain onto what is left: that would make the shortened log
verify as intact. It logs an error and writes ``audit.truncated`` chained onto
the record it last wrote, and goes on from there: every later record is still
chained, and ``viworks audit verify`` reports the missing records until they
are put back (from an export) as they were.

Details never hold secrets: ``redaction.redact_detail`` masks values under
secret-looking keys (with ``[redacted]``), and callers put argument *names*, not
values, into records they cannot redact by schema.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, DeferredLock
from twisted.internet.interfaces import IReactorTime

from viworks.logs import Logger
from viworks.redaction import redact_detail

GENESIS = "0" * 64

# Outcomes.
OK = "ok"
REFUSED = "refused"
FAILED = "failed"


def encode_detail(detail: Any) -> str | None:
    """The stored (canonical) JSON of a redacted detail; None stays NULL."""
    if detail is None:
        return None
    return json.dumps(redact_detail(detail), sort_keys=True, separators=(",", ":"), default=str)


def canonical(record: Mapping[str, Any]) -> str:
    """The hashed form of a record: its content fields (not seq, not hashes)."""
    return json.dumps(
        {
            "at": float(record["at"]),
            "actor": record["actor"],
            "action": record["action"],
            "target": record["target"],
            "outcome": record["outcome"],
            "detail": record["detail"],  # the stored JSON text
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def record_hash(record: Mapping[str, Any], prev_hash: str) -> str:
    """SHA-256 (hex) of the canonical record followed by the previous record's hash."""
    return hashlib.sha256((canonical(record) + prev_hash).encode("utf-8")).hexdigest()


Head = tuple[int, str]
"""(seq, hash) of a record; ``(0, GENESIS)`` stands for the empty log."""


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

    def feed(self, row: Mapping[str, Any]) -> None:
        seq = row["seq"]
        if record_hash(row, row["prev_hash"]) != row["hash"]:
            raise ChainBroken(seq, f"record {seq} was edited: its content does not match its hash")
        if row["prev_hash"] != self.prev_hash:
            follows = None if row["prev_hash"] == GENESIS else self.seq_of_hash(row["prev_hash"])
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
        self.prev_hash = row["hash"]
        self.prev_seq = seq
        self.count += 1

    @staticmethod
    def _range(first: int, last: int) -> str:
        return f"record {first} was" if first == last else f"records {first}-{last} were"


def verify_chain(rows: Iterable[Mapping[str, Any]]) -> int:
    """Verify records in seq order (all in memory); return how many; ``ChainBroken`` if not."""
    rows = list(rows)
    by_hash = {row["hash"]: row["seq"] for row in rows}
    verifier = ChainVerifier(by_hash.get)
    for row in rows:
        verifier.feed(row)
    return verifier.count


def export_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """A record as exported (``viworks audit export``, ``GET /api/v1/audit/export``): the
    stored detail text, which the hash covers, as ``detail_json``; its parsed form as
    ``detail``; ``time`` in RFC 3339."""
    from viworks.timeutil import rfc3339

    record = {**row, "time": rfc3339(row["at"])}
    record["detail_json"] = record.pop("detail")
    record["detail"] = None if row["detail"] is None else json.loads(row["detail"])
    return record


class ChainStatus:
    """How far the chain is verified, for the console's badge ("chain verified to record N").

    The first check reads the whole log a page at a time; later checks verify only the
    records appended since, after making sure the last verified record still carries the
    hash it was verified with. ``full=True`` starts again from the first record (an edit
    of an older record that did not recompute the later hashes shows only then, or with
    ``viworks audit verify``). One check runs at a time; a break is remembered until a
    full check.
    """

    PAGE = 1000

    def __init__(self, store: Any, clock: IReactorTime) -> None:
        self.store = store
        self.clock = clock
        self._lock = DeferredLock()
        self._page_hashes: dict[str, int] = {}
        self._verifier: ChainVerifier | None = None
        self._broken: ChainBroken | None = None
        self._checked_at: float | None = None

    def check(self, full: bool = False) -> Deferred:
        """A Deferred firing with the status dict (see ``status``)."""
        return self._lock.run(lambda: Deferred.fromCoroutine(self._check(full)))

    async def _check(self, full: bool) -> dict[str, Any]:
        verifier = self._verifier
        if full or verifier is None or not await self._checkpoint_holds(verifier):
            verifier = self._verifier = ChainVerifier(self._page_hashes.get)
            self._broken = None
        if self._broken is None:
            try:
                while rows := await self.store.audit_records(verifier.prev_seq, self.PAGE):
                    # A break is told apart (reordered, removed) within the page at hand.
                    self._page_hashes.clear()
                    self._page_hashes.update((row["hash"], row["seq"]) for row in rows)
                    for row in rows:
                        verifier.feed(row)
            except ChainBroken as e:
                self._broken = e
            self._page_hashes.clear()
        self._checked_at = self.clock.seconds()
        return self.status()

    async def _checkpoint_holds(self, verifier: ChainVerifier) -> bool:
        if verifier.prev_seq == 0:
            return True
        return await self.store.audit_seq_of_hash(verifier.prev_hash) == verifier.prev_seq

    def status(self) -> dict[str, Any]:
        """``verified`` (no break found), ``verified_to`` (the last record of the intact
        prefix), ``broken_at`` and ``message`` when broken, ``checked_at`` (epoch s)."""
        verifier = self._verifier
        return {
            "verified": self._broken is None,
            "verified_to": verifier.prev_seq if verifier is not None else 0,
            "broken_at": None if self._broken is None else self._broken.seq,
            "message": None if self._broken is None else self._broken.message,
            "checked_at": self._checked_at,
        }


class AuditLog:
    """Appends records through the store; remembers writes in flight (``flush``).

    ``record`` awaits the write; ``record_later`` is for synchronous callers
    (a refused handshake, an HTTP response): the write happens in the
    background and a failure is logged, never raised into the caller.
    """

    log = Logger()

    def __init__(self, store: Any, clock: IReactorTime) -> None:
        self.store = store
        self.clock = clock
        self._pending: set[Deferred] = set()
        # The last record this process wrote (or found at start-up, ``anchor``).
        self.head: Head | None = None
        self._truncation = DeferredLock()

    async def anchor(self) -> None:
        """Start from the log's current head: removing records below it is noticed."""
        self._advance(await self.store.audit_head())

    def _advance(self, head: Head) -> None:
        if self.head is None or head[0] > self.head[0]:
            self.head = head

    async def record(
        self,
        actor: str,
        action: str,
        target: str | None,
        outcome: str,
        detail: Any = None,
    ) -> dict:
        at = self.clock.seconds()
        head = self.head
        try:
            row = await self.store.append_audit(
                at, actor, action, target, outcome, detail, after=head
            )
        except AuditTruncated as truncated:
            await self._truncated(head, truncated)
            row = await self.store.append_audit(
                at, actor, action, target, outcome, detail, after=self.head
            )
        self._advance((row["seq"], row["hash"]))
        return row

    async def _truncated(self, head: Head | None, truncated: AuditTruncated) -> None:
        """Write ``audit.truncated`` onto the record we last wrote (once per truncation)."""
        async with self._truncation:
            if self.head != head:
                return  # another record in flight found it first
            self.log.error(
                "audit log truncated: it ends at record {found} but this backend last wrote"
                " record {expected}; not chaining onto the shortened log: audit.truncated"
                " continues from record {expected} (viworks audit verify reports the gap"
                " until the missing records are restored)",
                found=head_text(truncated.found),
                expected=head_text(truncated.expected),
            )
            marker = await self.store.append_audit(
                self.clock.seconds(),
                "backend",
                "audit.truncated",
                "audit_log",
                FAILED,
                {
                    "expected_head": head_text(truncated.expected),
                    "found_head": head_text(truncated.found),
                },
                after=head,
                resume=True,
            )
            self._advance((marker["seq"], marker["hash"]))

    def record_later(
        self,
        actor: str,
        action: str,
        target: str | None,
        outcome: str,
        detail: Any = None,
    ) -> Deferred:
        d = Deferred.fromCoroutine(self.record(actor, action, target, outcome, detail))
        self._pending.add(d)

        def done(result: Any) -> None:
            self._pending.discard(d)
            return None

        def failed(failure: Any) -> None:
            # Not log.failure: the caller cannot act on it; the operator must see it.
            self.log.error(
                "audit: could not record {action} by {actor} on {target}: {error}",
                action=action,
                actor=actor,
                target=target,
                error=failure.getErrorMessage(),
            )

        d.addErrback(failed)
        d.addBoth(done)
        return d

    async def flush(self) -> None:
        """Wait for every background write started so far."""
        while self._pending:
            await DeferredList(list(self._pending))
