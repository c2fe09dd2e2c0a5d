"""A job's progress: when it is done, its one-line bar, and watching it live."""

from __future__ import annotations

import sys
import time
from typing import Final

from viworks.backend.model import JOB_CANCELLED, JOB_COMPLETED, JOB_PAUSED, JOB_STOPPED
from viworks.cli import terminal
from viworks.cli.api import Api, JobView
from viworks.cli.errors import CLIError
from viworks.lifecycle import (
    CANCELLED,
    DISPATCHED,
    EXPIRED,
    FAILED,
    FINAL,
    LOST,
    QUEUED,
    REJECTED,
    RUNNING,
    SUCCEEDED,
    TIMED_OUT,
)

IN_FLIGHT: Final = frozenset({DISPATCHED, RUNNING})
#: The order of the per-status counts: outcomes first, then what is still on its way.
STATUS_ORDER: Final = (
    SUCCEEDED, FAILED, TIMED_OUT, REJECTED, CANCELLED, EXPIRED, LOST, RUNNING, DISPATCHED, QUEUED
)  # fmt: skip


def job_done(job: JobView) -> bool:
    """Nothing more will happen: completed, cancelled, or stopped with nothing in flight."""
    if job["status"] in (JOB_COMPLETED, JOB_CANCELLED):
        return True
    # A stopped job starts nothing new; wait for what is already out there.
    return job["status"] == JOB_STOPPED and not any(
        c["status"] in IN_FLIGHT for c in job.get("commands") or []
    )


def counts_text(counts: dict[str, int]) -> str:
    ordered = [s for s in STATUS_ORDER if counts.get(s)]
    ordered += sorted(s for s in counts if s not in STATUS_ORDER and counts[s])
    return "  ".join(f"{s} {counts[s]}" for s in ordered) or "no commands yet"


def progress_line(job: JobView, width: int = 24) -> str:
    counts = job.get("counts") or {}
    total = max(len(job.get("commands") or []), sum(counts.values()), int(job.get("total") or 0))
    done = sum(n for s, n in counts.items() if s in FINAL)
    filled = int(width * done / total) if total else 0
    bar = "#" * filled + "." * (width - filled)
    return f"job {job['job_id']} {job['status']:<9} [{bar}] {done}/{total}  {counts_text(counts)}"


class _ProgressBar:
    """The job's progress line on stderr: redrawn in place on a terminal, else one line
    per change; nothing when ``quiet``."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.shown = ""

    def draw(self, job: JobView) -> None:
        line = progress_line(job)
        if self.quiet or line == self.shown:
            return
        self.shown = line
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        if job["status"] == JOB_PAUSED and not self.tty:
            sys.stderr.write(f"paused: viworks job resume {job['job_id']}\n")
        sys.stderr.flush()

    def end_line(self) -> None:
        """Leave the redrawn line behind (on a terminal)."""
        if self.tty and not self.quiet:
            sys.stderr.write("\n")


def _cancel_or_detach(job_id: str) -> bool:
    """After Ctrl-C: True to cancel the job (asked at a terminal; detach without one)."""
    if not terminal.stdin_is_tty():
        return False
    try:
        choice = terminal.ask(f"cancel job {job_id} or detach? [c/D] ")
    except (KeyboardInterrupt, EOFError):
        return False
    return choice.strip().lower().startswith("c")


def watch_job(api: Api, job: JobView, quiet: bool = False, poll: float = 2.0) -> JobView | None:
    """A live progress bar until the job is done; its last state, or None if detached.

    ``job.progress`` events for this job wake the redraw; without them it polls every
    ``poll`` s. Ctrl-C asks whether to cancel the job or detach (detach without a TTY).
    """
    job_id = job["job_id"]
    feed = api.job_progress()
    bar = _ProgressBar(quiet)
    bar.draw(job)
    while not job_done(job):
        try:
            deadline = time.monotonic() + poll
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    message = feed.get(remaining)
                except (EOFError, CLIError):
                    terminal.sleep(remaining)  # no event stream: poll
                    break
                if message is not None and (message.data or {}).get("job_id") == job_id:
                    break
            job = api.job(job_id)
            bar.draw(job)
        except KeyboardInterrupt:
            bar.end_line()
            if not _cancel_or_detach(job_id):
                print(f"detached: job {job_id} goes on; viworks job show {job_id}", file=sys.stderr)
                return None
            job = api.job_action(job_id, "cancel")
            bar.draw(job)
    bar.end_line()
    return job
