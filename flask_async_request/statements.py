"""Every statement run on the jobs table, named, each database's form of a write decided here.

A write whose form differs between databases is a :class:`Statement`: it is
built once, at import, with each form (the changed row announced with NOTIFY
on PostgreSQL, handed back by RETURNING, or read after the UPDATE where there
is no RETURNING, as on MariaDB and MySQL), and the store runs the form its
database takes (``JobStore.run``). The transitions of ``lifecycle.py`` name
the statement they need; none of them looks at the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

import sqlalchemy as sa

from .models import Job, JobStatus

_Executable = TypeVar("_Executable", bound=sa.Executable)

#: The statements marked with :func:`hot`, by id (each is built once, at import).
_HOT: dict[int, sa.Executable] = {}


def hot(statement: _Executable) -> _Executable:
    """Mark ``statement``, built once at import, as a hot path's; it is returned as it is.

    Where the store can (PostgreSQL with psycopg, autocommitted), it runs a hot
    statement compiled once, on a raw cursor: SQLAlchemy's execution layer
    costs a worker more CPU than a claim or a finish itself.
    """
    _HOT[id(statement)] = statement
    return statement


def is_hot(statement: sa.Executable) -> bool:
    """Whether ``statement`` itself was marked with :func:`hot`."""
    return _HOT.get(id(statement)) is statement


#: The PostgreSQL channel on which finished and cancelled jobs are announced.
CHANNEL = "async_request_jobs"
#: Before the id in the payload of a change that is not an end (progress, a retry):
#: the long polls' listener of an older release ignores such payloads.
CHANGED_PREFIX = "c"

_ID = Job.id == sa.bindparam("job_id")

# A claim, a lease renewal and a progress report need not wait for PostgreSQL's
# WAL flush: one lost to a database crash leaves the job as it was before (the
# sweeper sees a waiting job, or a lease running out), and the finish that
# stores the reply, which does wait, flushes the WAL up to them anyway. Their
# own transaction, one statement long, turns synchronous_commit off for itself.
_NO_FLUSH_WAIT = sa.func.set_config("synchronous_commit", "off", True).is_not(None)


class Statement:
    """An UPDATE of one job's row, in the forms each database can run it.

    :param returns: the columns of the changed row it hands back, if any.
    :param announce: on PostgreSQL with psycopg, announce the changed row on
        :data:`CHANNEL` in the same statement (a ``pg_notify`` over the
        UPDATE's RETURNING), so no end can be stored without waking the long
        polls that wait for it. ``returns`` must hold ``Job.id``.
    :param announce_change: as ``announce``, for a change that is not an end
        (a progress write, a retry): the payload is the id after
        ``CHANGED_PREFIX``, which wakes event streams and not long polls.
        ``returns`` need not hold ``Job.id``.
    :param no_wait: on PostgreSQL, in a transaction of its own, do not wait
        for the WAL flush.
    :param hot: mark every form as a hot path's (see ``hot``).
    """

    def __init__(
        self,
        update: sa.Update,
        *,
        returns: Sequence[sa.orm.QueryableAttribute[Any] | sa.ColumnElement[Any]] = (),
        announce: bool = False,
        announce_change: bool = False,
        no_wait: bool = False,
        hot: bool = False,
    ) -> None:
        #: The plain UPDATE: every database runs it.
        self.update = update
        returning = update.returning(*returns)
        #: The UPDATE handing back the changed row, where the database can.
        self.returning: sa.Executable | None = returning if returns else None
        #: Where UPDATE cannot return rows: the read of the changed row after it.
        self.read: Any = sa.select(*returns).where(_ID) if returns else None
        #: The PostgreSQL form that announces the changed row on :data:`CHANNEL`.
        self.notifying: sa.Executable | None = None
        #: Its form in a transaction of its own, which does not wait for the WAL flush.
        self.notifying_no_wait: sa.Executable | None = None
        if announce:
            self.notifying = _notifying(returning)
        elif announce_change:
            with_id = (*returns, Job.id) if Job.id not in returns else returns
            self.notifying = _notifying(update.returning(*with_id), CHANGED_PREFIX)
            if no_wait:
                quick_returning = update.where(_NO_FLUSH_WAIT).returning(*with_id)
                self.notifying_no_wait = _notifying(quick_returning, CHANGED_PREFIX)
        #: The PostgreSQL form that does not wait for the WAL flush.
        self.no_wait: sa.Executable | None = None
        if no_wait:
            quick = update.where(_NO_FLUSH_WAIT)
            self.no_wait = quick.returning(*returns) if returns else quick
        if hot:
            # Only the form the store picks on PostgreSQL with psycopg is ever run
            # precompiled; marking the others costs nothing.
            forms = (self.update, self.returning, self.notifying, self.notifying_no_wait)
            for form in (*forms, self.no_wait):
                if form is not None:
                    _HOT[id(form)] = form


def _notifying(returning: sa.UpdateBase, prefix: str = "") -> sa.Executable:
    """``returning``'s row, with a ``pg_notify`` on :data:`CHANNEL` of ``prefix`` and its id."""
    done = returning.cte("done")
    payload: sa.ColumnElement[Any] = sa.cast(done.c.id, sa.Text)
    if prefix:
        payload = sa.literal(prefix, sa.Text) + payload
    return sa.select(*done.c, sa.func.pg_notify(CHANNEL, payload)).select_from(done)


# The status endpoint's read, and a new job's row ---------------------------------------


#: The columns of a :class:`JobReply`, in its order.
REPLY_COLUMNS = (
    Job.uid,
    Job.owner,
    Job.status,
    Job.status_code,
    Job.response,
    Job.progress,
    Job.progress_message,
    Job.content_type,
    Job.headers,
    Job.result_size,
    Job.result_sha256,
    Job.attempts,
    Job.result_location,
)
REPLY = sa.select(*REPLY_COLUMNS).where(_ID)
#: The reply columns of several jobs, each row led by its id: one read for the streams of all.
REPLIES_OF = sa.select(Job.id, *REPLY_COLUMNS).where(
    Job.id.in_(sa.bindparam("job_ids", expanding=True))
)


class JobReply(NamedTuple):
    """The columns the status endpoint reads."""

    uid: str
    owner: str | None
    status: JobStatus
    status_code: int | None
    response: str | None
    progress: float | None
    message: str | None
    content_type: str | None = None
    #: The kept headers, as the jobs table stores them (see ``payloads.encode_headers``).
    headers: str | None = None
    #: The size of a reply held in the result store; ``None``: the reply is ``response``.
    result_size: int | None = None
    result_sha256: str | None = None
    #: The job's attempts: the result store's chunks are those of the last.
    attempts: int = 0
    #: Where a stored reply is (see ``Job.result_location``); ``None``: the database.
    result_location: str | None = None

    @property
    def stored(self) -> bool:
        """Whether the reply is held in the result store, complete."""
        return self.status is JobStatus.PROCESSED and self.result_size is not None


class NewRow(NamedTuple):
    """Every column of a new job's row: what its INSERT stores."""

    uid: str
    worker: str
    params: dict[str, Any]
    status: JobStatus
    owner: str | None
    idempotency_scope: str | None
    callback_url: str | None
    queue: str | None
    time_limit: float | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    due_at: datetime
    #: The submitting request's trace context (see ``tracing.capture``).
    trace_context: str | None = None


INSERT = hot(
    sa.insert(Job)
    .values({name: sa.bindparam(name, type_=Job.__table__.c[name].type) for name in NewRow._fields})
    .returning(Job.id)
)

#: Waiting or processing: said by ``finished_at`` too, so that a read of such jobs is
#: a scan of the partial index over them (no index holds the status; see ``Job``).
UNFINISHED = Job.finished_at.is_(None)

#: What the event streams show of the watched jobs: one query for all the streams.
STATES_OF = sa.select(
    Job.id, Job.status, Job.progress, Job.progress_message, Job.attempts, Job.finished_at
).where(Job.id.in_(sa.bindparam("job_ids", expanding=True)))

#: Which of the waited-on jobs are still pending: one query for all the long polls.
PENDING_OF = sa.select(Job.id).where(
    Job.id.in_(sa.bindparam("job_ids", expanding=True)),
    Job.status.in_([JobStatus.WAITING.value, JobStatus.PROCESSING.value]),
)


# A running attempt ------------------------------------------------------------------------

#: The attempt still holds the job: not cancelled, finished, or taken over.
_HELD = (_ID, Job.status == JobStatus.PROCESSING, Job.attempts == sa.bindparam("attempt"))
#: The attempt lost its worker: still processing, and its lease ran out.
_LOST = (*_HELD, Job.lease_expires_at < sa.bindparam("now"))

# The params come back as text, so a row edited by hand into bad JSON fails its
# run with a readable error instead of the claim itself.
CLAIM_COLUMNS = (
    Job.id,
    Job.uid,
    Job.worker,
    sa.cast(Job.params, sa.Text).label("params"),
    Job.attempts,
    Job.callback_url,
    Job.queue,
    Job.time_limit,
    Job.due_at,
    Job.trace_context,
    Job.created_at,
)
#: The job's uid, from its message; ``None`` (the default): any uid, for a message
#: that does not carry one. A message sent before its table was recreated or its
#: ids restarted names its job's id and the uid of another: it claims nothing.
_OWN_UID = Job.uid == sa.func.coalesce(
    sa.bindparam("message_uid", None, type_=sa.String(32)), Job.uid
)
#: Public names of the job's own conditions, for the statements of ``quotas.py``.
ID = _ID
OWN_UID = _OWN_UID
CLAIM = Statement(
    sa.update(Job)
    .where(_ID, Job.status == JobStatus.WAITING, _OWN_UID)
    .values(
        status=JobStatus.PROCESSING,
        started_at=sa.bindparam("now"),
        updated_at=sa.bindparam("now"),
        lease_expires_at=sa.bindparam("lease_until"),
        attempts=Job.attempts + 1,
    ),
    returns=CLAIM_COLUMNS,
    no_wait=True,
    hot=True,
)
#: The claim made by a try whose connection was lost: its own start time tells it.
CLAIMED_AT: Any = hot(
    sa.select(*CLAIM_COLUMNS).where(
        _ID, Job.status == JobStatus.PROCESSING, Job.started_at == sa.bindparam("now"), _OWN_UID
    )
)

RENEW = Statement(
    sa.update(Job).where(*_HELD).values(lease_expires_at=sa.bindparam("lease_until")),
    no_wait=True,
    hot=True,
)
GIVE_UP = Statement(sa.update(Job).where(*_HELD).values(lease_expires_at=sa.bindparam("now")))
#: A progress write, announced to the event streams on PostgreSQL. Its rate is the
#: worker's (``running.CHECK_INTERVAL``: at most five writes a second per job, the
#: reports between them left out), so announcing every write is the bound.
PROGRESS = Statement(
    sa.update(Job)
    .where(*_HELD)
    .values(progress=sa.bindparam("progress"), progress_message=sa.bindparam("message")),
    announce_change=True,
    no_wait=True,
    hot=True,
)
HELD_NOW = hot(sa.select(Job.id).where(*_HELD))

_BACK_TO_WAITING: dict[str, Any] = {
    "status": JobStatus.WAITING,
    "due_at": sa.bindparam("due_at"),
    "updated_at": sa.bindparam("now"),
    "lease_expires_at": None,
}
RESCHEDULE = Statement(
    sa.update(Job).where(*_HELD).values(_BACK_TO_WAITING), announce_change=True, hot=True
)


# The ends of a job ---------------------------------------------------------------------------

_ENDING: dict[str, Any] = {
    "status": sa.bindparam("status"),
    "status_code": sa.bindparam("status_code"),
    "response": sa.bindparam("response"),
    "finished_at": sa.bindparam("now"),
    "updated_at": sa.bindparam("now"),
    "lease_expires_at": None,
}
#: What an ending statement hands back: see ``rows.Ended``.
ENDED_COLUMNS = (Job.id, *REPLY_COLUMNS, Job.callback_url, Job.worker)


def _ending(update: sa.Update) -> Statement:
    """An ending statement: it hands back :data:`ENDED_COLUMNS` and announces the end."""
    return Statement(update, returns=ENDED_COLUMNS, announce=True, hot=True)


FINISH = _ending(
    sa.update(Job)
    .where(*_HELD)
    .values(
        {
            **_ENDING,
            "content_type": sa.bindparam("content_type"),
            # None unless given: a reply with no kept headers, held in the row.
            "headers": sa.bindparam("headers", None, type_=sa.Text()),
            "result_size": sa.bindparam("result_size", None, type_=sa.BigInteger()),
            "result_sha256": sa.bindparam("result_sha256", None, type_=sa.String(64)),
            "result_location": sa.bindparam("result_location", None, type_=sa.String(1024)),
            "traceback": sa.bindparam("traceback", None, type_=sa.Text()),
            "progress": sa.func.coalesce(sa.bindparam("progress", type_=sa.Float()), Job.progress),
        }
    )
)
FAIL_LOST = _ending(sa.update(Job).where(*_LOST).values(_ENDING))
CANCEL = _ending(
    sa.update(Job)
    .where(_ID, Job.status.in_([JobStatus.WAITING, JobStatus.PROCESSING]))
    .values(_ENDING)
)
#: The job as the attempt's finish left it, if that finish was stored: ended by
#: this attempt with its reply (a sweeper's or a time limit's end says otherwise).
FINISHED_BY: Any = hot(
    sa.select(*ENDED_COLUMNS).where(
        _ID,
        Job.status == sa.bindparam("status"),
        Job.attempts == sa.bindparam("attempt"),
        Job.status_code == sa.bindparam("status_code"),
        Job.response == sa.bindparam("response"),
    )
)
STATUS = hot(sa.select(Job.status).where(_ID))


# Back to waiting, and the sweeper's reads ---------------------------------------------------

#: What publishing a job's message needs: see ``lifecycle.message_of``.
MESSAGE_COLUMNS = (Job.id, Job.uid, Job.queue, Job.time_limit, Job.worker)
#: A waiting job's: see ``rows.WaitingJob``.
_WAITING_COLUMNS = (*MESSAGE_COLUMNS, Job.due_at)

REQUEUE_LOST = Statement(
    sa.update(Job).where(*_LOST).values(_BACK_TO_WAITING), announce_change=True
)
RESET_FOR_RETRY = Statement(
    sa.update(Job)
    .where(_ID, Job.status == JobStatus.FAILED)
    .values(
        {
            **_BACK_TO_WAITING,
            "status_code": None,
            "response": None,
            "content_type": None,
            "headers": None,
            "result_size": None,
            "result_sha256": None,
            "result_location": None,
            "traceback": None,
            "progress": None,
            "progress_message": None,
            "attempts": 0,
            "started_at": None,
            "finished_at": None,
        }
    ),
    returns=_WAITING_COLUMNS,
)
TOUCH_WAITING = Statement(
    sa.update(Job).where(_ID, Job.status == JobStatus.WAITING).values(due_at=sa.bindparam("now"))
)

LOST_JOBS = (
    sa.select(*MESSAGE_COLUMNS, Job.attempts, Job.lease_expires_at)
    .where(
        Job.status == JobStatus.PROCESSING, Job.lease_expires_at < sa.bindparam("now"), UNFINISHED
    )
    .order_by(Job.id)
    .limit(sa.bindparam("limit"))
)
STALE_JOBS = (
    sa.select(*_WAITING_COLUMNS)
    .where(Job.status == JobStatus.WAITING, Job.due_at < sa.bindparam("cutoff"), UNFINISHED)
    .order_by(Job.id)
    .limit(sa.bindparam("limit"))
)
WAITING_JOBS = (
    sa.select(*_WAITING_COLUMNS)
    .where(Job.status == JobStatus.WAITING, Job.id > sa.bindparam("after_id"), UNFINISHED)
    .order_by(Job.id)
    .limit(sa.bindparam("limit"))
)

RECORD_CALLBACK = Statement(
    sa.update(Job).where(_ID).values(callback_status=sa.bindparam("callback_status"))
)
CALLBACK_DELIVERIES = sa.select(Job.callback_deliveries).where(_ID)
#: The callback's status and its delivery log, if the log is still the one read:
#: a delivery recorded meanwhile makes it read the log again.
RECORD_DELIVERY = Statement(
    sa.update(Job)
    .where(_ID, Job.callback_deliveries.is_not_distinct_from(sa.bindparam("before", type_=sa.Text)))
    .values(
        callback_status=sa.bindparam("callback_status"),
        callback_deliveries=sa.bindparam("deliveries", type_=sa.Text),
    )
)
