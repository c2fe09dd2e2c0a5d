"""The command lifecycle: which status may follow which (pure).

    queued -> dispatched -> running -> succeeded | failed | timed_out | cancelled | rejected | lost
    queued -> expired | cancelled | failed (the backend could not deliver it, e.g. its
              secret arguments were lost in a restart)
    dispatched -> expired (the agent refused it: past its deadline) and any final status
                  (a redelivered command can be answered from the agent's journal at once)

    lost -> succeeded | failed | timed_out | cancelled | rejected | expired, only for a
            late result of the command's own agent (``sources(target, late=True)``)

Final statuses never change again, with one exception: ``lost`` is the backend's
guess (no result in time, e.g. during a backend outage), so the real outcome that
the command's own agent reports later replaces it, once. Nothing else changes a
lost command.
"""

from __future__ import annotations

QUEUED, DISPATCHED, RUNNING = "queued", "dispatched", "running"
SUCCEEDED, FAILED, TIMED_OUT = "succeeded", "failed", "timed_out"
CANCELLED, EXPIRED, REJECTED, LOST = "cancelled", "expired", "rejected", "lost"

FINAL = frozenset({SUCCEEDED, FAILED, TIMED_OUT, CANCELLED, EXPIRED, REJECTED, LOST})
ALL = frozenset({QUEUED, DISPATCHED, RUNNING}) | FINAL

_REPORTED = frozenset({SUCCEEDED, FAILED, TIMED_OUT, CANCELLED, REJECTED, LOST})

# What a late result of its own agent may turn a lost command into.
LATE_OUTCOMES = frozenset({SUCCEEDED, FAILED, TIMED_OUT, CANCELLED, REJECTED, EXPIRED})
#: Final statuses nothing can change any more.
SETTLED = FINAL - {LOST}

TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({DISPATCHED, EXPIRED, CANCELLED, FAILED}),
    # A redelivery (dispatched again) is a self-transition that refreshes dispatched_at.
    DISPATCHED: frozenset({DISPATCHED, RUNNING, EXPIRED}) | _REPORTED,
    RUNNING: _REPORTED,
    **{status: frozenset() for status in SETTLED},
    LOST: LATE_OUTCOMES,
}


class IllegalTransition(ValueError):
    """A status change that the lifecycle does not allow."""

    def __init__(self, current: str, target: str) -> None:
        super().__init__(f"a {current} command cannot become {target}")
        self.current = current
        self.target = target


def _sources(target: str, late: bool) -> tuple[str, ...]:
    return tuple(
        sorted(s for s, nexts in TRANSITIONS.items() if target in nexts and (late or s != LOST))
    )


# Computed once: every status change in the store asks (the hot path).
_SOURCES = {(target, late): _sources(target, late) for target in ALL for late in (False, True)}


def sources(target: str, late: bool = False) -> tuple[str, ...]:
    """The statuses from which a command may move to ``target`` (sorted, for SQL);
    ``late`` adds ``lost``, for a late result from the command's own agent."""
    try:
        return _SOURCES[target, late]
    except KeyError:
        raise ValueError(f"unknown status {target!r}") from None


def check(current: str, target: str, late: bool = False) -> None:
    """Raise ``IllegalTransition`` unless ``current -> target`` is allowed (``late``: as
    for :func:`sources`)."""
    if current not in sources(target, late):
        raise IllegalTransition(current, target)
