"""Per-owner limits: admission (in flight, rate) as a job is stored, fairness as it is claimed.

Admission: a new job of an owner with an in-flight cap or a rate is stored by
the conditional INSERT of ``quotas.ADMIT``, which counts the owner's waiting
and processing jobs, and those created within the rate's window, in the same
statement; on PostgreSQL and MariaDB under a lock of the owner's, so that two
submissions at once cannot both take the last place. A refused job was never
stored nor sent: :exc:`OwnerLimitExceeded` says which limit and when to ask again.

The rate's store is the jobs table itself: ``created_at`` within the window,
read through the index on ``(owner, created_at)``. It is as durable as the jobs,
the same from every web process, and needs no other service; neither column
ever changes, so the index costs a claim or a finish nothing.

Fairness: with ``ASYNC_REQUEST_OWNER_MAX_RUNNING`` the claim is
``quotas.CLAIM_CAPPED``, under the owner's lock where the database needs one.
A job whose owner is at the cap is parked: left waiting, its message consumed,
due after ``ASYNC_REQUEST_OWNER_DEFER``. Each end of one of the owner's jobs
wakes the parked job that waited longest and sends its message again, to the
back of the queue, behind the other owners' jobs. A job is never run past the
cap, and never lost: one whose wake never came (its process died between the
end and the wake) is a waiting job no worker claimed, which the sweeper sends
again ``ASYNC_REQUEST_WAITING_TIMEOUT`` after it was due. Parking sends
nothing, so a backlog of one owner costs one claim attempt per job, not one
per job and per delay.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

from . import quotas
from .broker import Message, publish
from .config import OwnerLimit, Settings
from .exceptions import EnqueueError, OwnerLimitExceeded
from .quotas import NO_CAP, owner_lock
from .rows import Claim
from .signals import job_cancelled, job_failed, job_finished
from .state import get_state
from .statements import NewRow, Statement
from .store import JobStore
from .values import as_utc, utcnow

logger = logging.getLogger("flask_async_request")

#: Seconds a client refused for its in-flight cap is asked to wait.
IN_FLIGHT_RETRY_AFTER = 1


def limit_of(limit: OwnerLimit, owner: str) -> int | None:
    """The limit for ``owner``: the number itself, or what the app's callable says."""
    if limit is None or isinstance(limit, int):
        return limit
    value = limit(owner)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise TypeError(
            f"An owner limit's callable returned {value!r} for an owner; expected a whole"
            " number >= 0 or None."
        )
    return value


def admission_params(settings: Settings, owner: str | None, now: datetime) -> dict[str, Any] | None:
    """The caps of ``owner``'s admission, or ``None`` when no limit applies to it."""
    if owner is None:
        return None
    in_flight = limit_of(settings.owner_max_in_flight, owner)
    rate = limit_of(settings.owner_rate, owner)
    if in_flight is None and rate is None:
        return None
    return {
        "limit_owner": owner,
        "max_in_flight": NO_CAP if in_flight is None else in_flight,
        "max_rate": NO_CAP if rate is None else rate,
        "since": now - settings.owner_rate_period,
    }


def _run_locked(
    store: JobStore, purpose: str, owner: str, run: Callable[[sa.Connection], Any]
) -> Any:
    """``run(connection)`` in a transaction of its own, holding ``owner``'s lock for ``purpose``."""
    lock = owner_lock(store.engine.dialect.name)
    params = quotas.lock_params(purpose, owner)
    with store.engine.connect() as conn:
        if lock.acquire is not None and lock.release is not None:
            # The store's connections autocommit each statement: what ``run`` writes
            # is committed before the lock is given back.
            conn.execute(lock.acquire, params)
            try:
                return run(conn)
            finally:
                conn.execute(lock.release, params)
        with conn.begin():
            return run(conn)


def _insert(conn: sa.Connection | Session, params: dict[str, Any]) -> int | None:
    """Run the conditional INSERT; the new job's id, or ``None`` when it stored nothing."""
    dialect = conn.get_bind().dialect if isinstance(conn, Session) else conn.dialect
    if dialect.insert_returning:
        row = conn.execute(quotas.ADMIT_RETURNING, params).first()
        return None if row is None else int(row[0])
    result: Any = conn.execute(quotas.ADMIT, params)
    return int(result.lastrowid) if result.rowcount == 1 else None


def insert_admitted(store: JobStore, row: NewRow, caps: dict[str, Any]) -> int:
    """Store ``row`` in a transaction of its own if its owner is under its caps; its id.

    :raises OwnerLimitExceeded: the owner is at a cap; nothing was stored.
    """
    params = {**row._asdict(), **caps}

    def admit(conn: sa.Connection) -> int:
        job_id = _insert(conn, params)
        if job_id is None:
            raise _refusal(conn, caps)
        return job_id

    return int(_run_locked(store, "admit", caps["limit_owner"], admit))


def insert_admitted_in(
    session: Session, row: NewRow, caps: dict[str, Any], own: bool = False
) -> int:
    """Store ``row`` in ``session``'s transaction if its owner is under its caps; its id.

    On PostgreSQL the owner's lock is held to the end of that transaction; on
    MariaDB the INSERT's own locking read of the owner's rows serializes two
    such transactions (one of them may be chosen as a deadlock's victim).

    :param own: the transaction holds nothing of the caller's: a refusal rolls
        it back, and the lock it took goes with it.
    :raises OwnerLimitExceeded: the owner is at a cap; nothing was stored.
    """
    lock = owner_lock(session.get_bind().dialect.name).in_transaction
    if lock is not None:
        session.execute(lock, quotas.lock_params("admit", caps["limit_owner"]))
    job_id = _insert(session, {**row._asdict(), **caps})
    if job_id is None:
        refused = _refusal(session, caps)
        if own:
            session.rollback()
        raise refused
    return job_id


def _refusal(conn: sa.Connection | Session, caps: dict[str, Any]) -> OwnerLimitExceeded:
    """The error for an owner found at a cap: which one, and when to ask again."""
    in_flight, recent = conn.execute(quotas.COUNTS, caps).one()
    if in_flight >= caps["max_in_flight"]:
        return OwnerLimitExceeded(
            f"Too many jobs in flight: {in_flight} waiting or processing, of"
            f" {caps['max_in_flight']} allowed; try again once some have finished.",
            limit="in_flight",
            retry_after=IN_FLIGHT_RETRY_AFTER,
        )
    retry_after = 1
    if recent >= caps["max_rate"] > 0:
        nth = conn.execute(quotas.NTH_RECENT, {**caps, "offset": caps["max_rate"] - 1}).scalar()
        if nth is not None:
            period = utcnow() - caps["since"]
            left = (as_utc(nth) + period - utcnow()).total_seconds()
            retry_after = max(1, math.ceil(left))
    elif caps["max_rate"] == 0:
        retry_after = math.ceil((utcnow() - caps["since"]).total_seconds())
    return OwnerLimitExceeded(
        f"Too many jobs created: {caps['max_rate']} allowed in"
        f" {(utcnow() - caps['since']).total_seconds():g} s; try again in {retry_after} s.",
        limit="rate",
        retry_after=retry_after,
    )


# Fairness at the claim -------------------------------------------------------------------


def capped_run(settings: Settings, store: JobStore, job_id: int) -> tuple[str, int] | None:
    """The owner of job ``job_id`` and its running cap, if one applies; else ``None``."""
    if settings.owner_max_running is None:
        return None
    row = store.first(quotas.OWNER_OF, {"job_id": job_id})
    if row is None or row[0] is None:
        return None
    cap = limit_of(settings.owner_max_running, row[0])
    return None if cap is None else (row[0], cap)


def claim_or_park(
    store: JobStore, settings: Settings, params: dict[str, Any], owner: str, cap: int
) -> Claim | bool:
    """Claim the job of ``params`` if its owner has fewer than ``cap`` jobs processing.

    Else, if it is still waiting, park it: due after ``ASYNC_REQUEST_OWNER_DEFER``,
    to be woken (:func:`wake_next`) as soon as one of the owner's jobs ends. Both
    under the owner's lock, which the wake takes too: a job parked while the
    owner's last running job ends is either claimed or found by its wake.

    :returns: the claim; else ``True`` if the job was parked, ``False`` if it was
        not waiting (as for a duplicate message).
    """
    now = params["now"]
    capped = {**params, "limit_owner": owner, "max_running": cap}
    parked = {**params, "due_at": now + settings.owner_defer}

    def claim(conn: sa.Connection) -> Claim | bool:
        row = _run_statement(conn, store, quotas.CLAIM_CAPPED, capped)
        if row is not None:
            return Claim(*row)
        return bool(conn.execute(quotas.PARK.update, parked).rowcount == 1)

    return _run_locked(store, "run", owner, claim)  # type: ignore[no-any-return]


def _has_room(conn: sa.Connection | JobStore, owner: str, cap: int) -> bool:
    """Whether the owner's running jobs and those sent to run leave a place under ``cap``."""
    params = {"limit_owner": owner}
    if isinstance(conn, JobStore):
        running, sent = conn.first(quotas.RUN_COUNTS, params)
    else:
        running, sent = conn.execute(quotas.RUN_COUNTS, params).one()
    return bool(running + sent < cap)


def parked(row: NewRow, settings: Settings) -> NewRow:
    """``row`` stored parked: due ``ASYNC_REQUEST_OWNER_DEFER`` after its creation."""
    return row._replace(due_at=row.created_at + settings.owner_defer)


def held_back(store: JobStore, settings: Settings, owner: str | None) -> bool:
    """Whether a new job of ``owner`` is to be stored parked, its message not sent.

    So when the owner's running jobs and those already sent fill its running
    cap: a backlog of one owner then waits in the jobs table, not in the queue
    in front of the other owners' jobs, and is sent a job at a time as the
    owner's jobs end (see :func:`wake_next`). Two submissions at once may both
    be sent: the claim still holds the cap, and parks the one past it.
    """
    if owner is None or settings.owner_max_running is None:
        return False
    cap = limit_of(settings.owner_max_running, owner)
    return cap is not None and not _has_room(store, owner, cap)


def wake_next(store: JobStore, settings: Settings, job_id: int) -> Message | None:
    """After an end of job ``job_id``: wake its owner's parked job that waited longest.

    Only while the owner's running jobs and those sent to run leave a place
    under its cap: a job already on its way takes the place first.

    :returns: the message to send for the woken job, if one was.
    """
    row = store.first(quotas.OWNER_OF, {"job_id": job_id})
    if row is None or row[0] is None:
        return None
    return wake_for(store, settings, row[0])


def wake_for(store: JobStore, settings: Settings, owner: str) -> Message | None:
    """Wake ``owner``'s parked job that waited longest, if its cap leaves a place for it.

    Run after an end of one of the owner's jobs, and after a job of the owner's
    is stored parked: both under the owner's lock, so that of an end and a
    parked job stored at once, one of the two finds the other.
    """
    cap = limit_of(settings.owner_max_running, owner)
    if cap is None:
        return None
    params: dict[str, Any] = {"limit_owner": owner, "now": utcnow()}

    def wake(conn: sa.Connection) -> Any:
        if not _has_room(conn, owner, cap):
            return None
        parked = conn.execute(quotas.NEXT_PARKED, params).scalar()
        if parked is None:
            return None
        return _run_statement(conn, store, quotas.WAKE, {**params, "job_id": parked})

    woken = _run_locked(store, "run", owner, wake)
    return None if woken is None else Message(*woken)


def _run_statement(
    conn: sa.Connection, store: JobStore, statement: Statement, params: dict[str, Any]
) -> Any:
    """Run ``statement`` on ``conn``; the row it changed, returned or read after it."""
    if store.returning and statement.returning is not None:
        return conn.execute(statement.returning, params).first()
    if conn.execute(statement.update, params).rowcount != 1:
        return None
    return conn.execute(statement.read, params).first()


def send_woken(message: Message) -> None:
    """Send the message of a woken job; if the broker refuses it, the sweeper sends it."""
    try:
        publish(message)
    except EnqueueError:
        logger.exception("Job %s: woken, but not sent; the sweeper will.", message.job_id)


def listen(app: Flask) -> None:
    """Wake a parked job of the owner each time one of ``app``'s jobs ends, in any process.

    Every end, whichever path reaches it (a worker, a time limit, the sweeper, a
    cancel), sends its signal: the wake listens to the three.
    """
    for signal in (job_finished, job_failed, job_cancelled):
        signal.connect(_wake_after_end, sender=app, weak=False)


def _wake_after_end(sender: Flask, job_id: int, **extra: Any) -> None:
    state = get_state(sender)
    if state.settings.owner_max_running is None:
        return
    message = wake_next(state.store(), state.settings, job_id)
    if message is not None:
        send_woken(message)
