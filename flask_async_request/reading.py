"""Reading jobs for operators: lists, one job, counts.

The one read side of the command line, the dashboard and the metrics: a filter
means the same jobs wherever it is given. Every read is an indexed query; nothing
here changes a row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from .config import parse_duration
from .exceptions import JobNotFound
from .models import Job, JobStatus
from .state import get_state
from .statements import UNFINISHED
from .values import as_utc, unstorable, utcnow

#: Jobs on one page of a list, by default.
PAGE_SIZE = 50

__all__ = [
    "PAGE_SIZE",
    "JobFilter",
    "JobPage",
    "JobStats",
    "ListedJob",
    "QueueDepth",
    "find_job",
    "job_ids",
    "job_page",
    "job_stats",
    "list_jobs",
    "load_job",
    "queue_depths",
    "status_counts",
    "waiting_now",
]


@dataclasses.dataclass(frozen=True)
class JobFilter:
    """Which jobs a list shows; empty fields do not filter."""

    #: Any of these statuses; empty: every status.
    statuses: tuple[JobStatus, ...] = ()
    #: The worker's dotted path, exactly.
    worker: str | None = None
    #: Only jobs created longer ago than this.
    older_than: timedelta | None = None
    #: Only jobs created within this.
    newer_than: timedelta | None = None
    #: The owner the jobs were created for, exactly.
    owner: str | None = None

    @property
    def status(self) -> JobStatus | None:
        """The one status filtered on, or ``None`` for none or several."""
        return self.statuses[0] if len(self.statuses) == 1 else None

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> JobFilter:
        """The filter a list url asks for.

        :raises ValueError: for an unknown status, a duration that does not parse, or
            a worker with text no database takes in a query (a NUL character or a
            lone surrogate).
        """
        status = args.get("status") or None
        if status is not None and status not in {s.value for s in JobStatus}:
            raise ValueError(
                f"status is {status!r}; expected one of {', '.join(s.value for s in JobStatus)}."
            )
        older, newer = args.get("older_than") or None, args.get("newer_than") or None
        worker = (args.get("worker") or "").strip() or None
        owner = (args.get("owner") or "").strip() or None
        for name, value in (("worker", worker), ("owner", owner)):
            reason = None if value is None else unstorable(value)
            if reason is not None:
                raise ValueError(f"{name} cannot be searched for: {reason}.")
        return cls(
            statuses=() if status is None else (JobStatus(status),),
            worker=worker,
            older_than=None if older is None else parse_duration(older),
            newer_than=None if newer is None else parse_duration(newer),
            owner=owner,
        )

    @property
    def empty(self) -> bool:
        """Whether the filter selects every job."""
        return self == JobFilter()


@dataclasses.dataclass(frozen=True)
class ListedJob:
    """What a list shows of a job: no arguments or reply, which may be large."""

    id: int
    status: JobStatus
    worker: str
    status_code: int | None
    attempts: int
    progress: float | None
    owner: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    #: The size of a reply held in the result store; ``None`` for one in the row.
    result_size: int | None = None


_LISTED = sa.select(*(getattr(Job, field.name) for field in dataclasses.fields(ListedJob)))


@dataclasses.dataclass(frozen=True)
class JobPage:
    """One page of a list, newest first, with where the next pages start."""

    jobs: list[ListedJob]
    #: Pass as ``before`` for the next, older page; ``None`` on the last page.
    older: int | None
    #: Pass as ``after`` for the previous, newer page; ``None`` on the first page.
    newer: int | None


def job_page(
    filters: JobFilter,
    *,
    before: int | None = None,
    after: int | None = None,
    size: int = PAGE_SIZE,
) -> JobPage:
    """A page of jobs that match ``filters``, newest (highest id) first.

    Keyset paging: ``before`` gives the page of jobs just older than that id,
    ``after`` the page just newer. Each page is one range scan of the primary key,
    the unfinished jobs' ``id`` or ``(worker, id)``, with no OFFSET and no sort; an age filter
    first turns into an id bound with one lookup in the ``created_at`` index.
    """
    session = get_state().db.session
    conditions = _conditions(session, filters)
    if conditions is None:
        return JobPage([], None, None)
    if after is not None:
        query = _LISTED.where(*conditions, Job.id > after).order_by(Job.id.asc()).limit(size + 1)
        jobs = [ListedJob(*row) for row in session.execute(query)]
        if len(jobs) > size:
            jobs = jobs[:size][::-1]
            return JobPage(jobs, older=jobs[-1].id, newer=jobs[0].id)
        # Nothing newer beyond these: the newest page, full.
        before = None
    query = _LISTED.where(*conditions).order_by(Job.id.desc()).limit(size + 1)
    if before is not None:
        query = query.where(Job.id < before)
    jobs = [ListedJob(*row) for row in session.execute(query)]
    older = jobs[size - 1].id if len(jobs) > size else None
    jobs = jobs[:size]
    newer = jobs[0].id if before is not None and jobs else None
    return JobPage(jobs, older=older, newer=newer)


def list_jobs(
    statuses: Iterable[JobStatus] = (),
    older_than: timedelta | None = None,
    newer_than: timedelta | None = None,
    limit: int = PAGE_SIZE,
    *,
    worker: str | None = None,
    owner: str | None = None,
) -> list[Job]:
    """The newest jobs first, filtered by status, age (from ``created_at``), worker and owner.

    The jobs of the first page ``job_page`` gives for the same filter, whole.
    """
    session = get_state().db.session
    filters = JobFilter(
        tuple(statuses), worker=worker, older_than=older_than, newer_than=newer_than, owner=owner
    )
    conditions = _conditions(session, filters)
    if conditions is None:
        return []
    query = sa.select(Job).where(*conditions).order_by(Job.id.desc()).limit(limit)
    return list(session.execute(query).scalars())


def _conditions(session: Any, filters: JobFilter) -> list[sa.ColumnElement[bool]] | None:
    """The WHERE clauses of ``filters``; ``None`` when no job can match."""
    conditions: list[sa.ColumnElement[bool]] = []
    if filters.statuses:
        conditions.append(Job.status.in_(filters.statuses))
        if not any(status.finished for status in filters.statuses):
            conditions.append(UNFINISHED)
    if filters.worker is not None:
        conditions.append(Job.worker == filters.worker)
    if filters.owner is not None:
        # No index holds the owner: with no other filter, a scan of the jobs by id
        # that stops at the page's end.
        conditions.append(Job.owner == filters.owner)
    now = utcnow()
    # An age becomes a bound on id, found in the created_at index, so the page stays
    # one range scan by id; the age itself is checked on each row of that range too,
    # for a job whose creation time does not follow its id (set by hand, or from
    # processes whose clocks differ). That check reads the column through COALESCE,
    # which no index serves: a planner that took the created_at index for it would
    # have to sort the page by id.
    created = sa.func.coalesce(Job.created_at, Job.created_at)
    if filters.newer_than is not None:
        since = now - filters.newer_than
        first = session.execute(
            sa.select(Job.id).where(Job.created_at >= since).order_by(Job.created_at.asc()).limit(1)
        ).scalar()
        if first is None:
            return None
        conditions += [Job.id >= first, created >= since]
    if filters.older_than is not None:
        until = now - filters.older_than
        last = session.execute(
            sa.select(Job.id).where(Job.created_at < until).order_by(Job.created_at.desc()).limit(1)
        ).scalar()
        if last is None:
            return None
        conditions += [Job.id <= last, created < until]
    return conditions


def job_ids(filters: JobFilter, limit: int) -> list[int]:
    """The ids of the newest ``limit`` jobs that match ``filters``, newest first."""
    session = get_state().db.session
    conditions = _conditions(session, filters)
    if conditions is None:
        return []
    query = sa.select(Job.id).where(*conditions).order_by(Job.id.desc()).limit(limit)
    ids = [int(row[0]) for row in session.execute(query)]
    # What follows changes rows through the store: no transaction of the session's held.
    session.commit()
    return ids


def find_job(term: str) -> int | None:
    """The id of the job ``term`` names by its id or its uid; ``None`` if none does."""
    term = term.strip()
    if term.isdigit() and len(term) <= 18:
        condition = Job.id == int(term)
    elif len(term) == 32 and all(c in "0123456789abcdef" for c in term.lower()):
        condition = Job.uid == term.lower()
    else:
        return None
    found = get_state().db.session.execute(sa.select(Job.id).where(condition)).scalar()
    return None if found is None else int(found)


def load_job(job_id: int) -> Job:
    """Job ``job_id`` as stored now, read by its primary key.

    :raises JobNotFound: there is no such job.
    """
    job = (
        get_state()
        .db.session.execute(
            # Read afresh even if the session holds the job from earlier in the request.
            sa.select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
        )
        .scalar()
    )
    if job is None:
        raise JobNotFound(job_id)
    return job


@dataclasses.dataclass(frozen=True)
class JobStats:
    """Counts for operators: see :func:`job_stats`."""

    counts: dict[JobStatus, int]
    oldest_waiting_age: timedelta | None
    finished_last_hour: int
    #: Waiting jobs per queue they go to (``None``: Celery's default queue).
    waiting_by_queue: dict[str | None, int] = dataclasses.field(default_factory=dict)


def job_stats() -> JobStats:
    """Count jobs per status, the oldest waiting job's age and jobs finished in the last hour."""
    session = get_state().db.session
    now = utcnow()
    counts = dict.fromkeys(JobStatus, 0)
    for status, count in session.execute(
        sa.select(Job.status, sa.func.count()).group_by(Job.status)
    ):
        counts[status] = count
    oldest = session.execute(
        sa.select(sa.func.min(Job.created_at)).where(Job.status == JobStatus.WAITING, UNFINISHED)
    ).scalar()
    finished = session.execute(
        sa.select(sa.func.count())
        .select_from(Job)
        .where(
            Job.status.in_([s for s in JobStatus if s.finished]),
            Job.finished_at >= now - timedelta(hours=1),
        )
    ).scalar_one()
    by_queue = {
        queue: int(count)
        for queue, count in session.execute(
            sa.select(Job.queue, sa.func.count())
            .where(Job.status == JobStatus.WAITING, UNFINISHED)
            .group_by(Job.queue)
        )
    }
    session.commit()
    return JobStats(
        counts, None if oldest is None else now - as_utc(oldest), int(finished), by_queue
    )


#: Jobs the status counts of the dashboard's chips are taken over: the newest ones.
COUNT_WINDOW = 10_000


def status_counts(window: int = COUNT_WINDOW) -> tuple[dict[JobStatus, int], bool]:
    """How many of the newest ``window`` jobs have each status, and whether there are more.

    One read of the primary key's newest ``window`` entries, whatever the size
    of the table (no index holds the status, so an exact count of the finished
    jobs would read them all).
    """
    newest = sa.select(Job.status).order_by(Job.id.desc()).limit(window).subquery()
    query = sa.select(
        sa.func.count(),
        *(sa.func.sum(sa.case((newest.c.status == s.value, 1), else_=0)) for s in JobStatus),
    )
    session = get_state().db.session
    total, *counts = session.execute(query).one()
    return dict(zip(JobStatus, (int(c or 0) for c in counts), strict=True)), total >= window


@dataclasses.dataclass(frozen=True)
class QueueDepth:
    """The jobs waiting on one queue."""

    #: The queue's name (``None``: the Celery app's default queue).
    queue: str | None
    waiting: int
    #: How long the job due first has been due.
    oldest_due_for: timedelta | None


def queue_depths() -> list[QueueDepth]:
    """The waiting jobs per queue, and how long the first due has waited: one query."""
    now = utcnow()
    query = (
        sa.select(Job.queue, sa.func.count(), sa.func.min(Job.due_at))
        .where(Job.status == JobStatus.WAITING, UNFINISHED)
        .group_by(Job.queue)
    )
    session = get_state().db.session
    depths = [
        QueueDepth(queue, int(count), None if due is None else now - as_utc(due))
        for queue, count, due in session.execute(query)
    ]
    session.commit()
    return sorted(depths, key=lambda depth: depth.queue or "")


_WAITING = sa.select(sa.func.count(), sa.func.min(Job.due_at)).where(
    Job.status == JobStatus.WAITING, UNFINISHED
)


def waiting_now() -> tuple[int, timedelta | None]:
    """How many jobs wait to be claimed, and how long the one due first has been due.

    One query on the index of unfinished jobs, outside the app's session: what a scrape reads.
    """
    row = get_state().store().first(_WAITING, {})
    count, due = (row[0], row[1]) if row is not None else (0, None)
    return int(count or 0), None if due is None else utcnow() - as_utc(due)
