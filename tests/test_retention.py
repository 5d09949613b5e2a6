"""retention: how long jobs are kept per status and worker class, and the purge's SQL on SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_async_request import Job, JobStatus, retention
from flask_async_request.config import Settings
from flask_async_request.retention import (
    FINISHED_STATUSES,
    age_filter,
    count_expired,
    count_purgeable,
    purge_expired,
    purge_jobs,
    retention_of,
)
from flask_async_request.store import JobStore
from flask_async_request.values import utcnow
from tests.conftest import INTERNALS, AppFactory, add_job, current_db
from tests.workers import KeptBriefly, KeptFailures


@pytest.fixture
def settings(app: Flask) -> Settings:
    """The app's settings, as the purge reads them."""
    return INTERNALS.settings(app)


@pytest.fixture
def store(app: Flask) -> Iterator[JobStore]:
    """The app's job store, which the purge's statements run on."""
    yield INTERNALS.job_store(app)


def remaining(app: Flask) -> set[str]:
    """The jobs left, each by its response (or its status when it has none)."""
    session = INTERNALS.db(app).session
    session.expire_all()
    return {job.response or job.status.value for job in session.query(Job)}


def fill() -> None:
    """Old and recent finished jobs, and pending ones."""
    old, recent = utcnow() - timedelta(hours=25), utcnow() - timedelta(hours=1)
    add_job(status=JobStatus.PROCESSED, response="old processed", finished_at=old)
    add_job(status=JobStatus.FAILED, response="old failed", finished_at=old)
    add_job(status=JobStatus.PROCESSED, response="recent processed", finished_at=recent)
    add_job(status=JobStatus.WAITING, response="waiting")
    add_job(status=JobStatus.PROCESSING, response="processing")


def _add(worker: str, status: JobStatus, age: timedelta, name: str) -> None:
    add_job(f"tests.workers:{worker}", status, response=name, finished_at=utcnow() - age)


def fill_workers() -> None:
    """Finished jobs of worker classes with their own retention, the default, and a removed one."""
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


def _created(status: JobStatus, age: timedelta, name: str) -> None:
    job = add_job(status=status, response=name)
    job.created_at = utcnow() - age
    current_db().session.commit()


# The policy ------------------------------------------------------------------------------


def test_retention_of_resolves_in_order(settings: Settings) -> None:
    """Failed jobs: failed_retention, then the failed setting, then retention, then the global."""
    assert retention_of(None, settings)[JobStatus.FAILED] == timedelta(days=1)
    assert retention_of(KeptBriefly, settings) == {
        JobStatus.PROCESSED: timedelta(minutes=10),
        JobStatus.CANCELLED: timedelta(minutes=10),
        JobStatus.FAILED: timedelta(minutes=10),
    }
    assert retention_of(KeptFailures, settings)[JobStatus.FAILED] == timedelta(days=7)
    assert retention_of(KeptFailures, settings)[JobStatus.PROCESSED] == timedelta(days=1)


def test_retention_of_names_the_finished_statuses_only(settings: Settings) -> None:
    """The policy covers processed, failed and cancelled jobs: never a pending one."""
    assert set(retention_of(None, settings)) == set(FINISHED_STATUSES)
    assert set(FINISHED_STATUSES) == {JobStatus.PROCESSED, JobStatus.FAILED, JobStatus.CANCELLED}


def test_the_failed_setting_ages_failed_jobs_only(make_app: AppFactory) -> None:
    """ASYNC_REQUEST_FAILED_JOBS_EXPIRATION changes failed jobs' age, not processed or cancelled."""
    app = make_app(ASYNC_REQUEST_FAILED_JOBS_EXPIRATION="7d", ASYNC_REQUEST_JOBS_EXPIRATION="2h")
    ages = retention_of(None, INTERNALS.settings(app))
    assert ages == {
        JobStatus.PROCESSED: timedelta(hours=2),
        JobStatus.CANCELLED: timedelta(hours=2),
        JobStatus.FAILED: timedelta(days=7),
    }


def test_a_class_failed_retention_beats_the_failed_setting(make_app: AppFactory) -> None:
    """A worker class's failed_retention wins over ASYNC_REQUEST_FAILED_JOBS_EXPIRATION."""
    app = make_app(ASYNC_REQUEST_FAILED_JOBS_EXPIRATION="1h")
    settings = INTERNALS.settings(app)
    assert retention_of(KeptFailures, settings)[JobStatus.FAILED] == timedelta(days=7)
    # A class with a retention only: its failed jobs follow the setting, not its retention.
    assert retention_of(KeptBriefly, settings)[JobStatus.FAILED] == timedelta(hours=1)


def test_a_retention_made_bad_after_definition_is_an_error_naming_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """retention_of refuses a retention that is not a duration, naming the class's attribute."""
    monkeypatch.setattr(KeptBriefly, "retention", "soon")
    with pytest.raises(ValueError, match=r"KeptBriefly\.retention"):
        retention_of(KeptBriefly, settings)


# purge_jobs and count_purgeable -------------------------------------------------------------


def test_purge_deletes_only_old_finished_jobs(app: Flask) -> None:
    """Old processed and failed jobs go; recent and pending ones stay."""
    fill()
    assert purge_jobs(timedelta(hours=24)) == 2
    assert remaining(app) == {"recent processed", "waiting", "processing"}


def test_purge_works_in_batches(app: Flask) -> None:
    """More rows than one batch are all deleted."""
    old = utcnow() - timedelta(days=2)
    for _ in range(7):
        add_job(status=JobStatus.PROCESSED, finished_at=old)
    assert purge_jobs(timedelta(hours=1), batch_size=3) == 7
    assert remaining(app) == set()


def test_purge_reports_the_running_total_after_each_batch(app: Flask) -> None:
    """progress gets the total deleted so far, once per batch."""
    old = utcnow() - timedelta(days=2)
    for _ in range(7):
        add_job(status=JobStatus.PROCESSED, finished_at=old)
    totals: list[int] = []
    purge_jobs(timedelta(hours=1), batch_size=3, progress=totals.append)
    assert totals == [3, 6, 7]


def test_purge_with_nothing_to_delete_reports_no_progress(app: Flask) -> None:
    """No batch, no progress call, and 0 deleted."""
    add_job(status=JobStatus.PROCESSED, finished_at=utcnow())
    totals: list[int] = []
    assert purge_jobs(timedelta(hours=1), progress=totals.append) == 0
    assert totals == []


def test_count_purgeable_counts_what_the_purge_deletes_and_deletes_nothing(app: Flask) -> None:
    """count_purgeable agrees with purge_jobs, and leaves every row in place."""
    fill()
    assert count_purgeable(timedelta(hours=24)) == 2
    assert len(remaining(app)) == 5
    assert purge_jobs(timedelta(hours=24)) == 2


def test_purge_of_named_statuses_only(app: Flask) -> None:
    """Statuses not named are kept, however old."""
    fill()
    assert purge_jobs(timedelta(hours=24), [JobStatus.FAILED]) == 1
    assert remaining(app) == {"old processed", "recent processed", "waiting", "processing"}


def test_pending_jobs_named_are_aged_from_their_creation(app: Flask) -> None:
    """A waiting or processing job, when named, goes once created longer ago than the age."""
    _created(JobStatus.WAITING, timedelta(days=2), "old waiting")
    _created(JobStatus.WAITING, timedelta(minutes=5), "new waiting")
    _created(JobStatus.PROCESSING, timedelta(days=2), "old processing")
    assert count_purgeable(timedelta(days=1), [JobStatus.WAITING]) == 1
    assert purge_jobs(timedelta(days=1), [JobStatus.WAITING, JobStatus.PROCESSING]) == 2
    assert remaining(app) == {"new waiting"}


@pytest.mark.parametrize("batch_size", [0, -1])
def test_a_batch_size_below_one_is_refused(app: Flask, batch_size: int) -> None:
    """Both purges refuse a batch size that would never delete anything, and delete nothing."""
    fill()
    with pytest.raises(ValueError, match=f"batch_size is {batch_size}"):
        purge_jobs(timedelta(0), batch_size=batch_size)
    with pytest.raises(ValueError, match=f"batch_size is {batch_size}"):
        purge_expired(batch_size=batch_size)
    assert len(remaining(app)) == 5


# purge_expired and count_expired: each worker class's retention --------------------------------


def test_purge_follows_each_worker_class_retention(app: Flask) -> None:
    """retention and failed_retention of a worker class beat the global expiration."""
    fill_workers()
    assert count_expired() == 7
    assert purge_expired(batch_size=2) == 7
    assert remaining(app) == {
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
        fill_workers()
        assert purge_expired() == 5
        assert remaining(app) == {
            "default recent",
            "default failed old",
            "brief recent",
            "brief failed past",
            "kept failure",
            "removed recent",
            "brief waiting",
        }


def test_a_changed_retention_applies_to_jobs_already_stored(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker classes are read at each purge: a longer retention now keeps older jobs."""
    fill_workers()
    monkeypatch.setattr(KeptBriefly, "retention", timedelta(days=30))
    purge_expired()
    assert {"brief past", "brief cancelled past", "brief failed past"} <= remaining(app)


def test_a_class_whose_retention_went_bad_gets_the_default(
    app: Flask, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A retention no longer a duration: its jobs are kept as long as the default, logged."""
    _add("KeptBriefly", JobStatus.PROCESSED, timedelta(hours=2), "brief past")
    _add("KeptBriefly", JobStatus.PROCESSED, timedelta(days=3), "brief old")
    monkeypatch.setattr(KeptBriefly, "retention", "soon")
    assert purge_expired() == 1
    assert remaining(app) == {"brief past"}
    assert "tests.workers:KeptBriefly with the default retention" in caplog.text


def test_purge_expired_of_named_statuses_only(app: Flask) -> None:
    """purge_expired with statuses deletes those past retention, and no other status."""
    fill_workers()
    assert count_expired([JobStatus.FAILED]) == 2
    assert purge_expired([JobStatus.FAILED]) == 2
    gone = {"default failed old", "brief failed past"}
    assert not gone & remaining(app)
    assert "default old" in remaining(app)


def test_purge_expired_ages_named_pending_jobs_by_the_global_expiration(app: Flask) -> None:
    """A pending status, when named, is aged from creation by ASYNC_REQUEST_JOBS_EXPIRATION."""
    _created(JobStatus.WAITING, timedelta(days=2), "old waiting")
    _created(JobStatus.WAITING, timedelta(hours=2), "new waiting")
    assert purge_expired([JobStatus.WAITING]) == 1
    assert remaining(app) == {"new waiting"}


# The SQL it becomes ------------------------------------------------------------------------------


def _matching(store: JobStore, condition: sa.ColumnElement[bool]) -> set[str]:
    rows = store.all(sa.select(Job.response).where(condition), {})
    return {row[0] for row in rows}


def test_age_filter_cuts_strictly_before_the_age(store: JobStore) -> None:
    """A job finished exactly at the cutoff is kept; one a second before it is matched."""
    now = utcnow()
    add_job(status=JobStatus.PROCESSED, response="at", finished_at=now - timedelta(hours=1))
    add_job(
        status=JobStatus.PROCESSED,
        response="before",
        finished_at=now - timedelta(hours=1, seconds=1),
    )
    condition = age_filter({JobStatus.PROCESSED: timedelta(hours=1)}, now)
    assert _matching(store, condition) == {"before"}


def test_age_filter_matches_nothing_for_statuses_not_named(store: JobStore) -> None:
    """Empty ages match no row; a status not named is never matched, however old."""
    old = utcnow() - timedelta(days=30)
    add_job(status=JobStatus.PROCESSED, response="processed", finished_at=old)
    add_job(status=JobStatus.FAILED, response="failed", finished_at=old)
    assert _matching(store, age_filter({})) == set()
    assert _matching(store, age_filter({JobStatus.FAILED: timedelta(days=1)})) == {"failed"}


def test_age_filter_gives_each_status_its_own_age(store: JobStore) -> None:
    """Processed and failed jobs of the same age are matched by their own status's age."""
    age = utcnow() - timedelta(hours=5)
    add_job(status=JobStatus.PROCESSED, response="processed", finished_at=age)
    add_job(status=JobStatus.FAILED, response="failed", finished_at=age)
    ages = {JobStatus.PROCESSED: timedelta(hours=1), JobStatus.FAILED: timedelta(days=1)}
    assert _matching(store, age_filter(ages)) == {"processed"}


def test_a_job_retried_between_select_and_delete_is_kept(
    app: Flask, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DELETE checks the condition again, so a row changed since its SELECT stays."""
    old = utcnow() - timedelta(days=2)
    gone = add_job(status=JobStatus.PROCESSED, finished_at=old).id
    # Picked by the SELECT while failed, then retried (waiting again) before the DELETE.
    retried = add_job(status=JobStatus.WAITING, finished_at=old).id
    calls = iter([[(gone,), (retried,)]])
    monkeypatch.setattr(store, "all", lambda *args: next(calls, []))
    assert (
        retention.delete_matching(store, retention.purge_filter(timedelta(days=1)), batch_size=10)
        == 1
    )
    assert {job.id for job in INTERNALS.db(app).session.query(Job)} == {retried}
