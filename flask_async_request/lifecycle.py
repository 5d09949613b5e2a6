"""Every transition of a job's row, and what each end state triggers.

A job lives through these statuses (``flask async-request`` and the sweeper
call the same functions as the web and worker processes)::

    create ──> waiting ──claim──> processing ──finish──> processed | failed
                 ^  ^                  │ │ │
                 │  └──reschedule──────┘ │ └──fail_lost (lease expired, no retry left)──> failed
                 │  └──requeue_lost──────┘
                 └──reset_for_retry── failed
    waiting | processing ──cancel──> cancelled
    processed | failed | cancelled ──purge──> (deleted, see ``retention.py``)

Each transition is one conditional statement, named in ``statements.py`` and
run by the store in its database's form, so two processes racing for the
same job (two workers, a worker and the sweeper, a worker and a cancel) never
both win. Writes made on behalf of a running attempt are fenced by its attempt
number: a worker whose job was cancelled or taken over changes nothing.

Every end state, whichever path reaches it, goes through :func:`announce`:
long polls are woken (on PostgreSQL the NOTIFY is part of the ending
statement itself), the signal is sent and the completion callback queued.

What the transitions hand back (a claim, an end) and the sweeper's reads of
lost and waiting jobs are in ``rows.py``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from . import deliveries, result_stores
from . import statements as sql
from .broker import Message, queue_callback
from .deliveries import Delivery
from .exceptions import JobFinished, JobNotFailed, JobNotFound
from .models import Job, JobStatus
from .outcomes import Outcome, error_body
from .outcomes import error_message as error_message
from .rows import Claim, Ended, LostJob, Sendable, WaitingJob
from .signals import callback_delivered, job_cancelled, job_failed, job_finished
from .state import current_flask_app
from .statements import NewRow
from .store import JobStore
from .values import lone_surrogate, new_uid, utcnow

logger = logging.getLogger("flask_async_request")

#: What a cancelled job's reply says (499: the client closed the request).
CANCELLED_STATUS_CODE = 499
CANCELLED_BODY = error_body("Job cancelled")

#: Seconds a claim whose connection was lost is tried again on fresh connections,
#: before its message is left to be delivered again.
CLAIM_RETRY_FOR = 2.0


def announce(ended: Ended) -> None:
    """Tell the app and the job's callback that the job ended; once per end state.

    Long polls were woken by the ending statement itself. The signal
    (``job_finished``, ``job_failed`` or ``job_cancelled``) goes out in this
    process, and the callback, if the job has one, is queued for delivery.
    The end is stored already: a receiver of the signal that raises is logged,
    and neither undoes it nor keeps the callback from being queued.
    """
    app = current_flask_app()
    try:
        if ended.status is JobStatus.PROCESSED:
            job_finished.send(
                app, job_id=ended.id, status_code=ended.reply.status_code, worker=ended.worker
            )
        elif ended.status is JobStatus.FAILED:
            job_failed.send(
                app, job_id=ended.id, error=error_message(ended.reply.response), worker=ended.worker
            )
        else:
            job_cancelled.send(app, job_id=ended.id, worker=ended.worker)
    except Exception:
        logger.exception("Job %s: a receiver of its %s signal raised.", ended.id, ended.status)
    if ended.callback_url:
        queue_callback(ended.id)


def _finish_params(job_id: int, attempt: int, outcome: Outcome) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "attempt": attempt,
        "status": outcome.status,
        "status_code": outcome.status_code,
        "response": outcome.body,
        "content_type": outcome.content_type,
        "headers": outcome.headers,
        "result_size": outcome.result_size,
        "result_sha256": outcome.result_sha256,
        "result_location": outcome.result_location,
        "traceback": outcome.traceback,
        "now": utcnow(),
        "progress": 1.0 if outcome.status is JobStatus.PROCESSED else None,
    }


def _status_of(store: JobStore, job_id: int) -> JobStatus:
    """The job's status, for the error of a transition that did not apply.

    :raises JobNotFound: there is no such job.
    """
    row = store.first(sql.STATUS, {"job_id": job_id})
    if row is None:
        raise JobNotFound(job_id)
    return JobStatus(row[0])


# Creation ----------------------------------------------------------------------------


def new_job(
    worker: str,
    params: dict[str, Any],
    *,
    owner: str | None = None,
    idempotency_scope: str | None = None,
    callback_url: str | None = None,
    queue: str | None = None,
    time_limit: float | None = None,
    trace_context: str | None = None,
) -> Job:
    """A ``waiting`` job with every column of its row set, not stored yet.

    Add it to a session, or :func:`insert` it.
    """
    return Job(
        **new_row(
            worker,
            params,
            owner=owner,
            idempotency_scope=idempotency_scope,
            callback_url=callback_url,
            queue=queue,
            time_limit=time_limit,
            trace_context=trace_context,
        )._asdict()
    )


def new_row(
    worker: str,
    params: dict[str, Any],
    *,
    owner: str | None = None,
    idempotency_scope: str | None = None,
    callback_url: str | None = None,
    queue: str | None = None,
    time_limit: float | None = None,
    trace_context: str | None = None,
) -> NewRow:
    """Every column of a ``waiting`` job's row, for :func:`insert_row` (no ORM object)."""
    now = utcnow()
    return NewRow(
        uid=new_uid(),
        worker=worker,
        params=params,
        status=JobStatus.WAITING,
        owner=owner,
        idempotency_scope=idempotency_scope,
        callback_url=callback_url,
        queue=queue,
        time_limit=time_limit,
        attempts=0,
        created_at=now,
        updated_at=now,
        due_at=now,
        trace_context=trace_context,
    )


def insert(store: JobStore, job: Job) -> None:
    """Store a :func:`new_job` in one autocommitted INSERT, filling in its id.

    ``job`` is left transient: the caller decides whether a session should know it.
    """
    job.id = insert_row(store, NewRow(**{name: getattr(job, name) for name in NewRow._fields}))


def insert_row(store: JobStore, row: NewRow) -> int:
    """Store a :func:`new_row` in one autocommitted INSERT; the new job's id."""
    return store.insert(row)


def message_of(job: Sendable) -> Message:
    """What publishing ``job``'s message needs: every message of a job is made here."""
    return Message(job.id, job.uid, job.queue, job.time_limit, job.worker)


def message_of_row(job_id: int, row: NewRow) -> Message:
    """:func:`message_of` the job stored as ``row`` by :func:`insert_row`, with id ``job_id``."""
    return Message(job_id, row.uid, row.queue, row.time_limit, row.worker)


# A running attempt ---------------------------------------------------------------------


def claim_params(job_id: int, lease: timedelta, uid: str | None = None) -> dict[str, Any]:
    """The parameters of a claim of job ``job_id`` made now (see :func:`claim`)."""
    now = utcnow()
    return {"job_id": job_id, "message_uid": uid, "now": now, "lease_until": now + lease}


def claim(store: JobStore, job_id: int, lease: timedelta, uid: str | None = None) -> Claim | None:
    """Take job ``job_id`` if it is waiting: ``processing``, leased, attempt counted.

    One conditional UPDATE, so of several workers given the same job, one wins;
    a duplicate message, or one for a finished or deleted job, claims nothing.
    With ``uid``, the uid its message carries, only the job of that uid is
    taken: a message sent before the jobs table was recreated, or its ids
    restarted, does not claim the new job that has its id now.

    A claim whose connection is lost is tried again on a fresh one for up to
    :data:`CLAIM_RETRY_FOR` seconds; a lost try that had claimed the job is
    found by its start time, so the job is neither claimed twice nor left
    ``processing`` with no one running it. (Where a timestamp keeps whole
    seconds, MariaDB's and MySQL's ``DATETIME``, it is not found: that job
    waits for its lease to run out and the sweeper, as one whose worker was lost.)

    :raises DatabaseUnavailable: the database was out of reach all that time.
    """
    params = claim_params(job_id, lease, uid)

    def claim_once(lost_before: bool) -> Any:
        row = store.run(sql.CLAIM, params)
        if row is None and lost_before:
            row = store.first(sql.CLAIMED_AT, params)
        return row

    row = store.again_if_lost(claim_once, within=CLAIM_RETRY_FOR, what=f"Claiming job {job_id}")
    return None if row is None else Claim(*row)


def renew(store: JobStore, job_id: int, attempt: int, lease: timedelta) -> bool:
    """Extend the job's lease, if ``attempt`` still holds it."""
    params = {"job_id": job_id, "attempt": attempt, "lease_until": utcnow() + lease}
    # A lost connection is tried once more at once, on a fresh one.
    renewed = store.again_if_lost(
        lambda _: store.count(sql.RENEW, params), within=0, what=f"Renewing job {job_id}'s lease"
    )
    return renewed == 1


def give_up(store: JobStore, job_id: int, attempt: int) -> bool:
    """End the attempt's lease now, if it still holds the job: its process stops running it.

    The job is then lost, as if its worker had died, and the next sweep runs it
    again or fails it by the retry rules.
    """
    return store.count(sql.GIVE_UP, {"job_id": job_id, "attempt": attempt, "now": utcnow()}) == 1


def set_progress(
    store: JobStore, job_id: int, attempt: int, progress: float, message: str | None
) -> bool:
    """Store progress, if ``attempt`` still holds the job; tell whether it does."""
    params = {"job_id": job_id, "attempt": attempt, "progress": progress, "message": message}
    stored = store.again_if_lost(
        lambda _: store.count(sql.PROGRESS, params),
        within=0,
        what=f"Storing job {job_id}'s progress",
    )
    return stored == 1


def held(store: JobStore, job_id: int, attempt: int) -> bool:
    """Whether ``attempt`` still holds the job (not cancelled, not taken over)."""
    params = {"job_id": job_id, "attempt": attempt}
    row = store.again_if_lost(
        lambda _: store.first(sql.HELD_NOW, params), within=0, what=f"Reading job {job_id}"
    )
    return row is not None


def reschedule(store: JobStore, job_id: int, attempt: int, due_at: datetime) -> bool:
    """Put the job back to ``waiting`` until ``due_at``, if ``attempt`` still holds it."""
    params = {"job_id": job_id, "attempt": attempt, "due_at": due_at, "now": utcnow()}
    return store.count(sql.RESCHEDULE, params) == 1


def finish(
    store: JobStore,
    job_id: int,
    attempt: int,
    outcome: Outcome,
    *,
    retry_for: timedelta = timedelta(0),
) -> Ended | None:
    """Store the attempt's reply and announce the end, if ``attempt`` still holds the job.

    A finish whose connection is lost is tried again on a fresh one (once at
    once, then for up to ``retry_for``): being fenced by the attempt, it cannot
    overwrite another's end. A lost try that had stored the reply is found by
    the attempt and the reply it left, and the job counts as ended, not as
    taken over.

    :returns: the ended job, or ``None`` when the attempt had lost the job
        (cancelled or taken over), in which case nothing is written.
    :raises DatabaseUnavailable: the database was out of reach all that time.
    """
    params = _finish_params(job_id, attempt, outcome)

    def finish_once(lost_before: bool) -> Ended | None:
        row = store.run(sql.FINISH, params)
        if row is None and lost_before:
            row = store.first(sql.FINISHED_BY, params)
        return None if row is None else Ended.from_row(row)

    ended = store.again_if_lost(
        finish_once, within=retry_for.total_seconds(), what=f"Storing job {job_id}'s reply"
    )
    if ended is not None:
        announce(ended)
    return ended


def finish_in_session(
    session: Session, store: JobStore, job_id: int, attempt: int, outcome: Outcome
) -> Ended | None:
    """Store the reply in ``session``'s transaction with the worker's own writes, and commit.

    The attempt's fence is part of that transaction: an attempt that lost its
    job rolls back everything the worker wrote, so a job run again by the
    sweeper never applies its database writes twice.

    :returns: the ended job, or ``None`` when the attempt had lost it.
    """
    try:
        row = store.run_in(session, sql.FINISH, _finish_params(job_id, attempt, outcome))
        if row is None:
            session.rollback()
            return None
        session.commit()
    except BaseException:
        session.rollback()
        raise
    ended = Ended.from_row(row)
    announce(ended)
    return ended


# Cancel and retry --------------------------------------------------------------------------


def cancel(store: JobStore, job_id: int) -> Ended:
    """Cancel job ``job_id`` (``waiting`` or ``processing``) in one statement, and announce it.

    :returns: the cancelled job, whose reply is the answer to the cancel.
    :raises JobNotFound: there is no such job.
    :raises JobFinished: the job has finished already.
    """
    params = {
        "job_id": job_id,
        "status": JobStatus.CANCELLED,
        "status_code": CANCELLED_STATUS_CODE,
        "response": CANCELLED_BODY,
        "now": utcnow(),
    }
    row = store.run(sql.CANCEL, params)
    if row is None:
        status = _status_of(store, job_id)
        raise JobFinished(f"Job {job_id} is {status.value} already.", job_id, status.value)
    ended = Ended.from_row(row)
    # What its worker wrote of a result so far; what it writes after, the purge deletes.
    result_stores.discard(store, job_id, ended.reply.attempts)
    announce(ended)
    return ended


def reset_for_retry(store: JobStore, job_id: int) -> Message:
    """Put a ``failed`` job back to ``waiting`` with its reply, progress and attempts cleared.

    :returns: what publishing it needs.
    :raises JobNotFound: there is no such job.
    :raises JobNotFailed: the job is not failed.
    """
    now = utcnow()
    params = {"job_id": job_id, "now": now, "due_at": now}
    row = store.run(sql.RESET_FOR_RETRY, params)
    if row is None:
        status = _status_of(store, job_id)
        raise JobNotFailed(
            f"Job {job_id} is {status.value}; only failed jobs can be retried.",
            job_id,
            status.value,
        )
    result_stores.discard(store, job_id, None)
    return message_of(WaitingJob(*row))


# The sweeper's transitions -------------------------------------------------------------------


def requeue_lost(store: JobStore, job: LostJob, now: datetime) -> bool:
    """Put a lost job back to ``waiting``, if its attempt is still the lost one."""
    params = {"job_id": job.id, "attempt": job.attempt, "now": now, "due_at": now}
    if store.count(sql.REQUEUE_LOST, params) != 1:
        return False
    result_stores.discard(store, job.id, job.attempt)
    return True


def fail_lost(store: JobStore, job: LostJob, now: datetime, message: str) -> Ended | None:
    """Fail a lost job with ``message`` and announce it, if its attempt is still the lost one."""
    params = {
        "job_id": job.id,
        "attempt": job.attempt,
        "now": now,
        "status": JobStatus.FAILED,
        "status_code": 500,
        "response": error_body(message),
    }
    row = store.run(sql.FAIL_LOST, params)
    if row is None:
        return None
    result_stores.discard(store, job.id, job.attempt)
    ended = Ended.from_row(row)
    announce(ended)
    return ended


def touch_waiting(store: JobStore, job_id: int) -> bool:
    """Restart a waiting job's clock (its message was just sent again)."""
    return store.count(sql.TOUCH_WAITING, {"job_id": job_id, "now": utcnow()}) == 1


# Callbacks -----------------------------------------------------------------------------------

#: Longest callback status stored (the column's length).
_CALLBACK_STATUS_LENGTH = 255


#: Times a delivery's entry is written again when another delivery was recorded meanwhile.
_RECORD_TRIES = 5


def record_callback(
    store: JobStore, job_id: int, status: str, delivery: Delivery | None = None
) -> None:
    """Note how the job's callback delivery went, where ``flask async-request show`` shows it.

    ``status`` may quote an error about the url: what no database stores in it
    (a NUL character, a lone surrogate) is replaced, and a long one is cut.
    ``delivery``, if given, is added to the job's delivery log, whose oldest
    entries go past :data:`~.deliveries.MAX_DELIVERIES`; the log is written only
    if no other delivery changed it since it was read, else read again.
    """
    status = status.replace("\x00", "\N{REPLACEMENT CHARACTER}")
    if lone_surrogate(status):
        status = status.encode("utf-8", "replace").decode("utf-8")
    if len(status) > _CALLBACK_STATUS_LENGTH:
        status = status[: _CALLBACK_STATUS_LENGTH - 3] + "..."
    if delivery is None:
        store.count(sql.RECORD_CALLBACK, {"job_id": job_id, "callback_status": status})
        return
    for _ in range(_RECORD_TRIES):
        row = store.first(sql.CALLBACK_DELIVERIES, {"job_id": job_id})
        if row is None:
            return
        params = {
            "job_id": job_id,
            "callback_status": status,
            "before": row[0],
            "deliveries": deliveries.appended(row[0], delivery),
        }
        if store.count(sql.RECORD_DELIVERY, params):
            break
    else:
        logger.warning("Job %s: its callback delivery could not be added to its log.", job_id)
    callback_delivered.send(
        current_flask_app(),
        job_id=job_id,
        outcome=delivery.outcome,
        status_code=delivery.status_code,
        duration=delivery.duration,
        redelivery=delivery.redelivery,
    )
