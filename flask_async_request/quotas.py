"""The statements of the per-owner limits: a new job admitted, a job claimed, under a cap.

Each is one conditional statement whose count and write happen together: the
admission is an ``INSERT ... SELECT`` that stores the row only while the
owner's counts are under its caps, and the capped claim is the claim with one
more condition, on the count of the owner's running jobs. The counts are read
from derived tables, which every database takes in a statement that writes the
same table (MariaDB and MySQL refuse a plain subquery of it in an UPDATE).

One statement is atomic on SQLite, whose one writer takes its lock before the
statement reads. PostgreSQL and MariaDB read a snapshot that a concurrent
submission of the same owner may not be in yet, so there the statement runs
holding a lock of the owner's (:func:`owner_lock`): a PostgreSQL advisory lock,
a MariaDB/MySQL named lock.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple, cast

import sqlalchemy as sa

from .models import Job, JobStatus
from .statements import CLAIM, CLAIM_COLUMNS, ID, MESSAGE_COLUMNS, OWN_UID, NewRow, Statement

#: "No cap" in a statement's comparison: larger than any count.
NO_CAP = 2**31 - 1

#: The jobs table itself, for the INSERT ... SELECT (an ORM insert would take its
#: parameters for a bulk insert of rows).
_TABLE = cast(sa.Table, Job.__table__)
_OWNER = Job.owner == sa.bindparam("limit_owner", type_=_TABLE.c.owner.type)


def _count(name: str, *where: sa.ColumnElement[bool]) -> sa.Subquery:
    """A derived table of one row, ``n``: how many of the owner's jobs match ``where``."""
    return sa.select(sa.func.count().label("n")).where(_OWNER, *where).subquery(name)


_IN_FLIGHT = _count("in_flight", Job.finished_at.is_(None))
_RECENT = _count("recent", Job.created_at > sa.bindparam("since", type_=Job.created_at.type))
_RUNNING = _count("running", Job.status == JobStatus.PROCESSING, Job.finished_at.is_(None))

#: A new job's row, stored only while its owner has fewer than ``max_in_flight`` jobs
#: waiting or processing and created fewer than ``max_rate`` since ``since``.
ADMIT = sa.insert(_TABLE).from_select(
    list(NewRow._fields),
    sa.select(*(sa.bindparam(name, type_=_TABLE.c[name].type) for name in NewRow._fields))
    .select_from(_IN_FLIGHT)
    .join(_RECENT, sa.true())
    .where(_IN_FLIGHT.c.n < sa.bindparam("max_in_flight"), _RECENT.c.n < sa.bindparam("max_rate")),
)
ADMIT_RETURNING = ADMIT.returning(_TABLE.c.id)

#: The owner's counts, read after a refusal to tell which limit it was.
COUNTS = sa.select(_IN_FLIGHT.c.n, _RECENT.c.n).select_from(_IN_FLIGHT).join(_RECENT, sa.true())

#: The creation time of the owner's ``offset + 1``-th newest job in the window: when it
#: leaves the window, one more job is admitted.
NTH_RECENT = (
    sa.select(Job.created_at)
    .where(_OWNER, Job.created_at > sa.bindparam("since", type_=Job.created_at.type))
    .order_by(Job.created_at.desc())
    .limit(1)
    .offset(sa.bindparam("offset"))
)

#: The owner of a job, read before a capped claim: the cap may depend on it.
OWNER_OF = sa.select(Job.owner).where(ID)

#: The claim, made only while the job's owner has fewer than ``max_running`` jobs processing.
CLAIM_CAPPED = Statement(
    CLAIM.update.where(
        _OWNER, sa.select(_RUNNING.c.n).scalar_subquery() < sa.bindparam("max_running")
    ),
    returns=CLAIM_COLUMNS,
)

#: A job put back to wait by the cap: parked, its ``due_at`` moved to ``due_at``, later
#: than its creation (a waiting job with no attempt yet, due after it was created, is
#: a parked one; any other waiting job is due since its creation or a retry's backoff).
PARK = Statement(
    sa.update(Job)
    .where(ID, Job.status == JobStatus.WAITING, OWN_UID)
    .values(due_at=sa.bindparam("due_at"), updated_at=sa.bindparam("now")),
)
_PARKED = (
    _OWNER,
    Job.finished_at.is_(None),
    Job.status == JobStatus.WAITING,
    Job.attempts == 0,
    Job.due_at > Job.created_at,
)
_IS_PARKED = sa.and_(Job.attempts == 0, Job.due_at > Job.created_at)


#: How many of the owner's jobs are processing, and how many wait with a message on
#: its way (waiting, not parked): those take the owner's free places first.
def _how_many(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
    # SUM of a CASE, which every database takes (MariaDB has no aggregate FILTER).
    return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)


RUN_COUNTS = sa.select(
    _how_many(Job.status == JobStatus.PROCESSING),
    _how_many(sa.and_(Job.status == JobStatus.WAITING, sa.not_(_IS_PARKED))),
).where(_OWNER, Job.finished_at.is_(None))

#: The owner's parked job that waited longest, the one to wake.
NEXT_PARKED = sa.select(Job.id).where(*_PARKED).order_by(Job.id).limit(1)
#: A parked job woken: due since its creation again, its message to be sent.
WAKE = Statement(
    sa.update(Job)
    .where(ID, *_PARKED)
    .values(due_at=Job.created_at, updated_at=sa.bindparam("now")),
    returns=MESSAGE_COLUMNS,
)


class OwnerLock(NamedTuple):
    """The statements that take and give back a lock of one owner's, on one database."""

    #: Held to the end of the transaction (PostgreSQL); ``None`` where there is none.
    in_transaction: sa.Executable | None
    #: Held by the connection until :attr:`release`; ``None`` where none is needed.
    acquire: sa.Executable | None
    release: sa.Executable | None


_NO_LOCK = OwnerLock(None, None, None)
#: Seconds a MariaDB/MySQL named lock is waited for before the statement fails.
NAMED_LOCK_TIMEOUT = 30
_KEY = sa.bindparam("lock_key", type_=sa.BigInteger())
_NAME = sa.bindparam("lock_name", type_=sa.String(64))
_LOCKS = {
    "postgresql": OwnerLock(
        sa.select(sa.func.pg_advisory_xact_lock(_KEY)),
        sa.select(sa.func.pg_advisory_lock(_KEY)),
        sa.select(sa.func.pg_advisory_unlock(_KEY)),
    ),
    "mysql": OwnerLock(
        None,
        sa.select(sa.func.get_lock(_NAME, NAMED_LOCK_TIMEOUT)),
        sa.select(sa.func.release_lock(_NAME)),
    ),
}
_LOCKS["mariadb"] = _LOCKS["mysql"]


def owner_lock(dialect: str) -> OwnerLock:
    """The lock statements of the database named ``dialect`` (none on SQLite)."""
    return _LOCKS.get(dialect, _NO_LOCK)


def lock_params(purpose: str, owner: str) -> dict[str, Any]:
    """The parameters of the lock of ``owner`` for ``purpose`` (``admit`` or ``run``).

    A 64-bit key for PostgreSQL's advisory locks, a name of 64 characters at
    most for MariaDB's, both from a hash: an owner may be any text.
    """
    digest = hashlib.sha256(f"flask-async-request:{purpose}:{owner}".encode()).digest()
    return {
        "lock_key": int.from_bytes(digest[:8], "big", signed=True),
        "lock_name": f"far-{purpose}-{digest[:24].hex()}",
    }
