"""The Celery tasks of this library, registered on the app's Celery app.

They run a job, deliver a callback, purge and sweep; each pushes its Flask
app's context and calls the plain function that does the work.
"""

from __future__ import annotations

import dataclasses
import logging
import weakref
from typing import TYPE_CHECKING, Any

import sqlalchemy.exc
from celery import Celery, Task
from celery.signals import worker_process_init
from flask import Flask

from .broker import (
    CALLBACK_TASK,
    PROCESS_TASK,
    PURGE_SCHEDULE,
    PURGE_TASK,
    SWEEP_SCHEDULE,
    SWEEP_TASK,
    uid_of,
)
from .callbacks import deliver, give_up
from .compat import on_every_app_finalized
from .exceptions import DatabaseUnavailable
from .leases import keeper
from .maintenance import sweep_jobs
from .retention import purge_expired
from .runner import run_job
from .state import get_state
from .webhooks import DeliveryError

if TYPE_CHECKING:
    from .config import Settings
    from .embedded import EmbeddedWorker

logger = logging.getLogger("flask_async_request")

#: Deliveries of a callback before it is given up, with backoff 2, 4 ... 600 s.
CALLBACK_RETRIES = 8

#: Times a job's message is sent again while its claim cannot reach the database,
#: after 1, 2, 4, 8, then every 10 s: with each claim's own tries, some five and a
#: half minutes, past the default ASYNC_REQUEST_WAITING_TIMEOUT, after which the
#: sweeper sends the job again once the database is back.
CLAIM_REDELIVERIES = 30
#: The longest wait before a job's message is delivered again (see CLAIM_REDELIVERIES).
MAX_CLAIM_COUNTDOWN = 10.0


def claim_countdown(retries: int) -> float:
    """Seconds before a job whose claim could not reach the database is tried again."""
    return float(min(2**retries, MAX_CLAIM_COUNTDOWN))


#: Apps whose engines a forked worker child must not share with its parent.
_apps: weakref.WeakSet[Flask] = weakref.WeakSet()


def register_tasks(celery_app: Celery, app: Flask, settings: Settings) -> None:
    """Register this library's tasks for ``app`` on ``celery_app``, and their schedule.

    :raises RuntimeError: ``celery_app`` serves another Flask app's jobs already.
    """
    if PROCESS_TASK in celery_app.tasks:
        raise RuntimeError(
            "The Celery app in app.extensions['celery'] already serves another Flask app's"
            " jobs; give each Flask app its own Celery app."
        )

    # The tasks push this app's context themselves, so they work on a Celery app
    # the user made too; base=Task keeps the context from being pushed twice.
    @celery_app.task(  # type: ignore[untyped-decorator]
        name=PROCESS_TASK, base=Task, shared=False, acks_late=True, ignore_result=True, bind=True
    )
    def process_job(task: Task, job_id: int) -> None:
        # The uid in its task id: a message outliving its job's table (a reset,
        # ids restarted) must not run the new job that has the same id.
        uid = uid_of(job_id, task.request.id)
        with app.app_context():
            try:
                run_job(job_id, uid)
            except DatabaseUnavailable as e:
                # A job not claimed is still waiting: it runs once the database
                # answers again, not after ASYNC_REQUEST_WAITING_TIMEOUT. (A
                # message for a job claimed meanwhile claims nothing.)
                if task.request.retries >= CLAIM_REDELIVERIES:
                    logger.error("%s The sweeper sends the job again.", e)
                    return
                countdown = claim_countdown(task.request.retries)
                logger.warning("%s Its message comes again in %g s.", e, countdown)
                raise task.retry(exc=e, countdown=countdown, max_retries=CLAIM_REDELIVERIES) from e

    @celery_app.task(  # type: ignore[untyped-decorator]
        name=PURGE_TASK, base=Task, shared=False, ignore_result=True
    )
    def purge_old_jobs() -> int:
        with app.app_context():
            return purge_expired()

    @celery_app.task(  # type: ignore[untyped-decorator]
        name=SWEEP_TASK, base=Task, shared=False, ignore_result=True
    )
    def sweep() -> dict[str, int]:
        with app.app_context():
            return dataclasses.asdict(sweep_jobs())

    @celery_app.task(  # type: ignore[untyped-decorator]
        name=CALLBACK_TASK, base=Task, shared=False, ignore_result=True, bind=True
    )
    def deliver_callback(task: Task, job_id: int) -> bool:
        deliveries = task.request.retries + 1
        with app.app_context():
            try:
                return deliver(job_id, deliveries)
            # A database that cannot be read now is as passing as a receiver that is down.
            except (DeliveryError, sqlalchemy.exc.OperationalError) as e:
                if task.request.retries >= CALLBACK_RETRIES:
                    give_up(job_id, deliveries, e)
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
    _apps.add(app)


def keep_embedded_jobs(embedded: EmbeddedWorker, app: Flask, settings: Settings) -> None:
    """Have ``app``'s embedded worker recover, sweep and give up its jobs as the sweeper would.

    When it starts, the jobs the process before left are recovered: every
    waiting one is sent to it (its message was in that process's memory), and
    running ones whose lease ran out run again or fail by the retry rules. Then
    it sweeps every ``ASYNC_REQUEST_SWEEP_INTERVAL``, since embedded mode has no
    beat. Jobs still running when it stops have their leases ended, so the next
    start recovers them at once.
    """

    def sweep(recovering: bool) -> None:
        with app.app_context():
            sweep_jobs(all_waiting=recovering)

    def give_up() -> None:
        with app.app_context():
            keeper.give_up(get_state(app).store())

    interval = settings.sweep_interval
    embedded.keep_jobs(sweep, None if interval is None else interval.total_seconds(), give_up)


def _adopt(celery_app: Celery) -> None:
    """Serve this library's jobs on a Celery app made for one of its Flask apps after it.

    The Flask documentation's recipe (``celery_init_app(app)``) replaces
    ``app.extensions["celery"]`` with a Celery app of its own. When that app is
    finalized (a worker starting on it, or its first task lookup), this
    library's tasks are registered on it, and jobs are published through it.
    """
    for app in list(_apps):
        state = app.extensions.get("async_request")
        # Compared by identity without narrowing celery_app's type.
        if state is None or id(app.extensions.get("celery")) != id(celery_app):
            continue
        if PROCESS_TASK not in celery_app.tasks:
            register_tasks(celery_app, app, state.settings)
            state.celery = celery_app
            logger.info(
                "flask-async-request: registered its tasks on the Celery app that replaced"
                " its own in app.extensions['celery'] (%s).",
                celery_app.main,
            )


# Every Celery app of the process passes through here when it is finalized, as
# for Celery's own shared tasks.
on_every_app_finalized(_adopt)


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
