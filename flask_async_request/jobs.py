"""Creating, publishing, running and purging jobs: plain functions the tasks, views and CLI call."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy as sa

from .exceptions import AsyncRequestError, EnqueueError, InvalidReply, WorkerResolutionError
from .models import Job, JobStatus, as_utc, utcnow
from .state import get_state
from .tasks import PROCESS_TASK
from .worker import normalize_reply, resolve_worker, worker_path

if TYPE_CHECKING:
    from .worker import Worker

logger = logging.getLogger("flask_async_request")

#: Rows deleted per transaction by :func:`purge_jobs`.
PURGE_BATCH_SIZE = 1000
#: Longest wait between two attempts of a retried job.
MAX_RETRY_DELAY = 600.0


def check_json(value: Any, where: str = "arguments") -> None:
    """Check that ``value`` comes back equal after a JSON round trip.

    :raises TypeError: naming the first value that JSON cannot store.
    :raises ValueError: for a float that is not finite.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} contains {value!r}, which JSON cannot store.")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{where} contains a dict key {key!r} of type {type(key).__name__};"
                    " JSON object keys must be str."
                )
            check_json(item, f"{where}[{key!r}]")
        return
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        for index, item in enumerate(value):
            check_json(item, f"{where}[{index}]")
        return
    raise TypeError(
        f"{where} is {value!r} of type {type(value).__name__}, which is not JSON-serialisable."
    )


def create_and_enqueue(
    worker_class: type[Worker], args: Sequence[Any], kwargs: Mapping[str, Any]
) -> Job:
    """Validate, commit a ``waiting`` row, then publish it (see :meth:`Job.create_and_enqueue`)."""
    state = get_state()
    path = worker_path(worker_class)
    params = {"args": list(args), "kwargs": dict(kwargs)}
    check_json(params["args"], "args")
    check_json(params["kwargs"], "kwargs")
    # Store exactly what the worker will get back.
    params = json.loads(json.dumps(params))
    job = Job(worker=path, params=params, status=JobStatus.WAITING)
    session = state.db.session
    session.add(job)
    session.flush()
    job_id = job.id
    session.commit()
    # The id was read before the commit expired the row, so the job is loaded
    # afresh on next access: it may already have run (eager mode, fast workers).
    publish(job_id)
    return job


def publish(job_id: int, countdown: float | None = None) -> None:
    """Send the message that makes a worker run job ``job_id``.

    :raises EnqueueError: the broker could not be reached; the row is left as it is.
    """
    state = get_state()
    if state.embedded is not None:
        state.embedded.ensure_started()
    task = state.celery.tasks[PROCESS_TASK]
    try:
        task.apply_async((job_id,), queue=state.settings.queue, countdown=countdown)
    except Exception as e:
        if state.celery.conf.task_always_eager:
            raise
        raise EnqueueError(
            f"Job {job_id} is stored but its message could not be published: {e}", job_id
        ) from e


class _Outcome(NamedTuple):
    status: JobStatus
    status_code: int
    body: str


def _failure(message: str) -> _Outcome:
    return _Outcome(JobStatus.FAILED, 500, json.dumps({"error": message}))


def _retry_delay(attempt: int) -> float:
    """Exponential backoff: 1, 2, 4 ... seconds, capped at :data:`MAX_RETRY_DELAY`."""
    return float(min(2 ** (attempt - 1), MAX_RETRY_DELAY))


def run_job(job_id: int) -> JobStatus | None:
    """Claim job ``job_id``, run its worker and store the reply.

    The claim is one conditional UPDATE (``waiting`` -> ``processing``), so a
    duplicate or redelivered message for a job that is already claimed, finished
    or deleted does nothing.

    :returns: the status the job was left in, or ``None`` when it was not claimed.
    """
    state = get_state()
    session = state.db.session
    now = utcnow()
    claimed = session.execute(
        sa.update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.WAITING)
        .values(
            status=JobStatus.PROCESSING,
            started_at=now,
            updated_at=now,
            attempts=Job.attempts + 1,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        logger.info("Job %s is not waiting (taken, finished or deleted); skipping it.", job_id)
        return None

    job = session.get(Job, job_id)
    if job is None:  # Deleted between the claim and this read.
        return None
    worker, attempt = job.worker, job.attempts
    try:
        worker_class = resolve_worker(worker)
        instance = worker_class()
        instance.job_id = job_id
        reply = instance.execute(*job.args, **job.kwargs)
        outcome = _Outcome(JobStatus.PROCESSED, *normalize_reply(reply))
    except WorkerResolutionError as e:
        session.rollback()
        logger.error("Job %s: %s", job_id, e)
        outcome = _failure(str(e))
    except InvalidReply as e:
        session.rollback()
        logger.error("Job %s: worker %s %s", job_id, worker, e)
        outcome = _failure(f"Worker {worker} {e}")
    except Exception as e:
        # The worker may have left its own work half-done in the session.
        session.rollback()
        logger.exception("Job %s: worker %s raised %s", job_id, worker, type(e).__name__)
        if attempt <= state.settings.retry:
            return _schedule_retry(job_id, attempt)
        outcome = _failure(str(e) or type(e).__name__)

    now = utcnow()
    session.execute(
        sa.update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.PROCESSING)
        .values(
            status=outcome.status,
            status_code=outcome.status_code,
            response=outcome.body,
            finished_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return outcome.status


def _schedule_retry(job_id: int, attempt: int) -> JobStatus:
    session = get_state().db.session
    session.execute(
        sa.update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.PROCESSING)
        .values(status=JobStatus.WAITING, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()
    delay = _retry_delay(attempt)
    logger.info("Job %s: attempt %s failed; retrying in %.0f s.", job_id, attempt, delay)
    publish(job_id, countdown=delay)
    return JobStatus.WAITING


class JobReply(NamedTuple):
    """The columns the status endpoint reads."""

    uid: str
    status: JobStatus
    status_code: int | None
    response: str | None


_REPLY_COLUMNS = sa.select(Job.uid, Job.status, Job.status_code, Job.response)


def fetch_reply(job_id: int) -> JobReply | None:
    """Read what the status endpoint needs of job ``job_id`` in one indexed lookup.

    It runs on a pooled connection in autocommit mode, outside the ORM session,
    so a poll costs one query and no ROLLBACK round trip.
    """
    engine = get_state().db.engine
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        row = conn.execute(_REPLY_COLUMNS.where(Job.id == job_id)).first()
    return None if row is None else JobReply(*row)


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
    publish(job_id)
