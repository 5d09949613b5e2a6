"""The hot paths' SQL: one statement per step, on pooled autocommit connections.

Polls, claims, replies and lease renewals are single statements run many
times per job. Through the ORM session each would open a transaction and end
it (two more round trips) and pay for building the statement again; here each
is compiled once and, on a network database, runs on a connection in
autocommit mode from a small pool of its own, so no BEGIN, COMMIT or ROLLBACK
is ever sent for them. SQLite, where there is no network to save, uses the
app's engine.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import make_transient_to_detached

from .models import Job, JobStatus, utcnow

if TYPE_CHECKING:
    from flask import Flask
    from sqlalchemy.engine import Engine

_REPLY = sa.select(
    Job.uid,
    Job.owner,
    Job.status,
    Job.status_code,
    Job.response,
    Job.progress,
    Job.progress_message,
    Job.content_type,
).where(Job.id == sa.bindparam("job_id"))

_CLAIM = (
    sa.update(Job)
    .where(Job.id == sa.bindparam("job_id"), Job.status == JobStatus.WAITING)
    .values(
        status=JobStatus.PROCESSING,
        started_at=sa.bindparam("now"),
        updated_at=sa.bindparam("now"),
        lease_expires_at=sa.bindparam("lease_until"),
        attempts=Job.attempts + 1,
    )
)
_CLAIMED = sa.select(Job.uid, Job.worker, Job.params, Job.attempts, Job.callback_url).where(
    Job.id == sa.bindparam("job_id")
)

_HELD = (
    Job.id == sa.bindparam("job_id"),
    Job.status == JobStatus.PROCESSING,
    Job.attempts == sa.bindparam("attempt"),
)
_FINISH = (
    sa.update(Job)
    .where(*_HELD)
    .values(
        status=sa.bindparam("status"),
        status_code=sa.bindparam("status_code"),
        response=sa.bindparam("response"),
        content_type=sa.bindparam("content_type"),
        finished_at=sa.bindparam("now"),
        updated_at=sa.bindparam("now"),
        lease_expires_at=None,
        progress=sa.func.coalesce(sa.bindparam("progress", type_=sa.Float()), Job.progress),
    )
)
_RESCHEDULE = (
    sa.update(Job)
    .where(*_HELD)
    .values(
        status=JobStatus.WAITING,
        due_at=sa.bindparam("due_at"),
        updated_at=sa.bindparam("now"),
        lease_expires_at=None,
    )
)
_RENEW = sa.update(Job).where(*_HELD).values(lease_expires_at=sa.bindparam("lease_until"))
_PROGRESS = (
    sa.update(Job)
    .where(*_HELD)
    .values(progress=sa.bindparam("progress"), progress_message=sa.bindparam("message"))
)
_HELD_NOW = sa.select(Job.id).where(*_HELD)

#: What a cancelled job's reply says (499: the client closed the request).
CANCELLED_STATUS_CODE = 499
CANCELLED_BODY = '{"error": "Job cancelled"}'
_CANCEL = (
    sa.update(Job)
    .where(
        Job.id == sa.bindparam("job_id"),
        Job.status.in_([JobStatus.WAITING, JobStatus.PROCESSING]),
    )
    .values(
        status=JobStatus.CANCELLED,
        status_code=CANCELLED_STATUS_CODE,
        response=CANCELLED_BODY,
        finished_at=sa.bindparam("now"),
        updated_at=sa.bindparam("now"),
        lease_expires_at=None,
    )
)


#: The PostgreSQL channel on which finished and cancelled jobs are announced.
CHANNEL = "async_request_jobs"


def _notifying(update: sa.Update) -> sa.Select[tuple[Any]]:
    """``update`` that also announces the changed job on :data:`CHANNEL`, in one statement."""
    done = update.returning(Job.id).cte("done")
    return sa.select(sa.func.pg_notify(CHANNEL, sa.cast(done.c.id, sa.Text))).select_from(done)


#: Backoff of a long poll where no notification exists (seconds).
_POLL_FIRST, _POLL_MAX = 0.05, 0.5


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


class Claim(NamedTuple):
    """What a worker needs of the job it just claimed."""

    uid: str
    worker: str
    params: dict[str, Any]
    attempt: int
    callback_url: str | None


class JobStore:
    """Runs the hot paths' statements for one app in one process."""

    def __init__(self, engine: Engine, *, autocommit: bool = False) -> None:
        self.engine = engine
        #: Whether statements commit on their own (a network database's own pool).
        self.autocommit = autocommit
        self.pid = os.getpid()
        self._claim = _CLAIM.returning(
            Job.uid, Job.worker, Job.params, Job.attempts, Job.callback_url
        )
        self._returning = bool(engine.dialect.update_returning)
        # The poll runs its compiled SQL on a raw DBAPI cursor: SQLAlchemy's
        # execution layer costs more than the query itself there.
        self._reply_sql = _REPLY.compile(dialect=engine.dialect).string
        self._positional = bool(engine.dialect.positional)
        self._dbapi_error: type[Exception] = engine.dialect.loaded_dbapi.Error
        # On PostgreSQL with psycopg 3, finishing a job notifies long polls, which
        # LISTEN instead of polling.
        self._listen = engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
        self._finish = _notifying(_FINISH) if self._listen else _FINISH
        self._cancel = _notifying(_CANCEL) if self._listen else _CANCEL

    @classmethod
    def for_app(cls, app: Flask, engine: Engine) -> JobStore:
        """A store for ``app``'s jobs table, reached through ``engine`` (its default engine)."""
        if engine.dialect.name == "sqlite":
            # No round trips to save, and a second engine would not see an
            # in-memory database.
            return cls(engine)
        options: dict[str, Any] = dict(app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {})
        options.pop("isolation_level", None)
        autocommit = sa.create_engine(
            engine.url, isolation_level="AUTOCOMMIT", pool_reset_on_return=None, **options
        )
        return cls(autocommit, autocommit=True)

    def fetch_reply(self, job_id: int) -> JobReply | None:
        """The reply columns of job ``job_id``, or ``None`` when there is no such row.

        :raises sqlalchemy.exc.DBAPIError: the database could not be reached or queried.
        """
        params: Any = (job_id,) if self._positional else {"job_id": job_id}
        try:
            connection = self.engine.raw_connection()
        except self._dbapi_error as e:
            # The pool hands out unwrapped driver errors.
            raise sa.exc.DBAPIError.instance(None, None, e, self._dbapi_error) from e
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(self._reply_sql, params)
                row = cursor.fetchone()
            finally:
                cursor.close()
        except self._dbapi_error as e:
            connection.invalidate(e)
            raise sa.exc.DBAPIError.instance(
                self._reply_sql, params, e, self._dbapi_error, connection_invalidated=True
            ) from e
        finally:
            connection.close()
        if row is None:
            return None
        uid, owner, status, *rest = row
        return JobReply(uid, owner, JobStatus(status), *rest)

    def insert(self, job: Job) -> None:
        """Store a new job in one autocommitted statement, and make ``job`` its persistent row.

        The defaults (uid, times) are filled in here, so the instance holds every
        column; it is then attached as a loaded row, with no query.
        """
        now = utcnow()
        values = {
            "uid": job.uid or uuid.uuid4().hex,
            "worker": job.worker,
            "params": job.params,
            "status": job.status or JobStatus.WAITING,
            "owner": job.owner,
            "idempotency_scope": job.idempotency_scope,
            "callback_url": job.callback_url,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
            "due_at": now,
        }
        with self.engine.begin() as conn:
            key = conn.execute(sa.insert(Job), values).inserted_primary_key
        assert key is not None  # An INSERT of one row always has its key.
        (job_id,) = key
        for key, value in values.items():
            setattr(job, key, value)
        job.id = job_id
        make_transient_to_detached(job)

    def claim(self, job_id: int, lease: timedelta) -> Claim | None:
        """Take job ``job_id`` if it is waiting: ``processing``, leased, attempt counted.

        One conditional UPDATE, so of several workers given the same job, one wins.
        """
        now = utcnow()
        params = {"job_id": job_id, "now": now, "lease_until": now + lease}
        with self.engine.begin() as conn:
            if self._returning:
                row = conn.execute(self._claim, params).first()
            else:
                claimed = conn.execute(_CLAIM, params).rowcount == 1
                row = conn.execute(_CLAIMED, params).first() if claimed else None
        return None if row is None else Claim(*row)

    def finish(
        self,
        job_id: int,
        attempt: int,
        status: JobStatus,
        status_code: int,
        response: str,
        content_type: str | None = None,
    ) -> bool:
        """Store the reply, if ``attempt`` still holds the job; tell whether it did."""
        params = {
            "job_id": job_id,
            "attempt": attempt,
            "status": status,
            "status_code": status_code,
            "response": response,
            "content_type": content_type,
            "now": utcnow(),
            "progress": 1.0 if status is JobStatus.PROCESSED else None,
        }
        return self._update(self._finish, params)

    def reschedule(self, job_id: int, attempt: int, due_at: datetime) -> bool:
        """Put the job back to ``waiting`` until ``due_at``, if ``attempt`` still holds it."""
        params = {"job_id": job_id, "attempt": attempt, "due_at": due_at, "now": utcnow()}
        return self._update(_RESCHEDULE, params)

    def renew(self, job_id: int, attempt: int, lease: timedelta) -> bool:
        """Extend the job's lease, if ``attempt`` still holds it."""
        params = {"job_id": job_id, "attempt": attempt, "lease_until": utcnow() + lease}
        return self._update(_RENEW, params)

    def set_progress(self, job_id: int, attempt: int, progress: float, message: str | None) -> bool:
        """Store progress, if ``attempt`` still holds the job; tell whether it does."""
        params = {"job_id": job_id, "attempt": attempt, "progress": progress, "message": message}
        return self._update(_PROGRESS, params)

    def held(self, job_id: int, attempt: int) -> bool:
        """Whether ``attempt`` still holds the job (not cancelled, not taken over)."""
        with self.engine.begin() as conn:
            params = {"job_id": job_id, "attempt": attempt}
            return conn.execute(_HELD_NOW, params).first() is not None

    def cancel(self, job_id: int) -> bool:
        """Cancel the job if it is waiting or processing; tell whether it was."""
        return self._update(self._cancel, {"job_id": job_id, "now": utcnow()})

    def _update(self, statement: sa.Update | sa.Select[Any], params: dict[str, Any]) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(statement, params)
            if isinstance(statement, sa.Select):  # _notifying: one row per changed job
                return result.first() is not None
            return result.rowcount == 1

    def wait_until_finished(self, job_id: int, timeout: float) -> JobReply | None:
        """Wait up to ``timeout`` seconds for the job to finish; return its reply then.

        On PostgreSQL (psycopg 3) the wait LISTENs for the worker's notification,
        so it costs no queries while it waits; elsewhere it polls with a backoff
        from 50 ms to 500 ms.
        """
        deadline = time.monotonic() + timeout
        if self._listen:
            self._wait_listening(job_id, deadline)
        else:
            delay = _POLL_FIRST
            while (reply := self.fetch_reply(job_id)) is not None and not reply.status.finished:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return reply
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, _POLL_MAX)
            return reply
        return self.fetch_reply(job_id)

    def _wait_listening(self, job_id: int, deadline: float) -> None:
        connection = self.engine.raw_connection()
        try:
            pg = connection.driver_connection
            assert pg is not None  # A checked-out connection has its driver connection.
            pg.execute(f"LISTEN {CHANNEL}")
            try:
                # Checked after LISTEN, so a job finishing in between is not missed.
                reply = self.fetch_reply(job_id)
                if reply is None or reply.status.finished:
                    return
                wanted = str(job_id)
                while (remaining := deadline - time.monotonic()) > 0:
                    if any(n.payload == wanted for n in pg.notifies(timeout=remaining)):
                        return
            finally:
                pg.execute(f"UNLISTEN {CHANNEL}")
        except self._dbapi_error as e:
            connection.invalidate(e)
            raise sa.exc.DBAPIError.instance(None, None, e, self._dbapi_error) from e
        finally:
            connection.close()

    def dispose(self) -> None:
        """Close the store's own pooled connections."""
        self.engine.dispose()
