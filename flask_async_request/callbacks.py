"""Delivering a job's end to its callback url, and the log of those deliveries.

The signing, the checks of where a callback may go and the POST itself are in
:mod:`flask_async_request.webhooks`; here a job's end is read, delivered, and
each delivery noted on the job (see :mod:`flask_async_request.deliveries`).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import sqlalchemy as sa

from . import deliveries, lifecycle, tracing
from .deliveries import DELIVERED, FAILED, REFUSED, Delivery, host_of
from .exceptions import JobNotFound
from .models import Job, JobStatus
from .payloads import decode_headers
from .replies import callback_payload
from .state import AsyncRequestState, get_state
from .store import JobStore
from .values import utcnow
from .webhooks import (
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    CallbackRefused,
    DeliveryError,
    NoCallback,
    message_id,
    post,
    resolve_target,
    sign,
)

logger = logging.getLogger("flask_async_request")

__all__ = ["deliver", "give_up", "redeliver"]


_CALLBACK = sa.select(
    Job.callback_url,
    Job.uid,
    Job.attempts,
    Job.status,
    Job.status_code,
    Job.response,
    Job.content_type,
    Job.headers,
    Job.result_size,
    Job.result_sha256,
    Job.trace_context,
).where(Job.id == sa.bindparam("job_id"))
_LOG = sa.select(Job.callback_deliveries).where(Job.id == sa.bindparam("job_id"))


def deliver(job_id: int, attempt: int = 1, *, redelivery: bool = False) -> bool:
    """POST job ``job_id``'s end to its callback url (inside an app context).

    The outcome is noted on the job and added to its delivery log
    (``flask async-request show`` shows both).

    :param attempt: which delivery this is, for the note.
    :param redelivery: an operator asked for it (see :func:`redeliver`).
    :returns: ``False`` when there is nothing to deliver (no such job, no url)
        or the url was refused (logged, and never retried).
    :raises DeliveryError: the receiver could not be reached or did not answer 2xx.
        (SQLAlchemy's ``OperationalError`` is raised when the database cannot be read.)
    """
    state = get_state()
    store = state.store()
    row = store.first(_CALLBACK, {"job_id": job_id})
    if row is None or not row.callback_url:
        return False
    # A trace of its own, linked to the submitting request's.
    with tracing.job_span(
        "async_request.callback",
        row.trace_context,
        job_id,
        child=False,
        **{"async_request.delivery": attempt},
    ):
        return _deliver(state, store, job_id, attempt, row, redelivery)


def _deliver(
    state: AsyncRequestState,
    store: JobStore,
    job_id: int,
    attempt: int,
    row: Any,
    redelivery: bool,
) -> bool:
    """:func:`deliver` the job's end, read as ``row``."""
    key = state.settings.callback_key
    status = JobStatus(row.status)
    # The same for every delivery of this end: a receiver drops the ones it has seen.
    message = message_id(row.uid, row.attempts, status.value)
    entry = functools.partial(
        Delivery,
        utcnow(),
        host=host_of(row.callback_url),
        delivery=attempt,
        redelivery=redelivery,
        message_id=message,
    )
    started = time.monotonic()
    code: int | None = None
    try:
        if key is None:
            raise CallbackRefused("callbacks need ASYNC_REQUEST_CALLBACK_KEY (or SECRET_KEY) set")
        target = resolve_target(
            row.callback_url, allow_private=state.settings.callback_allow_private
        )
        # A result in the result store is named by its size and checksum; the
        # receiver downloads it from the job's result url with its token.
        stored = (
            None
            if row.result_size is None or status is not JobStatus.PROCESSED
            else {"size": row.result_size, "sha256": row.result_sha256}
        )
        payload = callback_payload(
            job_id,
            status,
            row.status_code,
            row.response,
            row.content_type,
            headers=decode_headers(row.headers),
            result=stored,
        )
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "flask-async-request",
            ID_HEADER: message,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(message, timestamp, payload, key),
        }
        # The receiver continues the delivery's trace from the request's traceparent.
        tracing.inject(headers)
        code = post(target, payload, headers)
        if not 200 <= code < 300:
            raise DeliveryError(f"got {code} from its url")
    except CallbackRefused as e:
        logger.warning("Job %s: callback refused: %s.", job_id, e)
        done = entry(REFUSED, duration=time.monotonic() - started, error=type(e).__name__)
        lifecycle.record_callback(store, job_id, f"refused: {e}", done)
        return False
    except DeliveryError as e:
        error = None if code is not None else type(e.__cause__ or e).__name__
        done = entry(FAILED, duration=time.monotonic() - started, status_code=code, error=error)
        lifecycle.record_callback(store, job_id, f"failed (delivery {attempt}): {e}", done)
        raise DeliveryError(f"The callback of job {job_id} {e}.") from e
    done = entry(DELIVERED, duration=time.monotonic() - started, status_code=code)
    lifecycle.record_callback(store, job_id, f"delivered: {code} (delivery {attempt})", done)
    return True


def redeliver(job_id: int) -> Delivery:
    """Deliver job ``job_id``'s end again, now, once, signed afresh with the same ``webhook-id``.

    What an operator asks for (``flask async-request redeliver``, the
    dashboard): one delivery made in this process, logged as a redelivery,
    whatever became of the earlier ones.

    :returns: the delivery's entry in the job's log.
    :raises JobNotFound: there is no such job.
    :raises NoCallback: the job has no callback url, or has not ended.
    """
    row = get_state().store().first(_CALLBACK, {"job_id": job_id})
    if row is None:
        raise JobNotFound(job_id)
    if not row.callback_url:
        raise NoCallback(f"Job {job_id} has no callback url; there is nothing to redeliver.")
    if not JobStatus(row.status).finished:
        raise NoCallback(f"Job {job_id} is {row.status}; its callback is sent when it ends.")
    try:
        deliver(job_id, redelivery=True)
    except DeliveryError as e:
        logger.warning("Job %s: its redelivery failed: %s", job_id, e)
    log = deliveries.decode(get_state().store().first(_LOG, {"job_id": job_id})[0])
    return log[-1]


def give_up(job_id: int, deliveries: int, error: Exception) -> None:
    """Note that the job's callback was given up after ``deliveries`` failed deliveries."""
    logger.error("Job %s: giving up its callback: %s", job_id, error)
    lifecycle.record_callback(
        get_state().store(), job_id, f"gave up after {deliveries} deliveries: {error}"
    )
