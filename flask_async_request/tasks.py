"""The Celery app made from Flask config, and the tasks that process and purge jobs."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import uuid
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from celery import Celery, Task
from celery._state import _set_task_join_will_block
from celery.signals import worker_process_init
from flask import Flask

from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from .config import Settings

logger = logging.getLogger("flask_async_request")

PROCESS_TASK = "flask_async_request.process_job"
PURGE_TASK = "flask_async_request.purge_jobs"
PURGE_SCHEDULE = "flask_async_request.purge_jobs"
SWEEP_TASK = "flask_async_request.sweep_jobs"
CALLBACK_TASK = "flask_async_request.deliver_callback"
#: Deliveries of a callback before it is given up, with backoff 2, 4 ... 600 s.
CALLBACK_RETRIES = 8
SWEEP_SCHEDULE = "flask_async_request.sweep_jobs"

#: Apps whose engines a forked worker child must not share with its parent.
_apps: weakref.WeakSet[Flask] = weakref.WeakSet()


def _flask_task_class(app: Flask) -> type[Task]:
    class FlaskTask(Task):  # type: ignore[misc]
        """Runs every task of this Celery app inside the Flask app's context."""

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

    return FlaskTask


def init_celery(app: Flask, settings: Settings) -> tuple[Celery, EmbeddedWorker | None]:
    """Make (or reuse) the app's Celery app and register this library's tasks on it.

    The Celery app is built from ``app.config["CELERY"]`` (lowercase Celery
    settings, the Flask documentation's convention) and stored in
    ``app.extensions["celery"]``; one already there is reused. Without a
    broker, jobs run on Celery's in-memory transport in a worker thread of the
    web process (embedded mode, for development).
    """
    celery_app: Celery | None = app.extensions.get("celery")
    embedded = None
    if celery_app is None:
        conf = app.config.setdefault("CELERY", {})
        if not isinstance(conf, Mapping):
            raise ConfigurationError(
                f"CELERY is {conf!r}; expected a dict of lowercase Celery settings,"
                ' such as {"broker_url": "redis://127.0.0.1:6379/0"}.'
            )
        celery_app = Celery(app.import_name, task_cls=_flask_task_class(app))
        celery_app.config_from_object(dict(conf))
        if not celery_app.conf.broker_url and not celery_app.conf.task_always_eager:
            celery_app.conf.broker_url = "memory://localhost/"
            celery_app.conf.broker_transport_options = {"polling_interval": 0.05}
            # The in-memory transport's queues are shared by the whole process: a
            # queue of its own keeps each embedded app's jobs with its own worker.
            celery_app.conf.task_default_queue = f"async-request-embedded-{uuid.uuid4().hex[:8]}"
            embedded = EmbeddedWorker(celery_app)
            logger.warning(
                "flask-async-request runs jobs in an embedded worker inside this process because"
                ' CELERY has no "broker_url". This is for development only: in production set'
                " a broker (Redis or RabbitMQ) and run `celery worker` processes."
            )
        celery_app.set_default()
        app.extensions["celery"] = celery_app
    elif PROCESS_TASK in celery_app.tasks:
        raise RuntimeError(
            "The Celery app in app.extensions['celery'] already serves another Flask app's"
            " jobs; give each Flask app its own Celery app."
        )
    _register_tasks(celery_app, app, settings)
    _apps.add(app)
    return celery_app, embedded


def _register_tasks(celery_app: Celery, app: Flask, settings: Settings) -> None:
    # The tasks push this app's context themselves, so they work on a Celery app
    # the user made too; base=Task keeps the context from being pushed twice.
    @celery_app.task(  # type: ignore[untyped-decorator]
        name=PROCESS_TASK, base=Task, shared=False, acks_late=True, ignore_result=True
    )
    def process_job(job_id: int) -> None:
        from .jobs import run_job

        with app.app_context():
            run_job(job_id)

    @celery_app.task(  # type: ignore[untyped-decorator]
        name=PURGE_TASK, base=Task, shared=False, ignore_result=True
    )
    def purge_jobs() -> int:
        from .maintenance import purge_jobs as purge

        with app.app_context():
            return purge(settings.jobs_expiration)

    @celery_app.task(  # type: ignore[untyped-decorator]
        name=SWEEP_TASK, base=Task, shared=False, ignore_result=True
    )
    def sweep_jobs() -> dict[str, int]:
        from .maintenance import sweep_jobs as sweep

        with app.app_context():
            return dataclasses.asdict(sweep())

    @celery_app.task(  # type: ignore[untyped-decorator]
        name=CALLBACK_TASK, base=Task, shared=False, ignore_result=True, bind=True
    )
    def deliver_callback(task: Task, job_id: int) -> bool:
        from .webhooks import DeliveryError, deliver

        with app.app_context():
            try:
                return deliver(job_id)
            except DeliveryError as e:
                if task.request.retries >= CALLBACK_RETRIES:
                    logger.error("Job %s: giving up its callback: %s", job_id, e)
                    return False
                logger.warning("Job %s: callback failed, will retry: %s", job_id, e)
                countdown = min(2 ** (task.request.retries + 1), 600)
                raise task.retry(exc=e, countdown=countdown, max_retries=CALLBACK_RETRIES) from e

    schedule = dict(celery_app.conf.beat_schedule or {})
    # Workers started for this app consume ASYNC_REQUEST_QUEUE, maybe only it.
    options = {"options": {"queue": settings.queue}} if settings.queue else {}
    if settings.clean_jobs:
        schedule[PURGE_SCHEDULE] = {
            "task": PURGE_TASK,
            "schedule": settings.clean_jobs_cron,
            **options,
        }
    if settings.sweep_interval is not None:
        schedule[SWEEP_SCHEDULE] = {
            "task": SWEEP_TASK,
            "schedule": settings.sweep_interval,
            **options,
        }
    celery_app.conf.beat_schedule = schedule


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _dispose_inherited_pools(**kwargs: Any) -> None:
    """Give each forked worker child its own connection pools.

    Connections opened by the parent before the fork would otherwise be shared
    by several children, which corrupts their transactions under load.
    """
    for app in list(_apps):
        sqlalchemy = app.extensions.get("sqlalchemy")
        if sqlalchemy is None:
            continue
        with app.app_context():
            for engine in sqlalchemy.engines.values():
                engine.dispose(close=False)


class EmbeddedWorker:
    """A Celery worker in a daemon thread of the web process, for embedded mode.

    It starts on the first enqueue, so CLI commands and tests that enqueue
    nothing start no thread.
    """

    def __init__(self, celery_app: Celery, concurrency: int = 2) -> None:
        self.celery_app = celery_app
        self.concurrency = concurrency
        self._lock = threading.Lock()
        self._controller: Any = None
        self._thread: threading.Thread | None = None
        self._pid: int | None = None

    @property
    def running(self) -> bool:
        """Whether the worker thread was started in this process."""
        return self._controller is not None and self._pid == os.getpid()

    def ensure_started(self) -> None:
        """Start the worker thread unless it already runs in this process."""
        if self.running:
            return
        with self._lock:
            if self.running:
                return
            from celery.worker import WorkController

            self.celery_app.finalize()
            ready = threading.Event()
            controller = WorkController(
                app=self.celery_app,
                hostname=f"embedded-{os.getpid()}@{socket.gethostname()}",
                pool="threads",
                concurrency=self.concurrency,
                without_heartbeat=True,
                without_mingle=True,
                without_gossip=True,
                ready_callback=lambda *a: ready.set(),
            )
            thread = threading.Thread(
                target=controller.start, name="flask-async-request-worker", daemon=True
            )
            thread.start()
            # Publishing before the consumer is up is safe (the message waits in
            # the in-memory queue), but waiting makes start-up errors visible here.
            ready.wait(timeout=10)
            # Starting a pool marks the whole process as a worker, where
            # AsyncResult.get() is refused; the web process is not one.
            _set_task_join_will_block(False)
            self._controller, self._thread, self._pid = controller, thread, os.getpid()

    def stop(self, timeout: float = 10) -> None:
        """Stop the worker thread, letting running jobs finish for up to ``timeout`` seconds."""
        with self._lock:
            if self.running:
                self._controller.stop(in_sighandler=False)
                if self._thread is not None:
                    self._thread.join(timeout)
            self._controller = self._thread = self._pid = None
