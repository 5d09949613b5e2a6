"""The Celery app made from Flask config, and the messages sent through it.

Every message this library sends goes out here: a job to run, a callback to
deliver, a revoke. The tasks that receive them are registered in :mod:`.tasks`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from celery import Celery, Task
from flask import Flask

from .embedded import EmbeddedWorker
from .exceptions import ConfigurationError, EnqueueError
from .publisher import connect_timeout, sender_for
from .state import get_state

if TYPE_CHECKING:
    from .state import AsyncRequestState

logger = logging.getLogger("flask_async_request")

PROCESS_TASK = "flask_async_request.process_job"
PURGE_TASK = "flask_async_request.purge_jobs"
PURGE_SCHEDULE = "flask_async_request.purge_jobs"
SWEEP_TASK = "flask_async_request.sweep_jobs"
SWEEP_SCHEDULE = "flask_async_request.sweep_jobs"
CALLBACK_TASK = "flask_async_request.deliver_callback"


def _flask_task_class(app: Flask) -> type[Task]:
    class FlaskTask(Task):  # type: ignore[misc]
        """Runs every task of this Celery app inside the Flask app's context."""

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

    return FlaskTask


def make_celery(app: Flask, queue: str | None = None) -> tuple[Celery, EmbeddedWorker | None]:
    """Make (or reuse) the app's Celery app, stored in ``app.extensions["celery"]``.

    The Celery app is built from ``app.config["CELERY"]`` (lowercase Celery
    settings, the Flask documentation's convention); one already there is
    reused. Without a broker, jobs run on Celery's in-memory transport in a
    worker thread of the web process (embedded mode, for development).

    :param queue: ``ASYNC_REQUEST_QUEUE``: the made app's default queue (unless
        ``CELERY`` names one), so ``celery -A app worker`` with no ``-Q``
        consumes it.

    :raises ConfigurationError: ``CELERY`` is not a mapping.
    """
    celery_app: Celery | None = app.extensions.get("celery")
    if celery_app is not None:
        return celery_app, None
    conf = app.config.setdefault("CELERY", {})
    if not isinstance(conf, Mapping):
        raise ConfigurationError(
            f"CELERY is {conf!r}; expected a dict of lowercase Celery settings,"
            ' such as {"broker_url": "redis://127.0.0.1:6379/0"}.'
        )
    celery_app = Celery(app.import_name, task_cls=_flask_task_class(app))
    celery_app.config_from_object(dict(conf))
    if queue and "task_default_queue" not in conf:
        celery_app.conf.task_default_queue = queue
    embedded = None
    if not celery_app.conf.broker_url and not celery_app.conf.task_always_eager:
        celery_app.conf.broker_url = "memory://localhost/"
        celery_app.conf.broker_transport_options = {"polling_interval": 0.05}
        # The in-memory transport's queues are shared by the whole process: a
        # queue of its own keeps each embedded app's jobs with its own worker.
        celery_app.conf.task_default_queue = f"async-request-embedded-{uuid.uuid4().hex[:8]}"
        # It says it is for development when it starts: CLI commands start none.
        embedded = EmbeddedWorker(celery_app)
    else:
        _bound_connects(celery_app)
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app, embedded


def _bound_connects(celery_app: Celery) -> None:
    """Have a Redis broker's connects give up after ``broker_connection_timeout``.

    Celery's Redis transport has no connect timeout by itself: to a broker host
    that drops packets, each connect of ``apply_async``, of beat and of a
    worker waits for the kernel's SYN retries, over two minutes. The AMQP
    transport bounds its connects by ``broker_connection_timeout`` already; so
    do these now, unless ``broker_transport_options`` name a timeout.
    """
    timeout = connect_timeout(celery_app)
    if timeout is None:
        return
    with celery_app.connection_for_write() as probe:
        if probe.transport.driver_type != "redis":
            return
    conf = celery_app.conf
    conf.broker_transport_options = {
        **(conf.broker_transport_options or {}),
        "socket_connect_timeout": timeout,
    }


def task_id(job_id: int, uid: str) -> str:
    """The Celery task id of every message for a job, so one revoke stops them all.

    The uid makes it unique across databases and table resets: workers remember
    revoked ids, and Celery apps sharing a broker share their revokes.
    """
    return f"async-request-{job_id}-{uid}"


def uid_of(job_id: int, celery_task_id: str | None) -> str | None:
    """The job's uid carried by a message's :func:`task_id`; ``None`` for an id of another form.

    A message sent by other means (a task id of Celery's own, a test's
    ``apply``) carries no uid: it claims job ``job_id`` whatever its uid.
    """
    prefix = f"async-request-{job_id}-"
    if celery_task_id is None or not celery_task_id.startswith(prefix):
        return None
    uid = celery_task_id[len(prefix) :]
    return uid or None


class Message(NamedTuple):
    """What the message that runs a job needs, as stored with the job."""

    job_id: int
    uid: str
    #: The queue stored with the job; ``None``: ``ASYNC_REQUEST_QUEUE``.
    queue: str | None = None
    #: The job's time limit in seconds, if it has one.
    time_limit: float | None = None
    #: The job's worker path, where it is known.
    worker: str | None = None


def hard_time_limit(time_limit: float) -> float:
    """When a prefork worker's process is replaced, if its job is still running past its limit.

    The job itself fails at its limit; this later one only frees the process of
    a job stuck where no exception reaches it (a blocking call in C).
    """
    return time_limit + max(5.0, time_limit / 10)


def publish(message: Message, countdown: float | None = None) -> None:
    """Send the message that makes a worker run the job.

    :raises EnqueueError: the broker could not be reached; the row is left as it is.
    """
    state = get_state()
    if state.outbox is not None:
        state.outbox.publish(message.job_id, countdown)
        return
    options: dict[str, Any] = {"queue": message.queue or state.settings.queue}
    if state.embedded is not None:
        state.embedded.ensure_started()
        # The embedded worker serves every job of its app, from its app's own queue.
        options["queue"] = None
    elif message.time_limit is not None:
        options["time_limit"] = hard_time_limit(message.time_limit)
    try:
        queue = options["queue"] or state.celery.conf.task_default_queue
        sender = None
        if countdown is None and state.embedded is None:
            sender = sender_for(state.celery, queue)
        if sender is not None:
            sender.send(
                PROCESS_TASK,
                message.job_id,
                task_id(message.job_id, message.uid),
                queue,
                options.get("time_limit"),
            )
        else:
            state.celery.tasks[PROCESS_TASK].apply_async(
                (message.job_id,),
                countdown=countdown,
                task_id=task_id(message.job_id, message.uid),
                **options,
            )
    except Exception as e:
        if state.celery.conf.task_always_eager:
            raise
        raise EnqueueError(
            f"Job {message.job_id} is stored but its message could not be published: {e}",
            message.job_id,
        ) from e


def start_embedded_worker() -> None:
    """Start the app's embedded worker, if it has one, unless a test's runner keeps its messages.

    Run before each request of an app in embedded mode: the first one starts
    it, so that after a restart the jobs left run as soon as the app serves.
    """
    state = get_state()
    if state.embedded is not None and state.outbox is None:
        state.embedded.ensure_started()


def queue_callback(job_id: int) -> None:
    """Have the job's end POSTed to its callback url, by a task of its own.

    A broker that refuses the message is logged, not raised: the job has ended
    either way.
    """
    state = get_state()
    if state.outbox is not None:
        state.outbox.queue_callback(job_id)
        return
    # The embedded worker consumes its app's own queue only.
    queue = None if state.embedded is not None else state.settings.queue
    try:
        state.celery.tasks[CALLBACK_TASK].apply_async(
            (job_id,), queue=queue, task_id=f"async-request-callback-{job_id}"
        )
    except Exception:
        logger.exception("Job %s: its callback could not be queued.", job_id)


def revoke(state: AsyncRequestState, job_id: int, uid: str) -> None:
    """Tell the workers to drop job ``job_id``'s queued messages (best effort)."""
    if state.outbox is not None or state.celery.conf.task_always_eager:
        return
    try:
        state.celery.control.revoke(task_id(job_id, uid))
    except Exception:
        # The row is cancelled, which is what stops the job; the revoke only
        # spares a worker the claim attempt.
        logger.warning("Job %s: could not revoke its Celery task.", job_id, exc_info=True)
