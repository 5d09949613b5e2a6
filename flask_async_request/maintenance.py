"""Operating on jobs in bulk: sweep lost and stuck jobs, retry.

Every change of a row goes through ``flask_async_request.lifecycle``; this module decides
which jobs to change. The purge is :mod:`flask_async_request.retention`'s, and
``list_jobs``, ``job_stats`` and ``JobStats`` are :mod:`flask_async_request.reading`'s (the
read side the command line and the dashboard share): each is importable from here too.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

import kombu.exceptions

from . import lifecycle, rows
from .broker import publish
from .exceptions import BrokerUnavailable, EnqueueError
from .reading import JobStats, job_stats, list_jobs
from .retention import (
    FINISHED_STATUSES,
    PURGE_BATCH_SIZE,
    count_expired,
    count_purgeable,
    purge_expired,
    purge_jobs,
    retention_of,
)
from .signals import jobs_swept
from .state import current_flask_app, get_state
from .values import as_utc, utcnow

if TYPE_CHECKING:
    from .store import JobStore

logger = logging.getLogger("flask_async_request")

#: Jobs looked at per kind by one :func:`sweep_jobs`.
SWEEP_BATCH_SIZE = 500

__all__ = [
    "FINISHED_STATUSES",
    "PURGE_BATCH_SIZE",
    "SWEEP_BATCH_SIZE",
    "JobStats",
    "SweepResult",
    "consumers",
    "count_expired",
    "count_purgeable",
    "job_stats",
    "list_jobs",
    "purge_expired",
    "purge_jobs",
    "retention_of",
    "retry_job",
    "sends_messages",
    "sweep_jobs",
]


def unconsumed_queues(waiting_by_queue: dict[str | None, int], timeout: float = 1.0) -> list[str]:
    """The queues with waiting jobs that no running worker consumes, as Celery's inspect tells.

    ``None`` stands for the Celery app's default queue. Without a broker
    (embedded or eager mode) every job is served in process: none is listed.
    When no worker answers within ``timeout``, every queue with waiting jobs is.
    """
    state = get_state()
    if state.embedded is not None or state.celery.conf.task_always_eager:
        return []
    default = state.celery.conf.task_default_queue
    wanted = {queue or default for queue, count in waiting_by_queue.items() if count}
    if not wanted:
        return []
    answers = _active_queues(timeout)
    consumed = {queue["name"] for queues in answers.values() for queue in queues or ()}
    return sorted(wanted - consumed)


def _active_queues(timeout: float) -> dict[str, Any]:
    """The worker processes' answers to Celery's ``active_queues`` inspect, within ``timeout``.

    :raises BrokerUnavailable: the broker could not be reached (after kombu's
        own retries to connect). A pooled connection that the broker closed
        meanwhile (a restart) fails once, and the next try connects afresh.
    """
    celery = get_state().celery
    with celery.connection_for_write() as connection:  # Not connected: its errors' types.
        errors = (kombu.exceptions.OperationalError, OSError, *connection.connection_errors)
    for attempt in (1, 2):
        try:
            answers: dict[str, Any] = celery.control.inspect(timeout=timeout).active_queues()
            return answers or {}
        except errors as e:
            # kombu's OperationalError: its own retries to connect ran out, the
            # broker is down. Another is a pooled connection the broker cut.
            if attempt == 2 or isinstance(e, kombu.exceptions.OperationalError):
                raise BrokerUnavailable(
                    f"The broker could not be reached to ask the workers ({type(e).__name__})."
                ) from e
            logger.info("Inspecting the workers: the broker connection failed (%s); again.", e)
    raise AssertionError("unreachable")


def consumers(timeout: float = 1.0) -> dict[str, list[str]] | None:
    """The worker processes that answer Celery's inspect, each with the queues it consumes.

    ``None`` without a broker (embedded or eager mode), where jobs run in process.

    :raises BrokerUnavailable: the broker could not be reached.
    """
    state = get_state()
    if state.embedded is not None or state.celery.conf.task_always_eager:
        return None
    answers = _active_queues(timeout)
    return {
        str(name): sorted(str(queue["name"]) for queue in queues or ())
        for name, queues in sorted(answers.items())
    }


def sends_messages() -> bool:
    """Whether a message this process publishes reaches a worker.

    Not in embedded mode in a process whose embedded worker does not run (a
    ``flask async-request`` command): its in-memory broker ends with it. A job
    put back to ``waiting`` there is left in the table, where the web process's
    embedded worker finds it when it starts, or at a sweep once it has waited
    ``ASYNC_REQUEST_WAITING_TIMEOUT``.
    """
    embedded = get_state().embedded
    return embedded is None or embedded.running


def retry_job(job_id: int) -> bool:
    """Run a ``failed`` job again: back to ``waiting`` with its reply and progress cleared.

    :returns: whether its message was sent: not when :func:`sends_messages` is false.
    :raises JobNotFound: there is no such job.
    :raises JobNotFailed: the job has not failed.
    :raises EnqueueError: the broker refused the message; the sweeper sends it later.
    """
    message = lifecycle.reset_for_retry(get_state().store(), job_id)
    if not sends_messages():
        return False
    publish(message)
    return True


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """What one :func:`sweep_jobs` did."""

    #: Waiting jobs whose message was sent again.
    republished: int
    #: Jobs whose worker was lost, put back to run again.
    requeued: int
    #: Jobs whose worker was lost and that had no retry left.
    failed: int
    #: Whether messages were sent (see :func:`sends_messages`): if not, the jobs
    #: put back wait in the table for the web process's embedded worker.
    sent: bool = True


def sweep_jobs(batch_size: int = SWEEP_BATCH_SIZE, *, all_waiting: bool = False) -> SweepResult:
    """Rescue jobs that no worker will finish by itself.

    * ``processing`` jobs whose lease ran out lost their worker (killed, machine
      gone): they run again while ``ASYNC_REQUEST_RETRY`` allows, else they fail
      with an error that says so.
    * ``waiting`` jobs due for longer than ``ASYNC_REQUEST_WAITING_TIMEOUT`` lost
      their message (broker restarted, or down at enqueue): it is sent again.
      A duplicate message is harmless, since a worker's claim is atomic.

    Each change is a conditional UPDATE, so sweepers running at once, or a
    worker finishing meanwhile, never step on each other.

    Where :func:`sends_messages` is false, rows are changed but no message is
    sent: the web process's embedded worker runs the waiting jobs.

    :param all_waiting: take every waiting job's message for lost, whenever it
        was due, and send them all, ``batch_size`` at a time: what the embedded
        worker does when it starts, since the messages of the process before it
        were in memory. One due later (a retry's backoff) is sent to run when it
        is due.
    """
    state = get_state()
    store = state.store()
    settings = state.settings
    sends = sends_messages()
    now = utcnow()
    requeued = failed = republished = 0

    for job in rows.lost_jobs(store, now, batch_size):
        if job.attempt <= settings.retry:
            if not lifecycle.requeue_lost(store, job, now):
                continue
            logger.warning("Job %s: its worker was lost; running it again.", job.id)
            requeued += 1
            if not sends:
                continue
            try:
                publish(lifecycle.message_of(job))
            except EnqueueError:
                logger.exception("Job %s could not be published; the next sweep retries.", job.id)
            continue
        expired = as_utc(job.lease_expires_at).isoformat(timespec="seconds")
        error = (
            f"The worker running this job was lost: its lease expired at {expired}"
            " with no reply stored."
        )
        if lifecycle.fail_lost(store, job, now, error) is not None:
            logger.error("Job %s: its worker was lost and no retry is left; failed.", job.id)
            failed += 1

    if sends and all_waiting:
        # Every waiting job, a page of ids at a time.
        after_id = 0
        while page := rows.waiting_jobs(store, after_id, batch_size):
            sent = _send_again(store, page, now)
            republished += sent
            if sent < len(page) or len(page) < batch_size:
                break
            after_id = page[-1].id
        if republished:
            logger.info(
                "Sent %s waiting jobs found in the table: a process before this one had"
                " their messages in memory.",
                republished,
            )
    elif sends and (stale := rows.stale_jobs(store, now - settings.waiting_timeout, batch_size)):
        republished = _send_again(store, stale, now)
        logger.warning("Sent %s waiting jobs again that no worker had claimed.", republished)
    jobs_swept.send(current_flask_app(), republished=republished, requeued=requeued, failed=failed)
    return SweepResult(republished, requeued, failed, sends)


def _send_again(store: JobStore, jobs: list[rows.WaitingJob], now: datetime) -> int:
    """Publish the messages of waiting ``jobs`` again; how many were sent before any failed."""
    sent = 0
    for waiting in jobs:
        later = (as_utc(waiting.due_at) - now).total_seconds()
        try:
            publish(lifecycle.message_of(waiting), countdown=later if later > 0 else None)
        except EnqueueError:
            logger.exception("Job %s could not be published; the next sweep retries.", waiting.id)
            break  # The broker is down: the rest would fail the same way.
        if later <= 0:
            # Restart its clock, so the next sweep leaves it to the workers for a while.
            lifecycle.touch_waiting(store, waiting.id)
        sent += 1
    return sent
