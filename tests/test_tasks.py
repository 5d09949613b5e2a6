"""The Celery tasks registered for an app: running a job, callbacks, purge, sweep, beat."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from flask_async_request import JobStatus, tasks
from flask_async_request.broker import (
    CALLBACK_TASK,
    PROCESS_TASK,
    PURGE_SCHEDULE,
    PURGE_TASK,
    SWEEP_SCHEDULE,
    SWEEP_TASK,
    task_id,
    uid_of,
)
from flask_async_request.config import load_settings
from flask_async_request.exceptions import DatabaseUnavailable
from flask_async_request.tasks import (
    CALLBACK_RETRIES,
    CLAIM_REDELIVERIES,
    MAX_CLAIM_COUNTDOWN,
    claim_countdown,
    register_tasks,
)
from flask_async_request.values import new_uid, utcnow
from flask_async_request.webhooks import DeliveryError
from tests.conftest import AppFactory, add_job, reload_job

ALL_TASKS = (PROCESS_TASK, PURGE_TASK, SWEEP_TASK, CALLBACK_TASK)


@pytest.mark.parametrize(
    ("retries", "countdown"), [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (29, 10.0)]
)
def test_claim_countdown_doubles_up_to_its_cap(retries: int, countdown: float) -> None:
    """A claim that cannot reach the database is tried again after 1, 2, 4, 8, then 10 s."""
    assert claim_countdown(retries) == countdown <= MAX_CLAIM_COUNTDOWN


def test_every_task_is_registered(app: Flask) -> None:
    """The app's Celery app has the library's four tasks under their names."""
    registered = app.extensions["celery"].tasks
    assert all(name in registered for name in ALL_TASKS)


def test_a_celery_app_serves_one_flask_app(app: Flask) -> None:
    """Registering the tasks for a second Flask app on the same Celery app is refused."""
    other = Flask("other")
    other.config["SECRET_KEY"] = "another-secret-key-long-enough-for-hs256-signing"
    with pytest.raises(RuntimeError, match="already serves another Flask app's jobs"):
        register_tasks(app.extensions["celery"], other, load_settings(other.config))


def test_process_job_runs_the_job(app: Flask) -> None:
    """process_job(job id) claims and runs the job in the app's context."""
    job = add_job()
    app.extensions["celery"].tasks[PROCESS_TASK].apply((job.id,))
    stored = reload_job(job.id)
    assert (stored.status, stored.status_code) == (JobStatus.PROCESSED, 200)


def test_a_message_with_its_job_s_uid_runs_the_job(app: Flask) -> None:
    """A message whose task id carries the job's uid claims and runs the job."""
    job = add_job()
    app.extensions["celery"].tasks[PROCESS_TASK].apply((job.id,), task_id=task_id(job.id, job.uid))
    assert reload_job(job.id).status is JobStatus.PROCESSED


def test_a_message_with_another_uid_claims_nothing(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    """A message for the job's id and another uid (a table reset since) leaves the job waiting
    for its own message, and is logged once."""
    job = add_job()
    process = app.extensions["celery"].tasks[PROCESS_TASK]
    with caplog.at_level(logging.INFO, logger="flask_async_request"):
        process.apply((job.id,), task_id=task_id(job.id, new_uid()))
    stored = reload_job(job.id)
    assert (stored.status, stored.attempts, stored.started_at) == (JobStatus.WAITING, 0, None)
    assert caplog.text.count("is not waiting") == 1
    assert "another job's now" in caplog.text
    process.apply((job.id,), task_id=task_id(job.id, job.uid))
    assert reload_job(job.id).status is JobStatus.PROCESSED


def test_a_task_id_of_another_form_claims_the_job_by_its_id(app: Flask) -> None:
    """A message whose task id is not the library's carries no uid: it claims by id, as before."""
    job = add_job()
    app.extensions["celery"].tasks[PROCESS_TASK].apply((job.id,), task_id="celery-made-this-id")
    assert reload_job(job.id).status is JobStatus.PROCESSED


@pytest.mark.parametrize(
    ("celery_task_id", "uid"),
    [
        (f"async-request-7-{'a' * 32}", "a" * 32),
        (f"async-request-70-{'a' * 32}", None),
        ("async-request-7-", None),
        ("async-request-callback-7", None),
        ("3f2c9d6e-1b7a-4c55-9a0e-7d2b8c1e4f60", None),
        (None, None),
    ],
)
def test_uid_of_reads_the_library_s_task_ids_only(
    celery_task_id: str | None, uid: str | None
) -> None:
    """uid_of gives the uid of job 7's task id, and None for any other form."""
    assert uid_of(7, celery_task_id) == uid


def test_a_claim_that_cannot_reach_the_database_is_delivered_again(
    app: Flask, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The message comes again, CLAIM_REDELIVERIES times with its job's uid, then the sweeper's
    turn is logged."""
    claims: list[tuple[int, str | None]] = []

    def unreachable(job_id: int, uid: str | None = None) -> None:
        claims.append((job_id, uid))
        raise DatabaseUnavailable("The jobs database could not be reached.")

    monkeypatch.setattr(tasks, "run_job", unreachable)
    uid = new_uid()
    with caplog.at_level(logging.WARNING, logger="flask_async_request"):
        app.extensions["celery"].tasks[PROCESS_TASK].apply((7,), task_id=task_id(7, uid))
    assert claims == [(7, uid)] * (CLAIM_REDELIVERIES + 1)
    assert "Its message comes again in 1 s." in caplog.text
    assert "Its message comes again in 10 s." in caplog.text
    assert caplog.text.count("The sweeper sends the job again.") == 1


def test_another_error_of_a_claim_is_not_delivered_again(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only an unreachable database makes the message come again."""
    claims: list[int] = []

    def broken(job_id: int, uid: str | None = None) -> None:
        claims.append(job_id)
        raise KeyError("not the database")

    monkeypatch.setattr(tasks, "run_job", broken)
    result = app.extensions["celery"].tasks[PROCESS_TASK].apply((7,))
    assert isinstance(result.result, KeyError)
    assert claims == [7]


def test_deliver_callback_answers_what_the_delivery_did(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deliver_callback returns deliver's answer, for the first delivery."""
    calls: list[tuple[int, int]] = []

    def deliver(job_id: int, deliveries: int) -> bool:
        calls.append((job_id, deliveries))
        return True

    monkeypatch.setattr(tasks, "deliver", deliver)
    result = app.extensions["celery"].tasks[CALLBACK_TASK].apply((3,))
    assert result.result is True
    assert calls == [(3, 1)]


def test_a_failing_callback_is_retried_then_given_up(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver that keeps failing is tried CALLBACK_RETRIES more times, then given up once."""
    deliveries: list[int] = []
    given_up: list[tuple[int, int, str]] = []

    def deliver(job_id: int, attempt: int) -> bool:
        deliveries.append(attempt)
        raise DeliveryError("receiver down")

    def give_up(job_id: int, attempt: int, error: Exception) -> None:
        given_up.append((job_id, attempt, str(error)))

    monkeypatch.setattr(tasks, "deliver", deliver)
    monkeypatch.setattr(tasks, "give_up", give_up)
    result = app.extensions["celery"].tasks[CALLBACK_TASK].apply((3,))
    assert deliveries == list(range(1, CALLBACK_RETRIES + 2))
    assert given_up == [(3, CALLBACK_RETRIES + 1, "receiver down")]
    assert result.result is False


def test_the_purge_task_deletes_expired_jobs(app: Flask) -> None:
    """purge_jobs deletes the finished jobs past their retention and returns how many."""
    old = add_job(status=JobStatus.PROCESSED, finished_at=utcnow() - timedelta(days=30))
    fresh = add_job(status=JobStatus.PROCESSED, finished_at=utcnow())
    old_id, fresh_id = old.id, fresh.id
    result = app.extensions["celery"].tasks[PURGE_TASK].apply()
    assert result.result == 1
    assert reload_job(fresh_id).id == fresh_id
    session = app.extensions["sqlalchemy"].session
    session.expire_all()
    assert session.get(type(fresh), old_id) is None


def test_the_sweep_task_returns_what_it_did(app: Flask) -> None:
    """sweep_jobs returns the sweep's counts as a dict, a lost job failed."""
    job = add_job(status=JobStatus.PROCESSING)
    job.attempts = 1
    job.lease_expires_at = utcnow() - timedelta(seconds=5)
    app.extensions["sqlalchemy"].session.commit()
    result = app.extensions["celery"].tasks[SWEEP_TASK].apply()
    assert result.result["failed"] == 1
    assert set(result.result) >= {"republished", "requeued", "failed"}
    assert reload_job(job.id).status is JobStatus.FAILED


def test_forked_children_get_pools_of_their_own(app: Flask) -> None:
    """worker_process_init replaces each engine's pool, leaving the parent's connections open."""
    engine = app.extensions["sqlalchemy"].engine
    inherited = engine.pool
    tasks._dispose_inherited_pools()
    assert engine.pool is not inherited


# The beat schedule ------------------------------------------------------------------------


def test_beat_schedule_has_the_cleanup(app: Flask) -> None:
    """ASYNC_REQUEST_CLEAN_JOBS (default on) adds the purge to the beat schedule."""
    entry = app.extensions["celery"].conf.beat_schedule[PURGE_SCHEDULE]
    assert entry["task"] == PURGE_TASK
    assert entry["schedule"].hour == {0}
    assert entry["schedule"].minute == {0}


def test_cleanup_can_be_switched_off(make_app: AppFactory) -> None:
    """ASYNC_REQUEST_CLEAN_JOBS=False leaves the beat schedule alone."""
    app = make_app(ASYNC_REQUEST_CLEAN_JOBS=False)
    assert PURGE_SCHEDULE not in (app.extensions["celery"].conf.beat_schedule or {})


def test_cleanup_goes_to_the_jobs_queue(make_app: AppFactory) -> None:
    """With ASYNC_REQUEST_QUEUE set, beat sends the purge to that queue."""
    app = make_app(ASYNC_REQUEST_QUEUE="jobs", ASYNC_REQUEST_CLEAN_JOBS_CRON=30)
    entry = app.extensions["celery"].conf.beat_schedule[PURGE_SCHEDULE]
    assert entry["options"] == {"queue": "jobs"}
    assert entry["schedule"].total_seconds() == 30


def test_sweep_runs_on_beat(app: Flask) -> None:
    """The sweeper is scheduled every ASYNC_REQUEST_SWEEP_INTERVAL, on Celery's default queue."""
    entry = app.extensions["celery"].conf.beat_schedule[SWEEP_SCHEDULE]
    assert entry["task"] == SWEEP_TASK
    assert entry["schedule"] == timedelta(seconds=30)
    assert "options" not in entry


def test_sweep_can_be_switched_off(make_app: AppFactory) -> None:
    """ASYNC_REQUEST_SWEEP_INTERVAL=None adds no beat entry."""
    app = make_app(ASYNC_REQUEST_SWEEP_INTERVAL=None)
    assert SWEEP_SCHEDULE not in app.extensions["celery"].conf.beat_schedule


def test_the_user_s_own_beat_entries_are_kept(make_app: AppFactory) -> None:
    """Entries CELERY's beat_schedule names stay beside the library's."""
    mine: dict[str, Any] = {"task": "myapp.report", "schedule": 60.0}
    app = make_app(CELERY={"task_always_eager": True, "beat_schedule": {"report": mine}})
    schedule = app.extensions["celery"].conf.beat_schedule
    assert schedule["report"] == mine
    assert {PURGE_SCHEDULE, SWEEP_SCHEDULE} <= set(schedule)
