"""The worker side of a job's life: claim, run, retry, finish."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from flask import Flask

from . import lifecycle, limits, result_stores, tracing
from .broker import publish
from .exceptions import (
    EnqueueError,
    InvalidJobRow,
    InvalidReply,
    JobCancelled,
    ReceiverError,
    StorageError,
    TimeLimitExceeded,
    WorkerResolutionError,
)
from .leases import keeper
from .models import JobStatus
from .outcomes import (
    Outcome,
    decode_params,
    failure,
    out_of_reach,
    storage_message,
    traceback_of,
)
from .payloads import Payload, encode_headers, payload_of
from .rows import Claim, Ended
from .running import RunContext
from .signals import job_started
from .state import AsyncRequestState, current_flask_app, get_state
from .storage import result_name
from .store import JobStore
from .values import as_utc, utcnow
from .worker import Worker, normalize_reply, resolve_worker

logger = logging.getLogger("flask_async_request")

#: Longest wait between two attempts of a retried job.
MAX_RETRY_DELAY = 600.0

#: Longest error message stored for a worker's exception; a longer one is cut.
MAX_ERROR_LENGTH = 4096


def retry_delay(attempt: int) -> float:
    """Exponential backoff: 1, 2, 4 ... seconds, capped at :data:`MAX_RETRY_DELAY`."""
    return float(min(2 ** (attempt - 1), MAX_RETRY_DELAY))


class _Run(NamedTuple):
    """How :func:`_execute` left the job."""

    #: What to store; ``None`` when nothing is (cancelled, or a retry is due).
    outcome: Outcome | None
    #: The worker failed in a way worth another attempt.
    retry: bool = False
    #: The reply is stored in the app's session with the worker's own writes.
    in_session: bool = False


def run_job(job_id: int, uid: str | None = None) -> JobStatus | None:
    """Claim job ``job_id``, run its worker and store the reply.

    The claim is one conditional UPDATE (``waiting`` -> ``processing``), so a
    duplicate or redelivered message for a job that is already claimed, finished
    or deleted does nothing. With ``uid``, the uid its message carries, a job
    that has the id now but another uid (the table was recreated, or its ids
    restarted, since the message was sent) is not claimed either. While the
    worker runs, its lease is renewed; the reply is stored only if the job was
    neither cancelled nor taken over meanwhile.

    Whatever raises once the job is claimed, in the worker or in the library
    (a reply the database refuses, a signal receiver), the job ends ``failed``
    with an error of the library's, fenced by the attempt like any reply. Only a
    lost connection to the database leaves it ``processing``, for its lease to
    run out and the sweeper to run it again.

    :returns: the status the job was left in, or ``None`` when it was not claimed
        or its reply was dropped.
    """
    state = get_state()
    store = state.store()
    capped = limits.capped_run(state.settings, store, job_id)
    if capped is None:
        claim = lifecycle.claim(store, job_id, state.settings.lease, uid)
    else:
        owner, cap = capped
        params = lifecycle.claim_params(job_id, state.settings.lease, uid)
        taken = limits.claim_or_park(store, state.settings, params, owner, cap)
        if taken is True:
            logger.info(
                "Job %s: its owner has %s jobs running; parked until one ends.", job_id, cap
            )
            return None
        claim = taken or None
    if claim is None:
        if uid is None:
            logger.info("Job %s is not waiting (taken, finished or deleted); skipping it.", job_id)
        else:
            logger.info(
                "Job %s of uid %s is not waiting (taken, finished or deleted, or its id is"
                " another job's now); skipping it.",
                job_id,
                uid,
            )
        return None
    # The first attempt is part of the submitting request's trace; a later one
    # (a retry, a run again after a lost worker) and a message the sweeper sent
    # again start a trace linked to it.
    with tracing.job_span(
        "async_request.run",
        claim.trace_context,
        job_id,
        child=claim.first_send,
        **{"async_request.worker": claim.worker, "async_request.attempt": claim.attempt},
    ):
        ended = _run_guarded(state, store, job_id, claim)
    if ended is None:
        logger.info(
            "Job %s: attempt %s was cancelled or taken over; reply dropped.", job_id, claim.attempt
        )
        return None
    return ended if isinstance(ended, JobStatus) else ended.status


def _run_guarded(
    state: AsyncRequestState, store: JobStore, job_id: int, claim: Claim
) -> Ended | JobStatus | None:
    """:func:`_run_claimed`, the job failed by the library if it raises (see :func:`run_job`)."""
    try:
        return _run_claimed(state, store, job_id, claim)
    except Exception as e:
        if out_of_reach(e):
            raise
        logger.exception("Job %s: attempt %s failed inside the library.", job_id, claim.attempt)
        return _fail(
            store,
            job_id,
            claim.attempt,
            f"The job could not be run: the library raised {type(e).__name__}"
            " (details are in the worker's log).",
        )


def _run_claimed(
    state: AsyncRequestState, store: JobStore, job_id: int, claim: Claim
) -> Ended | JobStatus | None:
    """Run a claimed job and store its outcome; how it was left (see :func:`run_job`)."""
    app = current_flask_app()
    waited = None if claim.due_at is None else (utcnow() - as_utc(claim.due_at)).total_seconds()
    job_started.send(app, job_id=job_id, attempt=claim.attempt, worker=claim.worker, waited=waited)
    stopper = _Stopper()
    keeper.hold(
        store,
        job_id,
        claim.attempt,
        state.settings.lease,
        time_limit=claim.time_limit,
        on_deadline=functools.partial(_time_is_up, app, store, job_id, claim, stopper),
    )
    try:
        run = _execute(state, app, store, job_id, claim, stopper)
    finally:
        keeper.release(store, job_id)
    if run.retry:
        return _schedule_retry(store, job_id, claim)
    if run.outcome is None:
        return None
    ended = _store_outcome(state, store, job_id, claim.attempt, run)
    if run.outcome.result_size is not None and (
        ended is None or ended.status is not JobStatus.PROCESSED
    ):
        # Written, but not the job's result: cancelled, taken over, or refused.
        result_stores.discard_written(store, job_id, claim.attempt, run.outcome.result_location)
    return ended


def _store_outcome(
    state: AsyncRequestState, store: JobStore, job_id: int, attempt: int, run: _Run
) -> Ended | None:
    """Store the run's outcome; a failure of the library's if the database refuses it."""
    assert run.outcome is not None
    try:
        if run.in_session:
            return lifecycle.finish_in_session(
                state.db.session(), store, job_id, attempt, run.outcome
            )
        # The lease, renewed every third of its length while the job ran, has
        # two thirds of it left (unless the renewals were lost too): a reply
        # stored within half of it is not raced by the sweeper.
        retry_for = state.settings.lease / 2
        return lifecycle.finish(store, job_id, attempt, run.outcome, retry_for=retry_for)
    except Exception as e:
        if out_of_reach(e):
            raise
        logger.exception("Job %s: its outcome could not be stored; failing it.", job_id)
        if run.in_session:
            what = "The worker's reply and database writes"
        elif run.outcome.status is JobStatus.PROCESSED:
            what = "The worker's reply"
        else:
            what = "The job's error"
        return _fail(store, job_id, attempt, storage_message(what, e, plural=run.in_session))


def _fail(store: JobStore, job_id: int, attempt: int, message: str) -> Ended | None:
    """Fail the attempt's job with the library's ``message``; log it if even that is refused.

    :returns: the ended job, or ``None`` when the attempt had lost it or the
        failure could not be stored (the sweeper ends the job when its lease runs out).
    """
    try:
        return lifecycle.finish(store, job_id, attempt, failure(message))
    except Exception:
        logger.exception(
            "Job %s: its failure could not be stored either (%s); the sweeper ends the job"
            " when its lease runs out.",
            job_id,
            message,
        )
        return None


def _set_async_exception(thread_id: int, exception: type[BaseException] | None) -> None:
    """Have ``exception`` raised in thread ``thread_id`` (or a pending one dropped, for None)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), None if exception is None else ctypes.py_object(exception)
    )


class _Stopper:
    """Stops a worker's ``execute`` from another thread, while (and only while) it runs.

    The exception is raised inside ``execute`` at its next Python instruction;
    one still pending when ``execute`` has returned is dropped, so it never
    lands in the library's own code.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread = threading.get_ident()
        self._running = False
        #: Whether :meth:`stop` raised in the worker.
        self.stopped = False

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Mark the worker's ``execute`` as running in this thread."""
        with self._lock:
            self._running = True
        try:
            yield
        finally:
            with self._lock:
                self._running = False
                if self.stopped:
                    _set_async_exception(self._thread, None)

    def stop(self) -> None:
        """Raise :class:`TimeLimitExceeded` in ``execute``, if it still runs."""
        with self._lock:
            if self._running and not self.stopped:
                self.stopped = True
                _set_async_exception(self._thread, TimeLimitExceeded)


def _time_is_up(app: Flask, store: JobStore, job_id: int, claim: Claim, stopper: _Stopper) -> None:
    """At the job's time limit: fail it (long polls, signal and callback follow), then stop it."""
    limit = claim.time_limit
    message = f"The job exceeded its time limit of {limit:g} s."
    with app.app_context():
        ended = lifecycle.finish(store, job_id, claim.attempt, failure(message))
    if ended is not None:
        logger.error("Job %s: %s Stopping it.", job_id, message)
        stopper.stop()


def _execute(
    state: AsyncRequestState,
    app: Flask,
    store: JobStore,
    job_id: int,
    claim: Claim,
    stopper: _Stopper,
) -> _Run:
    """Run the worker; what it returned, or how it failed."""
    session = state.db.session
    worker = claim.worker
    retry_on: tuple[type[BaseException], ...] = ()
    try:
        worker_class = resolve_worker(worker)
        retry_on = worker_class.retry_on
        # A transactional worker's writes stay uncommitted until the reply is
        # stored; on SQLite, whose one writer that is, progress is not written.
        writes_progress = not (worker_class.transactional and store.engine.dialect.name == "sqlite")
        instance = worker_class()
        instance.job_id = job_id
        instance._run = RunContext(app, store, job_id, claim.attempt, writes=writes_progress)
        args, kwargs = decode_params(job_id, claim.params)
        with stopper.running():
            reply = instance.execute(*args, **kwargs)
        payload = payload_of(reply)
        if payload is None:
            code, body, content_type = normalize_reply(reply)
            limit = in_row_limit(state.settings.result_store_threshold, store)
            if len(body) * 4 <= limit or len(body.encode()) <= limit:
                outcome = Outcome(JobStatus.PROCESSED, code, body, content_type)
                return _Run(outcome, in_session=worker_class.transactional)
            payload = Payload(code, content_type, [], (), text=body)
        outcome = _store_payload(
            state, store, session, job_id, claim.attempt, payload, stopper, worker_class
        )
        return _Run(outcome, in_session=worker_class.transactional)
    except JobCancelled as e:
        session.rollback()
        if lifecycle.held(store, job_id, claim.attempt):
            # Raised by the worker's own code, its job not cancelled: ended now
            # as any error is, not left processing until its lease runs out.
            logger.error("Job %s: worker %s raised JobCancelled; its job was not.", job_id, worker)
            return _Run(failure(_cut(str(e) or type(e).__name__)))
        logger.info("Job %s: the worker stopped, its job cancelled.", job_id)
        return _Run(None)
    except TimeLimitExceeded:
        if not stopper.stopped:
            raise
        # The job has failed already, at its deadline.
        session.rollback()
        return _Run(None)
    except (WorkerResolutionError, InvalidJobRow) as e:
        session.rollback()
        logger.error("Job %s: %s", job_id, e)
        cause = e.__cause__
        if cause is not None and _database_error(store, cause):
            return _Run(
                failure(
                    f"Worker {worker} cannot be loaded: importing it raised"
                    f" {type(cause).__name__} (a database error; details are in the worker's log)."
                )
            )
        return _Run(failure(_cut(str(e))))
    except InvalidReply as e:
        session.rollback()
        logger.error("Job %s: worker %s %s", job_id, worker, e)
        return _Run(failure(f"Worker {worker} {e}"))
    except Exception as e:
        # The worker may have left its own work half-done in the session.
        session.rollback()
        logger.exception("Job %s: worker %s raised %s", job_id, worker, type(e).__name__)
        if (
            claim.attempt <= state.settings.retry
            and isinstance(e, retry_on)
            and not isinstance(e, (StorageError, ReceiverError))
        ):
            return _Run(None, retry=True)
        if _database_error(store, e):
            # Its text holds the SQL and the parameters: those are for the log.
            return _Run(
                failure(
                    f"The worker raised {type(e).__name__} (a database error; details are in"
                    " the worker's log)."
                )
            )
        return _Run(failure(_cut(str(e) or type(e).__name__), traceback_of(e)))


def in_row_limit(threshold: int, store: JobStore) -> int:
    """The most bytes of a text reply kept in the jobs table; a longer one goes to the result store.

    ``ASYNC_REQUEST_RESULT_STORE_THRESHOLD``, or less where the database's text
    column holds less (64 KiB on MariaDB and MySQL): such a reply is stored, not
    refused by the database and its job failed.
    """
    capacity = store.text_capacity
    return threshold if capacity is None else min(threshold, capacity)


def _store_payload(
    state: AsyncRequestState,
    store: JobStore,
    session: Any,
    job_id: int,
    attempt: int,
    payload: Payload,
    stopper: _Stopper,
    worker_class: type[Worker],
) -> Outcome:
    """The outcome of a reply read a chunk at a time: in the row if short text, else stored.

    A text reply up to ``ASYNC_REQUEST_RESULT_STORE_THRESHOLD`` (with headers)
    stays in the row; any other goes to the result store, where it becomes
    the job's result with the job's end. If reading or writing it fails, the
    chunks written so far are deleted (or left to the purge).
    """
    headers = encode_headers(payload.headers)
    text = payload.text
    try:
        if text is not None and len(text.encode()) <= in_row_limit(
            state.settings.result_store_threshold, store
        ):
            code, content_type = payload.status_code, payload.content_type
            return Outcome(JobStatus.PROCESSED, code, text, content_type, headers)
        chunks = payload.chunks if text is None else (text.encode(),)
        result_store, in_session = result_stores.writer(store, session, worker_class.transactional)
        name = result_name(job_id, attempt)
        try:
            with stopper.running():
                # Reading the chunks runs the worker's code: a generator, a stream.
                written = result_store.write(
                    name, chunks, content_type=payload.content_type, headers=payload.headers
                )
        except BaseException:
            if not in_session:
                result_stores.discard(store, job_id, attempt)
            raise
    finally:
        payload.finish()
    return Outcome(
        JobStatus.PROCESSED,
        payload.status_code,
        "",
        payload.content_type,
        headers,
        written.size,
        written.sha256,
        written.location,
    )


def _database_error(store: JobStore, error: BaseException) -> bool:
    """Whether ``error`` is SQLAlchemy's or the database driver's, whose text holds SQL."""
    return isinstance(error, (sa.exc.SQLAlchemyError, store.engine.dialect.loaded_dbapi.Error))


def _cut(message: str) -> str:
    """A worker's error message, cut to :data:`MAX_ERROR_LENGTH` characters."""
    if len(message) <= MAX_ERROR_LENGTH:
        return message
    return message[: MAX_ERROR_LENGTH - 3] + "..."


def _schedule_retry(store: JobStore, job_id: int, claim: Claim) -> JobStatus | None:
    delay = retry_delay(claim.attempt)
    due_at = utcnow() + timedelta(seconds=delay)
    if not lifecycle.reschedule(store, job_id, claim.attempt, due_at):
        return None
    logger.info("Job %s: attempt %s failed; retrying in %.0f s.", job_id, claim.attempt, delay)
    try:
        publish(lifecycle.message_of(claim), countdown=delay)
    except EnqueueError:
        logger.exception("Job %s: the retry could not be published; the sweeper will.", job_id)
    return JobStatus.WAITING
