"""Periodic cleanup: finished jobs past their retention are deleted."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy.orm import scoped_session

from flask_async_request import Job, JobStatus, Worker
from flask_async_request.broker import PURGE_TASK
from flask_async_request.config import Settings
from flask_async_request.models import utcnow
from flask_async_request.retention import count_expired, purge_expired, purge_jobs, retention_of
from flask_async_request.store import JobStore
from tests.conftest import AppFactory, add_job
from tests.workers import KeptBriefly, KeptFailures


def _remaining(app: Flask) -> set[str]:
    session = app.extensions["sqlalchemy"].session
    return {job.response or job.status.value for job in session.query(Job)}


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


# Retention per worker class ----------------------------------------------------------------


def _add(worker: str, status: JobStatus, age: timedelta, name: str) -> None:
    add_job(f"tests.workers:{worker}", status, response=name, finished_at=utcnow() - age)


def _fill_workers() -> None:
    hours, days = timedelta(hours=2), timedelta(days=3)
    _add("Echo", JobStatus.PROCESSED, hours, "default recent")
    _add("Echo", JobStatus.PROCESSED, days, "default old")
    _add("Echo", JobStatus.FAILED, days, "default failed old")
    _add("KeptBriefly", JobStatus.PROCESSED, hours, "brief past")
    _add("KeptBriefly", JobStatus.PROCESSED, timedelta(minutes=1), "brief recent")
    _add("KeptBriefly", JobStatus.CANCELLED, hours, "brief cancelled past")
    _add("KeptBriefly", JobStatus.FAILED, hours, "brief failed past")
    _add("KeptFailures", JobStatus.FAILED, days, "kept failure")
    _add("KeptFailures", JobStatus.PROCESSED, days, "kept processed old")
    # A worker class removed since the job ran: the default retention applies.
    _add("Removed", JobStatus.PROCESSED, days, "removed old")
    _add("Removed", JobStatus.PROCESSED, hours, "removed recent")
    add_job("tests.workers:KeptBriefly", JobStatus.WAITING, response="brief waiting")


def test_purge_follows_each_worker_class_retention(app: Flask) -> None:
    """retention and failed_retention of a worker class beat the global expiration."""
    _fill_workers()
    assert count_expired() == 7
    assert purge_expired(batch_size=2) == 7
    assert _remaining(app) == {
        "default recent",
        "brief recent",
        "kept failure",
        "removed recent",
        "brief waiting",
    }


def test_failed_jobs_expiration_keeps_failures_longer(make_app: AppFactory) -> None:
    """ASYNC_REQUEST_FAILED_JOBS_EXPIRATION ages failed jobs of classes without their own."""
    app = make_app(ASYNC_REQUEST_FAILED_JOBS_EXPIRATION="7d")
    with app.app_context():
        _fill_workers()
        assert purge_expired() == 5
        assert _remaining(app) == {
            "default recent",
            "default failed old",
            "brief recent",
            "brief failed past",
            "kept failure",
            "removed recent",
            "brief waiting",
        }


def test_cleanup_task_follows_worker_retention(app: Flask) -> None:
    """The beat task purges by each job's retention, not only the global age."""
    _fill_workers()
    assert app.extensions["celery"].tasks[PURGE_TASK].delay().get() == 7
    assert "brief past" not in _remaining(app)


def test_retention_of_resolves_in_order(async_settings: Settings) -> None:
    """Failed jobs: failed_retention, then the failed setting, then retention, then the global."""
    settings = async_settings
    assert retention_of(None, settings)[JobStatus.FAILED] == timedelta(days=1)
    assert retention_of(KeptBriefly, settings) == {
        JobStatus.PROCESSED: timedelta(minutes=10),
        JobStatus.CANCELLED: timedelta(minutes=10),
        JobStatus.FAILED: timedelta(minutes=10),
    }
    assert retention_of(KeptFailures, settings)[JobStatus.FAILED] == timedelta(days=7)
    assert retention_of(KeptFailures, settings)[JobStatus.PROCESSED] == timedelta(days=1)


@pytest.mark.parametrize("value", [-1, 0, "1h", float("nan")])
def test_bad_retention_is_refused_when_the_class_is_defined(value: object) -> None:
    """A retention the purge could not use is an error at once, not hours later."""
    with pytest.raises(ValueError, match=r"Bad\.retention is"):

        class Bad(Worker):
            retention = value  # type: ignore[assignment]


def test_a_job_retried_between_select_and_delete_is_kept(
    session: scoped_session[Any], job_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DELETE checks the condition again, so a row changed since its SELECT stays."""
    from flask_async_request import retention

    old = utcnow() - timedelta(days=2)
    gone = add_job(status=JobStatus.PROCESSED, finished_at=old).id
    # Picked by the SELECT while failed, then retried (waiting again) before the DELETE.
    retried = add_job(status=JobStatus.WAITING, finished_at=old).id
    store = job_store
    calls = iter([[(gone,), (retried,)]])
    monkeypatch.setattr(store, "all", lambda *args: next(calls, []))
    assert (
        retention.delete_matching(store, retention.purge_filter(timedelta(days=1)), batch_size=10)
        == 1
    )
    assert {job.id for job in session.query(Job)} == {retried}
