"""A running worker's link to its row: progress written sparingly, cancellation noticed."""

from __future__ import annotations

import logging
import types
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, current_app

from flask_async_request import Job, JobStatus, lifecycle, running
from flask_async_request.exceptions import DatabaseUnavailable, JobCancelled, StorageError
from flask_async_request.running import CHECK_INTERVAL, RunContext
from flask_async_request.signals import job_progress
from flask_async_request.store import JobStore
from tests import workers
from tests.conftest import INTERNALS, add_job, reload_job


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The clock RunContext reads, moved by the test."""
    clock = Clock()
    monkeypatch.setattr(running, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    return clock


@pytest.fixture
def store(app: Flask) -> JobStore:
    """The app's job store, which a run writes through."""
    return INTERNALS.job_store(current_app)


def claimed() -> Job:
    """A job claimed by its first attempt."""
    job = add_job(status=JobStatus.PROCESSING)
    job.attempts = 1
    current_app.extensions["sqlalchemy"].session.commit()
    return job


def run_of(app: Flask, store: JobStore, job: Job, *, writes: bool = True) -> RunContext:
    assert job.id is not None
    return RunContext(app, store, job.id, 1, writes=writes)


def cancel(job_id: int) -> None:
    """Mark the job cancelled, as a client's DELETE does."""
    session = current_app.extensions["sqlalchemy"].session
    session.execute(sa.update(Job).where(Job.id == job_id).values(status=JobStatus.CANCELLED))
    session.commit()


def test_a_report_stores_progress_and_message(app: Flask, store: JobStore, clock: Clock) -> None:
    """The first report is written to the row at once."""
    job = claimed()
    run_of(app, store, job).report(0.25, "a quarter")
    row = reload_job(job.id)
    assert (row.progress, row.progress_message) == (0.25, "a quarter")


def test_reports_within_the_interval_are_not_written(
    app: Flask, store: JobStore, clock: Clock
) -> None:
    """A report sooner than CHECK_INTERVAL after the last write is dropped; a later one is not."""
    job = claimed()
    run = run_of(app, store, job)
    run.report(0.1, "first")
    clock.now += CHECK_INTERVAL / 2
    run.report(0.2, "dropped")
    assert reload_job(job.id).progress_message == "first"
    clock.now += CHECK_INTERVAL
    run.report(0.3, "third")
    row = reload_job(job.id)
    assert (row.progress, row.progress_message) == (0.3, "third")


def test_a_written_report_is_signalled(app: Flask, store: JobStore, clock: Clock) -> None:
    """job_progress is sent for each written report only."""
    seen: list[dict[str, Any]] = []

    def record(sender: Flask, **report: Any) -> None:
        seen.append(report)

    job = claimed()
    run = run_of(app, store, job)
    with job_progress.connected_to(record, app):
        run.report(0.5, "half")
        run.report(0.6, "too soon")
    assert seen == [{"job_id": job.id, "progress": 0.5, "message": "half"}]


def test_a_report_on_a_cancelled_job_raises_job_cancelled(
    app: Flask, store: JobStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that finds the job cancelled raises JobCancelled; so does every report after it."""
    job = claimed()
    run = run_of(app, store, job)
    cancel(job.id)
    with pytest.raises(JobCancelled, match=f"Job {job.id} was cancelled"):
        run.report(0.5, None)
    assert run.cancelled()
    writes: list[int] = []
    monkeypatch.setattr(lifecycle, "set_progress", lambda *args: writes.append(1))
    clock.now += 10 * CHECK_INTERVAL
    with pytest.raises(JobCancelled):
        run.report(0.6, None)
    assert writes == []
    assert reload_job(job.id).progress != 0.5


def test_a_job_taken_over_counts_as_cancelled(app: Flask, store: JobStore, clock: Clock) -> None:
    """A report of an attempt that no longer holds the job raises JobCancelled."""
    job = claimed()
    run = run_of(app, store, job)
    session = current_app.extensions["sqlalchemy"].session
    session.execute(sa.update(Job).where(Job.id == job.id).values(attempts=2))
    session.commit()
    with pytest.raises(JobCancelled):
        run.report(0.5, "stale")
    assert reload_job(job.id).progress_message is None


def test_without_writes_progress_is_only_checked(app: Flask, store: JobStore, clock: Clock) -> None:
    """With writes=False a report stores nothing, yet still stops a cancelled job."""
    job = claimed()
    run = run_of(app, store, job, writes=False)
    run.report(0.5, "not stored")
    assert reload_job(job.id).progress_message is None
    cancel(job.id)
    clock.now += CHECK_INTERVAL
    with pytest.raises(JobCancelled):
        run.report(0.7, None)


def test_cancelled_is_read_at_most_once_per_interval(
    app: Flask, store: JobStore, clock: Clock
) -> None:
    """cancelled() reads the row at most every CHECK_INTERVAL, and stays true once true."""
    job = claimed()
    run = run_of(app, store, job)
    assert not run.cancelled()
    cancel(job.id)
    assert not run.cancelled()  # read too recently
    clock.now += CHECK_INTERVAL
    assert run.cancelled()
    clock.now += CHECK_INTERVAL
    assert run.cancelled()


def test_a_lost_connection_skips_the_report(
    app: Flask,
    store: JobStore,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A report that cannot reach the database is logged and skipped; the next one is written."""
    job = claimed()
    run = run_of(app, store, job)
    real = lifecycle.set_progress

    def unreachable(*args: Any) -> bool:
        raise DatabaseUnavailable("The jobs database could not be reached.")

    monkeypatch.setattr(lifecycle, "set_progress", unreachable)
    with caplog.at_level(logging.WARNING, logger="flask_async_request"):
        run.report(0.2, "lost")
    assert "could not be stored (DatabaseUnavailable); trying again" in caplog.text
    monkeypatch.setattr(lifecycle, "set_progress", real)
    clock.now += CHECK_INTERVAL
    run.report(0.4, "kept")
    assert reload_job(job.id).progress_message == "kept"


def test_a_refused_report_raises_storage_error(
    app: Flask, store: JobStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused report raises StorageError in the library's words, not the driver's."""

    def refused(*args: Any) -> bool:
        raise ValueError("driver: UPDATE async_request_jobs SET secret")

    monkeypatch.setattr(lifecycle, "set_progress", refused)
    job = claimed()
    with pytest.raises(StorageError) as info:
        run_of(app, store, job).report(0.2, None)
    assert info.value.job_id == job.id
    assert str(info.value).startswith("The progress report")
    assert "secret" not in str(info.value)


def test_a_cancel_check_that_cannot_read_is_not_a_cancel(
    app: Flask, store: JobStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cancelled() that cannot reach the database answers False and asks again later."""
    job = claimed()
    run = run_of(app, store, job)

    def unreachable(*args: Any) -> bool:
        raise DatabaseUnavailable("The jobs database could not be reached.")

    monkeypatch.setattr(lifecycle, "held", unreachable)
    assert not run.cancelled()
    monkeypatch.setattr(lifecycle, "held", lambda *args: False)
    clock.now += CHECK_INTERVAL
    assert run.cancelled()


def test_a_cancel_check_the_database_refuses_raises_storage_error(
    app: Flask, store: JobStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cancelled() whose read is refused raises StorageError naming the error's type only."""

    def refused(*args: Any) -> bool:
        raise ValueError("driver: SELECT secret")

    monkeypatch.setattr(lifecycle, "held", refused)
    job = claimed()
    with pytest.raises(StorageError, match=r"could not be read \(ValueError;") as info:
        run_of(app, store, job).cancelled()
    assert "secret" not in str(info.value)


def test_progress_in_a_tight_loop_writes_rarely(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100,000 reports cost a handful of writes."""
    writes: list[float] = []
    original = lifecycle.set_progress

    def counting(store: JobStore, *args: Any) -> bool:
        writes.append(args[2])
        return original(store, *args)

    monkeypatch.setattr(lifecycle, "set_progress", counting)
    job = Job.create_and_enqueue(workers.TightLoop, 100_000)
    assert job.status is JobStatus.PROCESSED
    assert 1 <= len(writes) <= 20
