"""Operating on jobs in bulk: purge, sweep lost and stuck jobs, statistics, listing, retry.

Every change of a row goes through ``flask_async_request.lifecycle``; this module decides
which jobs to change, and reads for operators.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from datetime import timedelta

import sqlalchemy as sa

from . import lifecycle
from .broker import publish
from .config import Settings
from .exceptions import EnqueueError, WorkerResolutionError
from .lifecycle import FINISHED_STATUSES
from .models import Job, JobStatus, as_utc, utcnow
from .signals import jobs_swept
from .state import current_flask_app, get_state
from .worker import Worker, resolve_worker, seconds_of

logger = logging.getLogger("flask_async_request")

#: Rows deleted per transaction by :func:`purge_jobs`.
PURGE_BATCH_SIZE = 1000
#: Jobs looked at per kind by one :func:`sweep_jobs`.
SWEEP_BATCH_SIZE = 500

__all__ = [
    "FINISHED_STATUSES",
    "PURGE_BATCH_SIZE",
    "SWEEP_BATCH_SIZE",
    "JobStats",
    "SweepResult",
    "count_expired",
    "count_purgeable",
    "job_stats",
    "list_jobs",
    "purge_expired",
    "purge_jobs",
    "retention_of",
    "retry_job",
    "sweep_jobs",
]


def count_purgeable(
    older_than: timedelta, statuses: Iterable[JobStatus] = FINISHED_STATUSES
) -> int:
    """How many jobs :func:`purge_jobs` would delete now."""
    return lifecycle.count_purgeable(
        get_state().store(), lifecycle.purge_filter(older_than, statuses)
    )


def count_expired(statuses: Iterable[JobStatus] = FINISHED_STATUSES) -> int:
    """How many jobs :func:`purge_expired` would delete now."""
    return lifecycle.count_purgeable(get_state().store(), _retention_filter(statuses))


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
    deleted = lifecycle.purge(
        get_state().store(),
        lifecycle.purge_filter(older_than, statuses),
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
    deleted = lifecycle.purge(
        get_state().store(), _retention_filter(statuses), batch_size=batch_size, progress=progress
    )
    if deleted:
        logger.info("Purged %s jobs past their retention.", deleted)
    return deleted


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


def _retention_filter(statuses: Iterable[JobStatus]) -> sa.ColumnElement[bool]:
    """Jobs in ``statuses`` past their retention, worker class by worker class."""
    settings = get_state().settings
    chosen = set(statuses)

    def ages(worker: type[Worker] | None) -> dict[JobStatus, timedelta]:
        finished = retention_of(worker, settings)
        return {
            status: finished.get(status, settings.jobs_expiration)
            for status in JobStatus
            if status in chosen
        }

    default = ages(None)
    by_worker = {}
    for path in lifecycle.finished_workers(get_state().store()):
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
    return lifecycle.retention_filter(default, by_worker)


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
        sa.select(sa.func.min(Job.created_at)).where(Job.status == JobStatus.WAITING)
    ).scalar()
    finished = session.execute(
        sa.select(sa.func.count())
        .select_from(Job)
        .where(Job.status.in_(FINISHED_STATUSES), Job.finished_at >= now - timedelta(hours=1))
    ).scalar_one()
    by_queue = {
        queue: int(count)
        for queue, count in session.execute(
            sa.select(Job.queue, sa.func.count())
            .where(Job.status == JobStatus.WAITING)
            .group_by(Job.queue)
        )
    }
    session.commit()
    return JobStats(
        counts, None if oldest is None else now - as_utc(oldest), int(finished), by_queue
    )


def unconsumed_queues(waiting_by_queue: dict[str | None, int], timeout: float = 1.0) -> list[str]:
    """The queues with waiting jobs that no running worker consumes, as Celery's inspect tells.

    ``None`` stands for the Celery app's default queue. Without a broker
    (embedded or eager mode) every job is served in process: none is listed.
    When no worker answers within ``timeout``, every queue with waiting jobs is.
    """
    state = get_state()
    if state.embedded is not None or state.celery.conf.task_always_eager:
        return []
    default = state.celery.conf.task_default_queue
    wanted = {queue or default for queue, count in waiting_by_queue.items() if count}
    if not wanted:
        return []
    answers = state.celery.control.inspect(timeout=timeout).active_queues() or {}
    consumed = {queue["name"] for queues in answers.values() for queue in queues or ()}
    return sorted(wanted - consumed)


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
    """Run a ``failed`` job again: back to ``waiting`` with its reply and progress cleared.

    :raises JobNotFound: there is no such job.
    :raises JobNotFailed: the job has not failed.
    :raises EnqueueError: the broker refused the message; the sweeper sends it later.
    """
    publish(lifecycle.reset_for_retry(get_state().store(), job_id))


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
    store = state.store()
    settings = state.settings
    now = utcnow()
    requeued = failed = republished = 0

    for job in lifecycle.lost_jobs(store, now, batch_size):
        if job.attempt <= settings.retry:
            if not lifecycle.requeue_lost(store, job, now):
                continue
            logger.warning("Job %s: its worker was lost; running it again.", job.id)
            requeued += 1
            try:
                publish(job.message)
            except EnqueueError:
                logger.exception("Job %s could not be published; the next sweep retries.", job.id)
            continue
        expired = as_utc(job.lease_expires_at).isoformat(timespec="seconds")
        error = (
            f"The worker running this job was lost: its lease expired at {expired}"
            " with no reply stored."
        )
        if lifecycle.fail_lost(store, job, now, error) is not None:
            logger.error("Job %s: its worker was lost and no retry is left; failed.", job.id)
            failed += 1

    stale = lifecycle.stale_jobs(store, now - settings.waiting_timeout, batch_size)
    for message in stale:
        try:
            publish(message)
        except EnqueueError:
            logger.exception(
                "Job %s could not be published; the next sweep retries.", message.job_id
            )
            break  # The broker is down: the rest would fail the same way.
        # Restart its clock, so the next sweep leaves it to the workers for a while.
        lifecycle.touch_waiting(store, message.job_id)
        republished += 1
    if stale:
        logger.warning("Sent %s waiting jobs again that no worker had claimed.", republished)
    jobs_swept.send(current_flask_app(), republished=republished, requeued=requeued, failed=failed)
    return SweepResult(republished, requeued, failed)
