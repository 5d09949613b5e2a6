"""Creating, publishing and running jobs, and reading their replies."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction, SessionTransactionOrigin

from .exceptions import (
    EnqueueError,
    IdempotencyConflict,
    InvalidReply,
    JobCancelled,
    JobFinished,
    WorkerResolutionError,
)
from .leases import keeper
from .models import Job, JobStatus, utcnow
from .running import RunContext
from .signals import job_cancelled, job_enqueued, job_failed, job_finished, job_started
from .state import current_flask_app, get_state
from .store import Claim, JobReply
from .tasks import CALLBACK_TASK, PROCESS_TASK
from .tokens import encode_token
from .worker import normalize_reply, resolve_worker, worker_path

if TYPE_CHECKING:
    from .worker import Worker

logger = logging.getLogger("flask_async_request")

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


def _explicit_transaction(session: Session) -> bool:
    """Whether the caller opened the session's transaction with ``session.begin()``."""
    transaction = session.get_transaction()
    return transaction is not None and transaction.origin is SessionTransactionOrigin.BEGIN


def create_and_enqueue(
    worker_class: type[Worker],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    commit: bool = True,
    idempotency_key: str | None = None,
    callback_url: str | None = None,
) -> Job:
    """Validate and store a ``waiting`` job; publish it once its row is committed.

    See :meth:`Job.create_and_enqueue`. With ``commit=False``, or inside a
    transaction the caller opened with ``db.session.begin()``, the row is only
    flushed: the message goes out when the caller's transaction commits, and
    never if it rolls back.
    """
    state = get_state()
    path = worker_path(worker_class)
    params = {"args": list(args), "kwargs": dict(kwargs)}
    check_json(params["args"], "args")
    check_json(params["kwargs"], "kwargs")
    # Store exactly what the worker will get back.
    params = json.loads(json.dumps(params))
    if callback_url is not None:
        check_callback_url(callback_url)
    owner = state.identity()
    session: Session = state.db.session()
    scope = None
    if idempotency_key is not None:
        scope = _idempotency_scope(idempotency_key, owner)
        existing = _job_with_scope(session, scope)
        if existing is not None:
            return _same_request(existing, path, params, idempotency_key)
    job = Job(
        worker=path,
        params=params,
        status=JobStatus.WAITING,
        owner=owner,
        idempotency_scope=scope,
        callback_url=callback_url,
    )
    store = state.store()
    # Published on the caller's commit rather than ours.
    deferred = not commit or _explicit_transaction(session)
    if (
        not deferred
        and store.autocommit
        and scope is None
        and not (session.new or session.dirty or session.deleted)
    ):
        # Nothing of the caller's to commit along: one autocommit INSERT makes
        # the row durable in a single round trip, instead of BEGIN, INSERT, COMMIT.
        store.insert(job)
        session.add(job)
        job._token = encode_token(job, state.settings)
        job_id, uid = job.id, job.uid
        # Loaded afresh on next access: it may already have run.
        session.expire(job)
        _publish_new(job_id, uid)
        return job
    session.add(job)
    try:
        session.flush()
    except sa.exc.IntegrityError:
        if scope is None:
            raise
        # Another request with the same key won the race.
        session.rollback()
        existing = _job_with_scope(session, scope)
        if existing is None:
            raise
        return _same_request(existing, path, params, idempotency_key or "")
    job_id, uid = job.id, job.uid
    # Signed now, while id and uid are loaded: the commit below expires them.
    job._token = encode_token(job, state.settings)
    if deferred:
        session.info.setdefault(_PENDING_KEY, []).append((job_id, uid))
        return job
    session.commit()
    # The id was read before the commit expired the row, so the job is loaded
    # afresh on next access: it may already have run (eager mode, fast workers).
    _publish_new(job_id, uid)
    return job


def _publish_new(job_id: int, uid: str) -> None:
    """Publish a newly stored job and announce it (``job_enqueued``)."""
    publish(job_id, uid)
    job_enqueued.send(current_flask_app(), job_id=job_id)


def _idempotency_scope(key: str, owner: str | None) -> str:
    if not isinstance(key, str) or not key or len(key) > 255:
        raise ValueError(
            f"idempotency_key is {key!r}; expected a non-empty str of 255 chars at most."
        )
    return hashlib.sha256(f"{owner or ''}\x00{key}".encode()).hexdigest()


def _job_with_scope(session: Session, scope: str) -> Job | None:
    return session.execute(sa.select(Job).where(Job.idempotency_scope == scope)).scalar()


def _same_request(job: Job, path: str, params: dict[str, Any], key: str) -> Job:
    """The job a key first created, if this request is the same; else a conflict."""
    if job.worker != path or job.params != params:
        raise IdempotencyConflict(
            f"Idempotency key {key!r} was used for job {job.id} with other arguments;"
            " use a new key for a new request.",
            job.id,
        )
    return job


def check_callback_url(url: str) -> None:
    """:raises ValueError: unless ``url`` is an absolute http(s) url of 2,048 chars at most."""
    parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.netloc
        or len(url) > 2048
    ):
        raise ValueError(f"callback_url is {url!r}; expected an absolute http or https url.")


#: Where a session keeps the ids of jobs to publish when it commits.
_PENDING_KEY = "flask_async_request.publish_on_commit"


@event.listens_for(Session, "after_commit")
def _publish_on_commit(session: Session) -> None:
    pending = session.info.pop(_PENDING_KEY, None)
    for job_id, uid in pending or ():
        try:
            _publish_new(job_id, uid)
        except EnqueueError:
            # The commit has happened and cannot fail now; the row stays waiting
            # and the sweeper publishes it again.
            logger.exception("Job %s is stored but could not be published yet.", job_id)


@event.listens_for(Session, "after_transaction_end")
def _forget_on_rollback(session: Session, transaction: SessionTransaction) -> None:
    # After a commit the list is already gone; what is left belongs to a rolled
    # back transaction, whose rows never existed.
    if transaction.parent is None:
        session.info.pop(_PENDING_KEY, None)


def task_id(job_id: int, uid: str) -> str:
    """The Celery task id of every message for a job, so one revoke stops them all.

    The uid makes it unique across databases and table resets: workers remember
    revoked ids, and Celery apps sharing a broker share their revokes.
    """
    return f"async-request-{job_id}-{uid}"


def publish(job_id: int, uid: str, countdown: float | None = None) -> None:
    """Send the message that makes a worker run job ``job_id``.

    :raises EnqueueError: the broker could not be reached; the row is left as it is.
    """
    state = get_state()
    if state.embedded is not None:
        state.embedded.ensure_started()
    task = state.celery.tasks[PROCESS_TASK]
    try:
        task.apply_async(
            (job_id,), queue=state.settings.queue, countdown=countdown, task_id=task_id(job_id, uid)
        )
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
    content_type: str | None = None


def _failure(message: str) -> _Outcome:
    return _Outcome(JobStatus.FAILED, 500, json.dumps({"error": message}))


def retry_delay(attempt: int) -> float:
    """Exponential backoff: 1, 2, 4 ... seconds, capped at :data:`MAX_RETRY_DELAY`."""
    return float(min(2 ** (attempt - 1), MAX_RETRY_DELAY))


def run_job(job_id: int) -> JobStatus | None:
    """Claim job ``job_id``, run its worker and store the reply.

    The claim is one conditional UPDATE (``waiting`` -> ``processing``), so a
    duplicate or redelivered message for a job that is already claimed, finished
    or deleted does nothing. While the worker runs, its lease is renewed; the
    reply is stored only if the job was neither cancelled nor taken over meanwhile.

    :returns: the status the job was left in, or ``None`` when it was not claimed
        or its reply was dropped.
    """
    state = get_state()
    store = state.store()
    claim = store.claim(job_id, state.settings.lease)
    if claim is None:
        logger.info("Job %s is not waiting (taken, finished or deleted); skipping it.", job_id)
        return None
    app = current_flask_app()
    job_started.send(app, job_id=job_id, attempt=claim.attempt)
    keeper.hold(store, job_id, claim.attempt, state.settings.lease)
    try:
        outcome = _execute(job_id, claim, RunContext(app, store, job_id, claim.attempt))
    finally:
        keeper.release(store, job_id)
    if outcome is _RETRY:
        return _schedule_retry(job_id, claim.uid, claim.attempt)
    if outcome is _ABANDONED or not store.finish(job_id, claim.attempt, *outcome):
        logger.info(
            "Job %s: attempt %s was cancelled or taken over; reply dropped.", job_id, claim.attempt
        )
        return None
    if outcome.status is JobStatus.PROCESSED:
        job_finished.send(app, job_id=job_id, status_code=outcome.status_code)
    else:
        job_failed.send(app, job_id=job_id, error=json.loads(outcome.body)["error"])
    if claim.callback_url:
        send_callback(job_id)
    return outcome.status


def send_callback(job_id: int) -> None:
    """Have the job's end POSTed to its callback url, by a task of its own."""
    state = get_state()
    try:
        state.celery.tasks[CALLBACK_TASK].apply_async(
            (job_id,), queue=state.settings.queue, task_id=f"async-request-callback-{job_id}"
        )
    except Exception:
        logger.exception("Job %s: its callback could not be queued.", job_id)


#: Outcomes of :func:`_execute` that store no reply.
_RETRY = _Outcome(JobStatus.WAITING, 0, "")
_ABANDONED = _Outcome(JobStatus.CANCELLED, 0, "")


def _execute(job_id: int, claim: Claim, run: RunContext) -> _Outcome:
    """Run the worker and return its outcome, :data:`_RETRY` or :data:`_ABANDONED`."""
    session = get_state().db.session
    worker = claim.worker
    retry_on: tuple[type[BaseException], ...] = ()
    try:
        worker_class = resolve_worker(worker)
        retry_on = worker_class.retry_on
        instance = worker_class()
        instance.job_id = job_id
        instance._run = run
        reply = instance.execute(*claim.params.get("args", ()), **claim.params.get("kwargs", {}))
        return _Outcome(JobStatus.PROCESSED, *normalize_reply(reply))
    except JobCancelled:
        session.rollback()
        logger.info("Job %s: the worker stopped, its job cancelled.", job_id)
        return _ABANDONED
    except WorkerResolutionError as e:
        session.rollback()
        logger.error("Job %s: %s", job_id, e)
        return _failure(str(e))
    except InvalidReply as e:
        session.rollback()
        logger.error("Job %s: worker %s %s", job_id, worker, e)
        return _failure(f"Worker {worker} {e}")
    except Exception as e:
        # The worker may have left its own work half-done in the session.
        session.rollback()
        logger.exception("Job %s: worker %s raised %s", job_id, worker, type(e).__name__)
        if claim.attempt <= get_state().settings.retry and isinstance(e, retry_on):
            return _RETRY
        return _failure(str(e) or type(e).__name__)


def _schedule_retry(job_id: int, uid: str, attempt: int) -> JobStatus | None:
    delay = retry_delay(attempt)
    due_at = utcnow() + timedelta(seconds=delay)
    if not get_state().store().reschedule(job_id, attempt, due_at):
        return None
    logger.info("Job %s: attempt %s failed; retrying in %.0f s.", job_id, attempt, delay)
    try:
        publish(job_id, uid, countdown=delay)
    except EnqueueError:
        logger.exception("Job %s: the retry could not be published; the sweeper will.", job_id)
    return JobStatus.WAITING


def cancel_job(job_id: int) -> JobReply:
    """Cancel job ``job_id``: a waiting job never runs, a running one is told to stop.

    The row becomes ``cancelled`` at once (status code 499); any queued message
    is revoked, and a running worker finds out at its next progress report or
    :attr:`Worker.cancelled` check, and its reply is never stored.

    :returns: the job's reply, now that it is cancelled.
    :raises LookupError: there is no such job.
    :raises JobFinished: the job has finished already.
    """
    state = get_state()
    cancelled = state.store().cancel(job_id)
    reply = state.store().fetch_reply(job_id)
    if reply is None:
        raise LookupError(f"There is no job {job_id}.")
    if not cancelled:
        raise JobFinished(f"Job {job_id} is {reply.status.value} already.")
    if not state.celery.conf.task_always_eager:
        try:
            state.celery.control.revoke(task_id(job_id, reply.uid))
        except Exception:
            # The row is cancelled, which is what stops the job; the revoke only
            # spares a worker the claim attempt.
            logger.warning("Job %s: could not revoke its Celery task.", job_id, exc_info=True)
    job_cancelled.send(current_flask_app(), job_id=job_id)
    callback_url = state.db.session.execute(
        sa.select(Job.callback_url).where(Job.id == job_id)
    ).scalar()
    state.db.session.commit()
    if callback_url:
        send_callback(job_id)
    return reply


def fetch_reply(job_id: int) -> JobReply | None:
    """Read what the status endpoint needs of job ``job_id`` in one indexed lookup."""
    return get_state().store().fetch_reply(job_id)
