"""The web side of a job's life: validate, store, publish on commit, cancel."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import urllib.parse
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, cast

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import (
    Session,
    SessionTransaction,
    SessionTransactionOrigin,
    scoped_session,
)
from sqlalchemy.orm.attributes import instance_state, set_committed_value

from . import lifecycle, limits, tracing
from .broker import Message, publish, revoke
from .compat import transaction_used_connection
from .exceptions import (
    EnqueueError,
    IdempotencyConflict,
    InvalidCallbackUrl,
    InvalidIdempotencyKey,
    UnstorableValue,
)
from .models import Job, column_length
from .signals import job_enqueued
from .state import current_flask_app, get_state
from .store import JobReply, Unreachable
from .tokens import TokenSigner
from .values import lone_surrogate, short_repr, unstorable
from .worker import Worker, seconds_of, worker_path

logger = logging.getLogger("flask_async_request")

#: Longest ``Idempotency-Key`` accepted (the key is stored hashed).
MAX_IDEMPOTENCY_KEY_LENGTH = 255
#: Longest callback url, and longest owner, the jobs table holds.
_CALLBACK_URL_LENGTH = column_length("callback_url") or 2048
_OWNER_LENGTH = column_length("owner") or 255
#: Longest worker path and queue name the jobs table holds.
_NAME_LENGTHS = {name: column_length(name) for name in ("worker", "queue")}


def check_json(value: Any, where: str = "arguments") -> None:
    """Check that ``value`` comes back equal after a JSON round trip.

    :raises TypeError: naming the first value that JSON cannot store.
    :raises ValueError: for a float that is not finite.
    :raises UnstorableValue: for a str with a lone surrogate, which is not valid
        Unicode (a NUL character is stored, escaped, as JSON does).
    """
    if _round_trips(value):
        return
    _explain(value, where)


def _round_trips(value: Any) -> bool:
    """Whether :func:`check_json` accepts ``value``, found with no message built.

    Each value's place (``args[0]['key']``) is named only for the one refused:
    naming every one on the way cost the decorator's stored request more than
    its JSON round trip.
    """
    if value is None or isinstance(value, (bool, int)):
        return True
    if isinstance(value, str):
        return not lone_surrogate(value)
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(
            isinstance(key, str) and not lone_surrogate(key) and _round_trips(item)
            for key, item in value.items()
        )
    if isinstance(value, (list, tuple)):
        return all(_round_trips(item) for item in value)
    return False


def _explain(value: Any, where: str) -> None:
    """Raise :func:`check_json`'s error for the first value refused in ``value``, if any."""
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, str):
        _check_unicode(value, where)
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} contains {value!r}, which JSON cannot store.")
        return
    # Only the containers json.dumps takes: a range or a mappingproxy is a Sequence
    # or a Mapping all the same, and would fail there, with no place named.
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{where} contains a dict key {key!r} of type {type(key).__name__};"
                    " JSON object keys must be str."
                )
            _check_unicode(key, f"{where} key {short_repr(key)}")
            _explain(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _explain(item, f"{where}[{index}]")
        return
    raise TypeError(
        f"{where} is {value!r} of type {type(value).__name__}, which is not JSON-serialisable."
    )


def _check_unicode(text: str, where: str) -> None:
    if lone_surrogate(text):
        raise UnstorableValue(
            f"{where} contains a lone surrogate, which is not valid Unicode text;"
            " no database can store it."
        )


def check_callback_url(url: str) -> None:
    """Check a callback url where it is given, before any row is stored.

    :raises InvalidCallbackUrl: unless ``url`` is an absolute http(s) url of
        2,048 chars at most. Where it points is checked at each delivery.
    """
    storable = isinstance(url, str) and unstorable(url, _CALLBACK_URL_LENGTH) is None
    parts = urllib.parse.urlsplit(url) if storable else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidCallbackUrl(
            f"callback_url is {short_repr(url)}; expected an absolute http or https url"
            " of 2,048 chars at most, with no NUL character or lone surrogate."
        )


def sign_token(job: Job, signer: TokenSigner) -> str:
    """A token for the stored ``job``, signed by ``signer``."""
    if job.id is None:
        raise ValueError("The job has no id yet; a token can only be made for a stored job.")
    return signer(job.id, job.uid, job.owner)


def _signed(job: Job, signer: TokenSigner) -> Job:
    """``job`` holding its token, signed now, while its id and uid are loaded."""
    job.keep_token(sign_token(job, signer))
    return job


def _caller_transaction(session: Session) -> bool:
    """Whether the session holds work of the caller's that a commit must carry.

    Pending ORM objects count, and so does a transaction that has used a
    connection: it may hold Core statements (``session.execute(sa.update(...))``)
    that nothing else shows. A transaction only begun (by ``session.add`` of a
    stored row, say) has nothing to carry.
    """
    if session.new or session.dirty or session.deleted:
        return True
    transaction = session.get_transaction()
    return transaction is not None and transaction_used_connection(transaction)


def _explicit_transaction(session: Session) -> bool:
    """Whether the caller opened the session's transaction with ``session.begin()``."""
    transaction = session.get_transaction()
    return transaction is not None and transaction.origin is SessionTransactionOrigin.BEGIN


class NewJob(NamedTuple):
    """A job just stored and published, as a 202 answers it: its id and its token."""

    id: int
    token: str


def submit_job(
    worker_class: type,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    idempotency_key: str | None = None,
) -> Job | NewJob:
    """Validate, store and publish a job, for a view that answers 202 for it at once.

    As :func:`create_job`; a job stored by one autocommitted ``INSERT`` in a
    request that has not opened the session is answered as its id and token:
    no ORM object is made for it and no session is opened (and closed) for it.
    """
    return _create(worker_class, args, kwargs, idempotency_key=idempotency_key, attach=False)


def create_job(
    worker_class: type,
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

    :raises DatabaseUnavailable: the row could not be stored: the database is
        out of reach. Not tried again: an INSERT whose connection was lost may
        have been stored, and a job stored twice would run twice.
    """
    job = _create(
        worker_class,
        args,
        kwargs,
        commit=commit,
        idempotency_key=idempotency_key,
        callback_url=callback_url,
    )
    # Attached, a new job is always the ORM object.
    return cast("Job", job)


def _create(
    worker_class: type,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    commit: bool = True,
    idempotency_key: str | None = None,
    callback_url: str | None = None,
    attach: bool = True,
) -> Job | NewJob:
    """:func:`create_job`; with ``attach=False``, as :func:`submit_job` answers."""
    state = get_state()
    path = worker_path(worker_class)
    checked_class = cast("type[Worker]", worker_class)
    queue = checked_class.queue or state.settings.queue
    for name, value in (("worker", path), ("queue", queue)):
        length = _NAME_LENGTHS[name]
        if value is not None and length is not None and len(value) > length:
            raise ValueError(
                f"The {name} name {short_repr(value)} is {len(value)} characters long; the jobs"
                f" table holds {length} at most."
            )
    params = {"args": list(args), "kwargs": dict(kwargs)}
    check_json(params["args"], "args")
    check_json(params["kwargs"], "kwargs")
    # Store exactly what the worker will get back.
    params = json.loads(json.dumps(params))
    if callback_url is not None:
        check_callback_url(callback_url)
    owner = state.identity()
    if owner is not None:
        reason = unstorable(owner, _OWNER_LENGTH)
        if reason is not None:
            # Not echoed: an identity is not for the client's eyes.
            raise UnstorableValue(
                f"The current identity cannot be stored as the job's owner: {reason}."
            )
    sessions = state.db.session
    # A request that has not opened the session holds nothing of the caller's in
    # it: none is opened only to find that out, nor to hold a job no one reads.
    light = not attach and idempotency_key is None and not sessions.registry.has()
    session: Session | None = None if light else sessions()
    # Whether the session holds work of the caller's, before this reads anything.
    callers = session is not None and _caller_transaction(session)
    scope = None
    unreachable = Unreachable(f"Job {path} could not be stored")
    if idempotency_key is not None:
        assert session is not None
        scope = idempotency_scope(idempotency_key, owner)
        with unreachable:
            existing = _job_with_scope(session, scope)
        if existing is not None:
            return _signed(_same_request(existing, path, params, idempotency_key), state.sign_token)
    row = lifecycle.new_row(
        path,
        params,
        owner=owner,
        idempotency_scope=scope,
        callback_url=callback_url,
        queue=queue,
        time_limit=seconds_of(
            checked_class.time_limit or state.settings.time_limit,
            f"{path}.time_limit",
        ),
        trace_context=tracing.capture(),
    )
    store = state.store()
    # Published on the caller's commit rather than ours.
    deferred = not commit or (session is not None and _explicit_transaction(session))
    # The owner's admission limits, if any apply: the row is stored only under them.
    caps = limits.admission_params(state.settings, owner, row.created_at)
    with unreachable:
        # Past the owner's running cap, stored parked: sent as its running jobs end.
        held = not deferred and limits.held_back(store, state.settings, owner)
    if held:
        row = limits.parked(row, state.settings)
    if not deferred and store.autocommit and scope is None and not callers:
        # Nothing of the caller's to commit along: one autocommit INSERT makes
        # the row durable in a single round trip, instead of BEGIN, INSERT, COMMIT.
        try:
            with unreachable:
                if caps is None:
                    job_id = lifecycle.insert_row(store, row)
                else:
                    job_id = limits.insert_admitted(store, row, caps)
        except _REFUSED_VALUES as e:
            raise _refused(e) from None
        token = state.sign_token(job_id, row.uid, row.owner)
        new: Job | NewJob
        if session is None:
            new = NewJob(job_id, token)
        else:
            new = _stored_job(session, job_id)
            new.keep_token(token)
        _publish_new(lifecycle.message_of_row(job_id, row), new, held_for=owner if held else None)
        return new
    if session is None:
        session = sessions()
    try:
        with unreachable:
            if caps is None:
                job = Job(**row._asdict())
                session.add(job)
                session.flush()
            else:
                # A refusal rolls back a transaction that holds nothing of the caller's.
                own = not deferred and not callers
                job = _stored_job(session, limits.insert_admitted_in(session, row, caps, own))
    except sa.exc.IntegrityError:
        if scope is None:
            raise
        # Another request with the same key won the race.
        session.rollback()
        with unreachable:
            existing = _job_with_scope(session, scope)
        if existing is None:
            raise
        return _signed(
            _same_request(existing, path, params, idempotency_key or ""), state.sign_token
        )
    except _REFUSED_VALUES as e:
        # The session needs a rollback now, as after any failed flush: the caller's.
        raise _refused(e) from None
    message = lifecycle.message_of(job)
    # Signed now, while id and uid are loaded: a commit expires them.
    _signed(job, state.sign_token)
    if deferred:
        session.info.setdefault(_PENDING_KEY, []).append(message)
        return job
    with unreachable:
        session.commit()
    # The job is loaded afresh on next access: it may already have run (eager
    # mode, fast workers).
    _publish_new(message, job, held_for=owner if held else None)
    return job


def _stored_job(session: Session, job_id: int) -> Job:
    """The job stored with id ``job_id``, known to ``session`` as that row.

    Only its id is set: every other column is read on first access, as the job
    may already have run. (An ORM object with every column set, only to be
    expired at once, cost a submission twice the CPU of this one.) The object is
    the one ``make_transient_to_detached`` makes, its id committed and the other
    columns expired, at a third of the CPU: that function expires the columns one
    by one, each through its attribute's implementation.
    """
    job = Job()
    set_committed_value(job, "id", job_id)
    state = instance_state(job)
    state.key = state.mapper.identity_key_from_primary_key((job_id,))
    state.expired_attributes.update(_unloaded_columns())
    session.add(job)
    return job


@functools.cache
def _unloaded_columns() -> frozenset[str]:
    """The columns of a job that :func:`_stored_job` leaves to be read on first access."""
    return frozenset(column.key for column in sa.inspect(Job).column_attrs if column.key != "id")


#: What a database raises for a value it cannot store, checked as they are before the
#: write: a value out of range or too long, or text the driver cannot encode.
_REFUSED_VALUES = (sa.exc.DataError, UnicodeError)


def _refused(error: Exception) -> UnstorableValue:
    """The error for a new job whose row the database refused; its own message is logged."""
    logger.error("A new job could not be stored: the database refused it.", exc_info=error)
    return UnstorableValue(
        "The job could not be stored: the database refused one of its values"
        f" ({type(error).__name__}; details are in the server's log)."
    )


def _publish_new(
    message: Message, job: Job | NewJob | None = None, *, held_for: str | None = None
) -> None:
    """Publish a newly stored job and announce it (``job_enqueued``).

    A job held back by the running cap of its owner, ``held_for``, is stored
    parked: a job of the owner's is sent only if an end of the owner's jobs made
    room meanwhile (see ``limits.wake_for``).

    :raises EnqueueError: holding ``job``, stored all the same.
    """
    try:
        if held_for is None:
            publish(message)
        else:
            state = get_state()
            woken = limits.wake_for(state.store(), state.settings, held_for)
            if woken is not None:
                publish(woken)
    except EnqueueError as e:
        e.job = job
        raise
    job_enqueued.send(current_flask_app(), job_id=message.job_id, worker=message.worker)


def idempotency_scope(key: str, owner: str | None) -> str:
    """The stored hash of an ``Idempotency-Key`` for ``owner``.

    :raises InvalidIdempotencyKey: for a key that is not a non-empty str of 255
        chars at most, without a NUL character or a lone surrogate.
    """
    if (
        not isinstance(key, str)
        or not key
        or unstorable(key, MAX_IDEMPOTENCY_KEY_LENGTH) is not None
    ):
        raise InvalidIdempotencyKey(
            f"Idempotency-Key is {short_repr(key)}; expected a non-empty string of"
            f" {MAX_IDEMPOTENCY_KEY_LENGTH} characters at most, with no NUL character"
            " or lone surrogate."
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


# Publishing on the caller's commit ---------------------------------------------------

#: Where a session keeps the ids of jobs to publish when it commits.
_PENDING_KEY = "flask_async_request.publish_on_commit"


def _publish_on_commit(session: Session) -> None:
    pending: list[Message] = session.info.pop(_PENDING_KEY, None) or []
    for message in pending:
        try:
            _publish_new(message)
        except EnqueueError:
            # The commit has happened and cannot fail now; the row stays waiting
            # and the sweeper publishes it again.
            logger.exception("Job %s is stored but could not be published yet.", message.job_id)


def _forget_on_rollback(session: Session, transaction: SessionTransaction) -> None:
    # After a commit the list is already gone; what is left belongs to a rolled
    # back transaction, whose rows never existed.
    if transaction.parent is None:
        session.info.pop(_PENDING_KEY, None)


#: The session classes that carry the listeners. SQLAlchemy's own registry keys
#: targets by ``id()``, which a new class can reuse after an old one is gone, so
#: ``event.contains`` could answer for a class that no longer exists.
_listening: weakref.WeakSet[type] = weakref.WeakSet()


def listen(session: scoped_session[Any]) -> None:
    """Publish jobs created with ``commit=False`` when ``session`` commits.

    The listeners go on the app's own session (its sessionmaker's class), not on
    SQLAlchemy's global ``Session``, so other sessions in the process carry none.
    """
    session_class = session.session_factory.class_
    if session_class in _listening:
        return
    event.listen(session_class, "after_commit", _publish_on_commit)
    event.listen(session_class, "after_transaction_end", _forget_on_rollback)
    _listening.add(session_class)


# Cancel --------------------------------------------------------------------------------


def cancel_job(job_id: int) -> JobReply:
    """Cancel job ``job_id``: a waiting job never runs, a running one is told to stop.

    The row becomes ``cancelled`` at once (status code 499) in one statement,
    whose result is the answer; any queued message is revoked, and a running
    worker finds out at its next progress report or :attr:`Worker.cancelled`
    check, and its reply is never stored.

    :returns: the job's reply, now that it is cancelled.
    :raises JobNotFound: there is no such job.
    :raises JobFinished: the job has finished already.
    """
    state = get_state()
    ended = lifecycle.cancel(state.store(), job_id)
    revoke(state, job_id, ended.uid)
    return ended.reply
