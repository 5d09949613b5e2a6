"""Periodic cleanup: finished jobs older than ASYNC_REQUEST_JOBS_EXPIRATION are deleted."""

from __future__ import annotations

from datetime import timedelta

from flask import Flask

from flask_async_request import Job, JobStatus
from flask_async_request.broker import PURGE_TASK
from flask_async_request.maintenance import purge_jobs
from flask_async_request.models import utcnow
from flask_async_request.state import get_state
from tests.conftest import AppFactory, add_job


def _remaining(app: Flask) -> set[str]:
    return {job.response or job.status.value for job in get_state(app).db.session.query(Job)}


def _fill() -> None:
    old, recent = utcnow() - timedelta(hours=25), utcnow() - timedelta(hours=1)
    add_job(status=JobStatus.PROCESSED, response="old processed", finished_at=old)
    add_job(status=JobStatus.FAILED, response="old failed", finished_at=old)
    add_job(status=JobStatus.PROCESSED, response="recent processed", finished_at=recent)
    add_job(status=JobStatus.WAITING, response="waiting")
    add_job(status=JobStatus.PROCESSING, response="processing")


def test_purge_deletes_only_old_finished_jobs(app: Flask) -> None:
    """Old processed and failed jobs go; recent and pending ones stay."""
    _fill()
    assert purge_jobs(timedelta(hours=24)) == 2
    assert _remaining(app) == {"recent processed", "waiting", "processing"}


def test_purge_works_in_batches(app: Flask) -> None:
    """More rows than one batch are all deleted."""
    old = utcnow() - timedelta(days=2)
    for _ in range(7):
        add_job(status=JobStatus.PROCESSED, finished_at=old)
    assert purge_jobs(timedelta(hours=1), batch_size=3) == 7
    assert _remaining(app) == set()


def test_cleanup_task_uses_jobs_expiration(make_app: AppFactory) -> None:
    """The beat task purges with ASYNC_REQUEST_JOBS_EXPIRATION."""
    app = make_app(ASYNC_REQUEST_JOBS_EXPIRATION=timedelta(minutes=30))
    with app.app_context():
        _fill()
        assert app.extensions["celery"].tasks[PURGE_TASK].delay().get() == 3
        assert _remaining(app) == {"waiting", "processing"}
