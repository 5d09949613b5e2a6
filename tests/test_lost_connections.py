"""A database connection lost under a job: its claim and its reply are tried again, not dropped."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_async_request import DatabaseUnavailable, Job, JobStatus, asynchronous, lifecycle, tasks
from flask_async_request.runner import run_job
from flask_async_request.signals import job_finished
from flask_async_request.store import JobStore
from tests import workers
from tests.conftest import AppFactory, add_job, json_of, reload_job


def _lost() -> sa.exc.OperationalError:
    """What SQLAlchemy raises for a statement whose backend was terminated."""
    return sa.exc.OperationalError(
        "UPDATE async_request_jobs ...",
        {},
        Exception("terminating connection due to administrator command"),
        connection_invalidated=True,
    )


class Faults:
    """Loses the connection of chosen UPDATEs the store runs (claims, finishes), by count."""

    def __init__(self, lose: Callable[[int], bool], *, after_running: bool = False) -> None:
        self.lose = lose
        self.after_running = after_running
        self.updates = 0
        self.lost = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> Faults:
        real = JobStore.first

        def first(store: JobStore, statement: Any, params: dict[str, Any]) -> Any:
            # An UPDATE, or on PostgreSQL the SELECT that announces one's changed row.
            if "UPDATE" not in str(statement):
                return real(store, statement, params)
            self.updates += 1
            if not self.lose(self.updates):
                return real(store, statement, params)
            self.lost += 1
            if self.after_running:
                # Done and committed; only the answer is lost with the connection.
                real(store, statement, params)
            raise _lost()

        monkeypatch.setattr(JobStore, "first", first)
        return self


def test_claim_whose_connection_was_lost_is_tried_again(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim that hits a dead connection runs again on a fresh one, and the job runs."""
    job = add_job(args=["hello"])
    faults = Faults(lambda n: n == 1).install(monkeypatch)
    assert run_job(job.id) is JobStatus.PROCESSED
    assert faults.lost == 1
    assert reload_job(job.id).attempts == 1


def test_claim_stored_before_its_connection_was_lost_is_kept(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lost claim that had claimed the job is found again: the job runs, claimed once."""
    job = add_job(args=["hello"])
    faults = Faults(lambda n: n == 1, after_running=True).install(monkeypatch)
    assert run_job(job.id) is JobStatus.PROCESSED
    assert faults.lost == 1
    stored = reload_job(job.id)
    assert stored.attempts == 1
    assert stored.status is JobStatus.PROCESSED


def test_claim_that_cannot_reach_the_database_leaves_the_job_waiting(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its retries a claim raises DatabaseUnavailable; the job still waits for its run."""
    monkeypatch.setattr(lifecycle, "CLAIM_RETRY_FOR", 0.2)
    job = add_job(args=["hello"])
    Faults(lambda n: True).install(monkeypatch)
    with pytest.raises(DatabaseUnavailable, match=f"Claiming job {job.id}") as info:
        run_job(job.id)
    monkeypatch.undo()
    assert reload_job(job.id).status is JobStatus.WAITING
    # The driver's text is the cause's, not the message's.
    assert "administrator" not in str(info.value)
    assert "administrator" in str(info.value.__cause__)


def test_message_of_a_claim_that_cannot_reach_the_database_comes_again(
    app: Flask, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The task sends its message again with a countdown, and the job runs once it is claimed."""
    monkeypatch.setattr(lifecycle, "CLAIM_RETRY_FOR", 0.0)
    # The claim and its one try again at once are lost; the message's next delivery claims.
    faults = Faults(lambda n: n <= 2).install(monkeypatch)
    with caplog.at_level(logging.WARNING, "flask_async_request"):
        job = Job.create_and_enqueue(workers.Echo, "hello")
    assert faults.lost == 2
    assert "Its message comes again in 1 s." in caplog.text
    stored = reload_job(job.id)
    assert stored.status is JobStatus.PROCESSED
    assert stored.attempts == 1


def test_finish_whose_connection_was_lost_is_tried_again(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply whose store hits a dead connection is stored on a fresh one, not dropped."""
    job = add_job(args=["hello"])
    faults = Faults(lambda n: n == 2).install(monkeypatch)
    assert run_job(job.id) is JobStatus.PROCESSED
    assert faults.lost == 1
    assert reload_job(job.id).response is not None


def test_finish_stored_before_its_connection_was_lost_counts_as_ended(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lost finish that had stored the reply is the job's end, announced once: not dropped."""
    job = add_job(args=["hello"])
    finished: list[int] = []

    def record(sender: Flask, job_id: int, **extra: Any) -> None:
        finished.append(job_id)

    job_finished.connect(record)
    try:
        faults = Faults(lambda n: n == 2, after_running=True).install(monkeypatch)
        assert run_job(job.id) is JobStatus.PROCESSED
    finally:
        job_finished.disconnect(record)
    assert faults.lost == 1
    assert finished == [job.id]
    assert reload_job(job.id).status is JobStatus.PROCESSED


def test_finish_gives_up_after_half_the_lease(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply that cannot be stored for half the lease raises; the lease is left to the sweeper."""
    app = make_app(ASYNC_REQUEST_LEASE=1)
    with app.app_context():
        job = add_job(args=["hello"])
        faults = Faults(lambda n: n >= 2).install(monkeypatch)
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match=f"Storing job {job.id}'s reply"):
            run_job(job.id)
        assert 0.5 <= time.monotonic() - started < 1.5
        monkeypatch.undo()
        assert faults.lost > 2
        assert reload_job(job.id).status is JobStatus.PROCESSING


# Submissions -----------------------------------------------------------------------------


def _unreachable(make_app: AppFactory, tmp_path: Path) -> Flask:
    """An app whose database cannot be opened, with a plain view and an @asynchronous one."""
    app = make_app(
        create_tables=False, SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/missing/dir/app.db"
    )

    @app.post("/echo")
    def echo() -> Any:
        job = Job.create_and_enqueue(workers.Echo, "hello")
        return {"id": job.id}, 202

    @app.post("/doubled/<int:n>")
    @asynchronous
    def doubled(n: int) -> Any:
        return {"doubled": 2 * n}

    return app


def test_create_and_enqueue_raises_database_unavailable(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """A job that cannot be stored, its database out of reach, raises DatabaseUnavailable."""
    app = _unreachable(make_app, tmp_path)
    with app.app_context(), pytest.raises(DatabaseUnavailable) as info:
        Job.create_and_enqueue(workers.Echo, "hello")
    assert isinstance(info.value.__cause__, sa.exc.OperationalError)


@pytest.mark.parametrize("url", ["/echo", "/doubled/21"])
def test_a_view_that_cannot_store_its_job_answers_503(
    make_app: AppFactory, tmp_path: Path, url: str
) -> None:
    """503 with Retry-After and the JSON error envelope, as a poll gets: not a 500."""
    answer = _unreachable(make_app, tmp_path).test_client().post(url)
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "5"
    assert answer.json == {
        "errors": [{"message": "The job store is unavailable; try again later."}]
    }


def test_an_asynchronous_view_whose_wait_loses_the_database_answers_202(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job is stored: its 202 with token, not a 5xx that would have it submitted again."""
    app = make_app()

    @app.post("/doubled/<int:n>")
    @asynchronous
    def doubled(n: int) -> Any:
        return {"doubled": 2 * n}

    def lost(store: JobStore, job_id: int, timeout: float) -> None:
        raise _lost()

    monkeypatch.setattr(JobStore, "wait_until_finished", lost)
    answer = app.test_client().post("/doubled/21", headers={"Prefer": "wait=5"})
    assert answer.status_code == 202
    assert json_of(answer)["token"]


def test_a_claim_past_its_redeliveries_is_left_to_the_sweeper(
    app: Flask, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The task stops sending the message again after CLAIM_REDELIVERIES; the job still waits."""
    monkeypatch.setattr(lifecycle, "CLAIM_RETRY_FOR", 0.0)
    monkeypatch.setattr(tasks, "CLAIM_REDELIVERIES", 2)
    faults = Faults(lambda n: True).install(monkeypatch)
    with caplog.at_level(logging.WARNING, "flask_async_request"):
        job = Job.create_and_enqueue(workers.Echo, "hello")
    # Three deliveries, each a claim and its one try again at once.
    assert faults.lost == 6
    assert "The sweeper sends the job again." in caplog.text
    monkeypatch.undo()
    assert reload_job(job.id).status is JobStatus.WAITING
