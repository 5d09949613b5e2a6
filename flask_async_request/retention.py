"""How long jobs are kept, and the purge that deletes them after.

The policy (a worker class's ``retention`` and ``failed_retention``, else the
expiration settings) and the SQL it becomes (an age per status, worker class
by worker class) are both here; the periodic purge and ``flask async-request
purge`` call :func:`purge_expired` and :func:`purge_jobs`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta

import sqlalchemy as sa

from . import result_stores, results
from .config import Settings
from .exceptions import WorkerResolutionError
from .models import Job, JobStatus
from .state import get_state
from .store import JobStore
from .values import utcnow
from .worker import Worker, resolve_worker, seconds_of

logger = logging.getLogger("flask_async_request")

#: Every status in which a job has its reply and will not run again.
FINISHED_STATUSES = tuple(status for status in JobStatus if status.finished)

#: Rows deleted per transaction by :func:`purge_jobs`.
PURGE_BATCH_SIZE = 1000


# The policy --------------------------------------------------------------------------


def retention_of(worker: type[Worker] | None, settings: Settings) -> dict[JobStatus, timedelta]:
    """How long finished jobs of ``worker`` are kept, per status (``None``: no worker class)."""
    kept = seconds_of(worker.retention, f"{worker.__qualname__}.retention") if worker else None
    failed = (
        seconds_of(worker.failed_retention, f"{worker.__qualname__}.failed_retention")
        if worker
        else None
    )
    finished = settings.jobs_expiration if kept is None else timedelta(seconds=kept)
    if failed is not None:
        failed_age = timedelta(seconds=failed)
    elif settings.failed_jobs_expiration is not None:
        failed_age = settings.failed_jobs_expiration
    else:
        failed_age = finished
    return {
        JobStatus.PROCESSED: finished,
        JobStatus.CANCELLED: finished,
        JobStatus.FAILED: failed_age,
    }


def count_purgeable(
    older_than: timedelta, statuses: Iterable[JobStatus] = FINISHED_STATUSES
) -> int:
    """How many jobs :func:`purge_jobs` would delete now."""
    return count_matching(get_state().store(), purge_filter(older_than, statuses))


def count_expired(statuses: Iterable[JobStatus] = FINISHED_STATUSES) -> int:
    """How many jobs :func:`purge_expired` would delete now."""
    store = get_state().store()
    return count_matching(store, expired_filter(store, get_state().settings, statuses))


def purge_jobs(
    older_than: timedelta,
    statuses: Iterable[JobStatus] = FINISHED_STATUSES,
    *,
    batch_size: int = PURGE_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete jobs in ``statuses`` (default: finished ones) older than ``older_than``.

    Finished means processed, failed or cancelled. Rows go in batches of
    ``batch_size``, each in its own short statement, so memory stays bounded
    and the status endpoint is never blocked for long. ``waiting`` and
    ``processing`` jobs are kept unless ``statuses`` names them.

    :param progress: called with the running total after each batch.
    :returns: the number of rows deleted.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size is {batch_size}; expected a positive int.")
    deleted = delete_matching(
        get_state().store(),
        purge_filter(older_than, statuses),
        batch_size=batch_size,
        progress=progress,
    )
    if deleted:
        logger.info("Purged %s jobs older than %s.", deleted, older_than)
    return deleted


def purge_expired(
    statuses: Iterable[JobStatus] = FINISHED_STATUSES,
    *,
    batch_size: int = PURGE_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete the jobs past their retention: what the periodic purge does.

    A finished job is kept for its worker class's ``retention`` (failed ones:
    ``failed_retention``), else for ``ASYNC_REQUEST_FAILED_JOBS_EXPIRATION``
    (failed ones) or ``ASYNC_REQUEST_JOBS_EXPIRATION``. The worker classes are
    read now, so a changed retention applies to the jobs already stored. Pending
    statuses, when named, are aged from their creation by the global expiration.

    :returns: the number of rows deleted.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size is {batch_size}; expected a positive int.")
    store = get_state().store()
    condition = expired_filter(store, get_state().settings, statuses)
    deleted = delete_matching(store, condition, batch_size=batch_size, progress=progress)
    if deleted:
        logger.info("Purged %s jobs past their retention.", deleted)
    return deleted


# The SQL it becomes -----------------------------------------------------------------------


def age_filter(
    ages: Mapping[JobStatus, timedelta], now: datetime | None = None
) -> sa.ColumnElement[bool]:
    """Jobs older than the age given for their status; statuses not named are never matched.

    Finished jobs count their age from ``finished_at``, pending ones from ``created_at``.
    """
    now = utcnow() if now is None else now
    by_age: dict[timedelta, list[JobStatus]] = {}
    for status in JobStatus:
        if status in ages:
            by_age.setdefault(ages[status], []).append(status)
    conditions = []
    for age, statuses in by_age.items():
        cutoff = now - age
        finished = [s for s in statuses if s.finished]
        pending = [s for s in statuses if not s.finished]
        if finished:
            conditions.append(sa.and_(Job.status.in_(finished), Job.finished_at < cutoff))
        if pending:
            # finished_at too: the index of unfinished jobs, as no index holds the status.
            conditions.append(
                sa.and_(Job.status.in_(pending), Job.finished_at.is_(None), Job.created_at < cutoff)
            )
    return sa.or_(sa.false(), *conditions)


def purge_filter(
    older_than: timedelta, statuses: Iterable[JobStatus] = FINISHED_STATUSES
) -> sa.ColumnElement[bool]:
    """Jobs in ``statuses`` older than ``older_than``."""
    return age_filter(dict.fromkeys(statuses, older_than))


def expired_filter(
    store: JobStore, settings: Settings, statuses: Iterable[JobStatus]
) -> sa.ColumnElement[bool]:
    """Jobs in ``statuses`` past their retention, worker class by worker class.

    The worker classes are those of the finished jobs stored now; a worker
    class that cannot be imported, or whose retention is not a duration, has
    its jobs kept as long as the default.
    """
    chosen = set(statuses)

    def ages(worker: type[Worker] | None) -> dict[JobStatus, timedelta]:
        finished = retention_of(worker, settings)
        return {
            status: finished.get(status, settings.jobs_expiration)
            for status in JobStatus
            if status in chosen
        }

    default = ages(None)
    by_worker: dict[str, dict[JobStatus, timedelta]] = {}
    for path in _finished_workers(store):
        try:
            worker = resolve_worker(path)
        except WorkerResolutionError as e:
            # A worker class removed since: its jobs are kept as long as the default.
            logger.warning("Purging the jobs of %s with the default retention: %s", path, e)
            continue
        try:
            own = ages(worker)
        except ValueError as e:
            logger.warning("Purging the jobs of %s with the default retention: %s", path, e)
            continue
        if own != default:
            by_worker[path] = own

    now = utcnow()
    groups: dict[tuple[tuple[JobStatus, timedelta], ...], list[str]] = {}
    for path, own in by_worker.items():
        groups.setdefault(tuple(sorted(own.items())), []).append(path)
    conditions = [
        sa.and_(Job.worker.in_(paths), age_filter(dict(own), now)) for own, paths in groups.items()
    ]
    others = age_filter(default, now)
    if by_worker:
        others = sa.and_(Job.worker.not_in(list(by_worker)), others)
    return sa.or_(others, *conditions)


def _finished_workers(store: JobStore) -> list[str]:
    """The worker paths of the finished jobs, each once."""
    query = sa.select(Job.worker).where(Job.status.in_(FINISHED_STATUSES)).distinct()
    return [row[0] for row in store.all(query, {})]


def count_matching(store: JobStore, condition: sa.ColumnElement[bool]) -> int:
    """How many jobs ``condition`` matches now: what :func:`delete_matching` would delete."""
    query = sa.select(sa.func.count()).select_from(Job).where(condition)
    row = store.first(query, {})
    return 0 if row is None else int(row[0])


def delete_matching(
    store: JobStore,
    condition: sa.ColumnElement[bool],
    *,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete the jobs ``condition`` matches (see :func:`age_filter`), ``batch_size`` at a time.

    Each batch is its own short statement, so memory stays bounded and the
    status endpoint is never blocked for long.

    :returns: the number of rows deleted.
    """
    batch = sa.select(Job.id).where(condition).order_by(Job.id).limit(batch_size)
    deleted = 0
    while ids := [row[0] for row in store.all(batch, {})]:
        stored = store.all(result_stores.RESULTS_OF, {"job_ids": ids})
        # The condition again: a job retried since the SELECT is no longer to go.
        deleted += store.rowcount(sa.delete(Job).where(Job.id.in_(ids), condition), {})
        # Then the results of the jobs gone (a job kept after all keeps its result).
        kept = {row[0] for row in store.all(sa.select(Job.id).where(Job.id.in_(ids)), {})}
        results.delete_jobs(store, [job_id for job_id in ids if job_id not in kept])
        result_stores.delete_results(
            store, [tuple(row) for row in stored if row[0] not in kept and row[2] is not None]
        )
        if progress is not None:
            progress(deleted)
    # And the chunks of runs that never finished (a worker that raised or died), and
    # what the app's store holds that is no job's result (a write cut short).
    results.delete_stale(store)
    result_store = result_stores.configured(store)
    if not isinstance(result_store, results.DatabaseStore):
        result_stores.sweep(store, result_store)
    return deleted
