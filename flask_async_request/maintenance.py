"""Operating on jobs in bulk: purge, sweep lost and stuck jobs, statistics, listing, retry."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable
from datetime import timedelta

import sqlalchemy as sa

from .exceptions import AsyncRequestError, EnqueueError
from .jobs import publish
from .models import Job, JobStatus, as_utc, utcnow
from .state import get_state

logger = logging.getLogger("flask_async_request")

#: Rows deleted per transaction by :func:`purge_jobs`.
PURGE_BATCH_SIZE = 1000
#: Jobs looked at per kind by one :func:`sweep_jobs`.
SWEEP_BATCH_SIZE = 500

FINISHED_STATUSES = (JobStatus.PROCESSED, JobStatus.FAILED)


def _purge_filter(older_than: timedelta, statuses: Iterable[JobStatus]) -> sa.ColumnElement[bool]:
    """Finished jobs count their age from ``finished_at``, pending ones from ``created_at``."""
    cutoff = utcnow() - older_than
    statuses = set(statuses)
    finished = [s for s in JobStatus if s in statuses and s.finished]
    pending = [s for s in JobStatus if s in statuses and not s.finished]
    conditions = []
    if finished:
        conditions.append(sa.and_(Job.status.in_(finished), Job.finished_at < cutoff))
    if pending:
        conditions.append(sa.and_(Job.status.in_(pending), Job.created_at < cutoff))
    return sa.or_(sa.false(), *conditions)


def count_purgeable(
    older_than: timedelta, statuses: Iterable[JobStatus] = FINISHED_STATUSES
) -> int:
    """How many jobs :func:`purge_jobs` would delete now."""
    session = get_state().db.session
    query = sa.select(sa.func.count()).select_from(Job).where(_purge_filter(older_than, statuses))
    count = session.execute(query).scalar_one()
    session.commit()
    return int(count)


def purge_jobs(
    older_than: timedelta,
    statuses: Iterable[JobStatus] = FINISHED_STATUSES,
    *,
    batch_size: int = PURGE_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete jobs in ``statuses`` (default: finished ones) older than ``older_than``.

    Rows go in batches of ``batch_size``, each in its own short transaction, so
    memory stays bounded and the status endpoint is never blocked for long.
    ``waiting`` and ``processing`` jobs are kept unless ``statuses`` names them.

    :param progress: called with the running total after each batch.
    :returns: the number of rows deleted.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size is {batch_size}; expected a positive int.")
    session = get_state().db.session
    condition = _purge_filter(older_than, statuses)
    deleted = 0
    while True:
        ids = (
            session.execute(sa.select(Job.id).where(condition).order_by(Job.id).limit(batch_size))
            .scalars()
            .all()
        )
        if not ids:
            break
        session.execute(
            sa.delete(Job).where(Job.id.in_(ids)).execution_options(synchronize_session=False)
        )
        session.commit()
        deleted += len(ids)
        if progress is not None:
            progress(deleted)
    session.commit()
    if deleted:
        logger.info("Purged %s jobs older than %s.", deleted, older_than)
    return deleted


@dataclasses.dataclass(frozen=True)
class JobStats:
    """Counts for operators: see :func:`job_stats`."""

    counts: dict[JobStatus, int]
    oldest_waiting_age: timedelta | None
    finished_last_hour: int


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
        sa.select(sa.func.min(Job.created_at)).where(Job.status == JobStatus.WAITING)
    ).scalar()
    finished = session.execute(
        sa.select(sa.func.count())
        .select_from(Job)
        .where(Job.status.in_(FINISHED_STATUSES), Job.finished_at >= now - timedelta(hours=1))
    ).scalar_one()
    session.commit()
    return JobStats(counts, None if oldest is None else now - as_utc(oldest), int(finished))


def list_jobs(
    statuses: Iterable[JobStatus] = (),
    older_than: timedelta | None = None,
    newer_than: timedelta | None = None,
    limit: int = 50,
) -> list[Job]:
    """The newest jobs first, filtered by status and by age (from ``created_at``)."""
    session = get_state().db.session
    query = sa.select(Job).order_by(Job.id.desc()).limit(limit)
    statuses = list(statuses)
    if statuses:
        query = query.where(Job.status.in_(statuses))
    now = utcnow()
    if older_than is not None:
        query = query.where(Job.created_at < now - older_than)
    if newer_than is not None:
        query = query.where(Job.created_at >= now - newer_than)
    return list(session.execute(query).scalars())


def retry_job(job_id: int) -> None:
    """Run a ``failed`` job again: back to ``waiting`` with its reply cleared, then published.

    :raises AsyncRequestError: no such job, or the job has not failed.
    """
    session = get_state().db.session
    changed = session.execute(
        sa.update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.FAILED)
        .values(
            status=JobStatus.WAITING,
            status_code=None,
            response=None,
            attempts=0,
            started_at=None,
            finished_at=None,
            due_at=utcnow(),
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if changed.rowcount != 1:  # type: ignore[attr-defined]
        job = session.get(Job, job_id)
        if job is None:
            raise AsyncRequestError(f"There is no job {job_id}.")
        raise AsyncRequestError(
            f"Job {job_id} is {job.status.value}; only failed jobs can be retried."
        )
    uid = session.execute(sa.select(Job.uid).where(Job.id == job_id)).scalar_one()
    session.commit()
    publish(job_id, uid)


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """What one :func:`sweep_jobs` did."""

    #: Waiting jobs whose message was sent again.
    republished: int
    #: Jobs whose worker was lost, put back to run again.
    requeued: int
    #: Jobs whose worker was lost and that had no retry left.
    failed: int


def sweep_jobs(batch_size: int = SWEEP_BATCH_SIZE) -> SweepResult:
    """Rescue jobs that no worker will finish by itself.

    * ``processing`` jobs whose lease ran out lost their worker (killed, machine
      gone): they run again while ``ASYNC_REQUEST_RETRY`` allows, else they fail
      with an error that says so.
    * ``waiting`` jobs due for longer than ``ASYNC_REQUEST_WAITING_TIMEOUT`` lost
      their message (broker restarted, or down at enqueue): it is sent again.
      A duplicate message is harmless, since a worker's claim is atomic.

    Each change is a conditional UPDATE, so sweepers running at once, or a
    worker finishing meanwhile, never step on each other.
    """
    state = get_state()
    settings = state.settings
    session = state.db.session
    now = utcnow()
    requeued = failed = republished = 0

    lost = session.execute(
        sa.select(Job.id, Job.uid, Job.attempts, Job.lease_expires_at)
        .where(Job.status == JobStatus.PROCESSING, Job.lease_expires_at < now)
        .order_by(Job.id)
        .limit(batch_size)
    ).all()
    session.commit()
    for job_id, uid, attempt, expired_at in lost:
        assert expired_at is not None  # The query selected expired leases only.
        still_lost = (
            Job.id == job_id,
            Job.status == JobStatus.PROCESSING,
            Job.attempts == attempt,
            Job.lease_expires_at < now,
        )
        if attempt <= settings.retry:
            values: dict[str, object] = {"status": JobStatus.WAITING, "due_at": now}
        else:
            message = (
                f"The worker running this job was lost: its lease expired at"
                f" {as_utc(expired_at).isoformat(timespec='seconds')} with no reply stored."
            )
            values = {
                "status": JobStatus.FAILED,
                "status_code": 500,
                "response": json.dumps({"error": message}),
                "finished_at": now,
            }
        changed = session.execute(
            sa.update(Job)
            .where(*still_lost)
            .values(lease_expires_at=None, updated_at=now, **values)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            continue
        if values["status"] is JobStatus.FAILED:
            logger.error("Job %s: its worker was lost and no retry is left; failed.", job_id)
            failed += 1
            continue
        logger.warning("Job %s: its worker was lost; running it again.", job_id)
        requeued += 1
        try:
            publish(job_id, uid)
        except EnqueueError:
            logger.exception("Job %s could not be published; the next sweep retries.", job_id)

    stale = session.execute(
        sa.select(Job.id, Job.uid)
        .where(Job.status == JobStatus.WAITING, Job.due_at < now - settings.waiting_timeout)
        .order_by(Job.id)
        .limit(batch_size)
    ).all()
    session.commit()
    for job_id, uid in stale:
        try:
            publish(job_id, uid)
        except EnqueueError:
            logger.exception("Job %s could not be published; the next sweep retries.", job_id)
            break  # The broker is down: the rest would fail the same way.
        # Restart its clock, so the next sweep leaves it to the workers for a while.
        session.execute(
            sa.update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.WAITING)
            .values(due_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        session.commit()
        republished += 1
    if stale:
        logger.warning("Sent %s waiting jobs again that no worker had claimed.", republished)
    return SweepResult(republished, requeued, failed)
