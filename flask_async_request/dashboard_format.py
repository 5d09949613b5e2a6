"""How the jobs dashboard writes times, durations and long text for a reader."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from . import config
from .models import Job, JobStatus
from .values import as_utc, finite, iso_utc, utcnow

#: Characters of a reply or of arguments shown on a job's page; the rest is cut.
SHOWN_CHARS = 100_000


def format_moment(moment: datetime | None) -> str:
    """A time as ``2024-05-01 12:00:00 UTC``, or ``-``."""
    return "-" if moment is None else as_utc(moment).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_iso(moment: datetime | None) -> str:
    """A time in ISO 8601, in UTC, or an empty string."""
    return iso_utc(moment) or ""


def format_percent(progress: float | None) -> str:
    """Progress from 0 to 1 as ``42%``; ``-`` for none (or a value edited into NaN)."""
    progress = finite(progress)
    if progress is None:
        return "-"
    return f"{progress * 100:.0f}%"


def format_elapsed(delta: timedelta | None) -> str:
    """How long something took, for a reader: 350 ms, 12.3 s, 5m07s, 3h02m, 2d04h; ``-`` for none.

    Under a minute it reads to the millisecond or the tenth of a second; from a
    minute on it is ``config.format_duration``'s.
    """
    if delta is None:
        return "-"
    seconds = max(delta.total_seconds(), 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return config.format_duration(delta)


# One job's times and text ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Timings:
    """How long a job waited for a worker and how long it ran; ``so_far`` while it goes on."""

    waited: timedelta | None
    ran: timedelta | None
    waiting_so_far: bool
    running_so_far: bool


def timings(job: Job, now: datetime | None = None) -> Timings:
    """Waited: from creation to the (last) start, or to the end if it never started.

    Ran: from the (last) start to the end. A waiting or running job is measured up
    to ``now``; a waiting job that ran before (a retry's backoff) counts as
    waiting since its creation.
    """
    now = now or utcnow()
    created = as_utc(job.created_at)
    started = None if job.started_at is None else as_utc(job.started_at)
    finished = None if job.finished_at is None else as_utc(job.finished_at)
    if job.status is JobStatus.WAITING:
        return Timings(now - created, None, waiting_so_far=True, running_so_far=False)
    if job.status is JobStatus.PROCESSING and started is not None:
        return Timings(started - created, now - started, waiting_so_far=False, running_so_far=True)
    waited_until = started or finished
    return Timings(
        waited=None if waited_until is None else waited_until - created,
        ran=None if started is None or finished is None else finished - started,
        waiting_so_far=False,
        running_so_far=False,
    )


def shown(text: str) -> tuple[str, int]:
    """``text`` cut to :data:`SHOWN_CHARS`, and how many characters were cut."""
    if len(text) <= SHOWN_CHARS:
        return text, 0
    return text[:SHOWN_CHARS], len(text) - SHOWN_CHARS
