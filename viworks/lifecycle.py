"""The command lifecycle: which status may follow which (pure).

    queued -> dispatched -> running -> succeeded | failed | timed_out | cancelled | rejected | lost
    queued -> expired | cancelled | failed (the backend could not deliver it, e.g. its
              secret arguments were lost in a restart)
    dispatched -> expired (the agent refused it: past its deadline) and any final status
                  (a redelivered command can be answered from the agent's journal at once)

Final statuses never change again; in particular a ``lost`` command stays lost
even if its result turns up later.
"""

from __future__ import annotations

QUEUED, DISPATCHED, RUNNING = "queued", "dispatched", "running"
SUCCEEDED, FAILED, TIMED_OUT = "succeeded", "failed", "timed_out"
CANCELLED, EXPIRED, REJECTED, LOST = "cancelled", "expired", "rejected", "lost"

FINAL = frozenset({SUCCEEDED, FAILED, TIMED_OUT, CANCELLED, EXPIRED, REJECTED, LOST})
ALL = frozenset({QUEUED, DISPATCHED, RUNNING}) | FINAL

_REPORTED = frozenset({SUCCEEDED, FAILED, TIMED_OUT, CANCELLED, REJECTED, LOST})

TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({DISPATCHED, EXPIRED, CANCELLED, FAILED}),
    # A redelivery (dispatched again) is a self-transition that refreshes dispatched_at.
    DISPATCHED: frozenset({DISPATCHED, RUNNING, EXPIRED}) | _REPORTED,
    RUNNING: _REPORTED,
    **{status: frozenset() for status in FINAL},
}


class IllegalTransition(ValueError):
    """A status change that the lifecycle does not allow."""

    def __init__(self, current: str, target: str) -> None:
        super().__init__(f"a {current} command cannot become {target}")
        self.current = current
        self.target = target


# Computed once: every status change in the store asks (the hot path).
_SOURCES = {
    target: tuple(sorted(s for s, nexts in TRANSITIONS.items() if target in nexts))
    for target in TRANSITIONS
}


def sources(target: str) -> tuple[str, ...]:
    """The statuses from which a command may move to ``target`` (sorted, for SQL)."""
    try:
        return _SOURCES[target]
    except KeyError:
        raise ValueError(f"unknown status {target!r}") from None


def check(current: str, target: str) -> None:
    """Raise ``IllegalTransition`` unless ``current -> target`` is allowed."""
    if target not in TRANSITIONS.get(current, ()):
        raise IllegalTransition(current, target)
