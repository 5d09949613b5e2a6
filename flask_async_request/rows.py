"""The rows a job's transitions hand back, and the sweeper's reads of the jobs that need it.

A claim (:class:`Claim`) and an end (:class:`Ended`) are what the transitions of
:mod:`.lifecycle` return; a lost job (:class:`LostJob`) and a waiting one
(:class:`WaitingJob`) are what the sweeper and the embedded worker read before
they requeue, fail or send a job again through those transitions. Nothing here
changes a row.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from . import statements as sql
from .models import JobStatus
from .statements import ENDED_COLUMNS, JobReply
from .store import JobStore


class Claim(NamedTuple):
    """What a worker needs of the job it just claimed."""

    id: int
    uid: str
    worker: str
    #: The stored arguments, as JSON text: see :func:`.outcomes.decode_params`.
    params: str
    attempt: int
    callback_url: str | None
    queue: str | None = None
    time_limit: float | None = None
    #: When the job was due to run: its creation, or the end of a retry's backoff.
    due_at: datetime | None = None
    #: The submitting request's trace context (see ``tracing.capture``).
    trace_context: str | None = None
    #: When the job was created: a ``due_at`` that differs is a retry's backoff
    #: or a message the sweeper sent again.
    created_at: datetime | None = None

    @property
    def first_send(self) -> bool:
        """Whether this is the first attempt, run from the message sent as the job was created."""
        return self.attempt == 1 and (self.due_at is None or self.due_at == self.created_at)


class Ended(NamedTuple):
    """A job that has just reached an end state, as the ending statement left it."""

    id: int
    #: What the status endpoint answers for the job now.
    reply: JobReply
    callback_url: str | None
    #: The job's worker path.
    worker: str

    @property
    def status(self) -> JobStatus:
        """The end state reached."""
        return self.reply.status

    @property
    def uid(self) -> str:
        """The job's uid."""
        return self.reply.uid

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Ended:
        """Read a row of :data:`.statements.ENDED_COLUMNS`."""
        job_id, *reply, callback_url, worker = row[: len(ENDED_COLUMNS)]
        return cls(job_id, JobReply(*reply), callback_url, worker)


class Sendable(Protocol):
    """What :func:`.lifecycle.message_of` reads of a job: a :class:`~.models.Job` or a row of it."""

    @property
    def id(self) -> int: ...
    @property
    def uid(self) -> str: ...
    @property
    def queue(self) -> str | None: ...
    @property
    def time_limit(self) -> float | None: ...
    @property
    def worker(self) -> str | None: ...


# The sweeper's reads ------------------------------------------------------------------------------


class LostJob(NamedTuple):
    """A ``processing`` job whose lease ran out."""

    id: int
    uid: str
    queue: str | None
    time_limit: float | None
    worker: str
    attempt: int
    lease_expires_at: datetime


def lost_jobs(store: JobStore, now: datetime, limit: int) -> list[LostJob]:
    """Processing jobs whose lease ran out before ``now``, oldest id first."""
    return [LostJob(*row) for row in store.all(sql.LOST_JOBS, {"now": now, "limit": limit})]


class WaitingJob(NamedTuple):
    """A ``waiting`` job whose message may be lost."""

    id: int
    uid: str
    queue: str | None
    time_limit: float | None
    worker: str
    #: When it is due to run: its creation, or the end of a retry's backoff.
    due_at: datetime


def stale_jobs(store: JobStore, due_before: datetime, limit: int) -> list[WaitingJob]:
    """Waiting jobs due before ``due_before``, oldest id first."""
    rows = store.all(sql.STALE_JOBS, {"cutoff": due_before, "limit": limit})
    return [WaitingJob(*row) for row in rows]


def waiting_jobs(store: JobStore, after_id: int, limit: int) -> list[WaitingJob]:
    """Waiting jobs with an id above ``after_id``, whenever due, oldest id first."""
    rows = store.all(sql.WAITING_JOBS, {"after_id": after_id, "limit": limit})
    return [WaitingJob(*row) for row in rows]
