"""What the library guarantees: one effect per claim, retries that wait, nothing stuck."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_async_request import EnqueueError, Job, JobStatus, accepted, asynchronous
from flask_async_request.maintenance import sweep_jobs
from flask_async_request.store import JobStore
from flask_async_request.values import utcnow
from tests import workers
from tests.conftest import AppFactory, add_job, current_db, json_of, poll, reload_job

BROKER_DOWN = {
    "broker_url": "redis://127.0.0.1:1/0",
    "broker_connection_retry": False,
    "broker_connection_max_retries": 0,
    "broker_transport_options": {"max_retries": 0},
}


# The keywords the library reserves ---------------------------------------------------


def test_enqueue_call_passes_a_commit_argument_to_execute(app: Flask) -> None:
    """enqueue_call gives execute the keyword names the library reserves."""
    job = Job.enqueue_call(workers.Echo, [1], {"commit": "abc123"})
    assert job.response is not None
    assert json.loads(job.response)["kwargs"] == {"commit": "abc123"}


# One effect per claim ------------------------------------------------------------------


# Retries ---------------------------------------------------------------------------------


# Nothing stuck: the sweeper --------------------------------------------------------------


def _processing(lease_from_now: float, attempts: int = 1) -> int:
    job = add_job(status=JobStatus.PROCESSING)
    job.attempts = attempts
    job.lease_expires_at = utcnow() + timedelta(seconds=lease_from_now)
    current_db().session.commit()
    return job.id


def test_job_stored_while_the_broker_was_down_runs_when_it_is_back(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """EnqueueError keeps the row; once the broker is back the sweeper gets it run."""
    database = f"sqlite:///{tmp_path}/shared.db"
    down = make_app(SQLALCHEMY_DATABASE_URI=database, CELERY=BROKER_DOWN)
    with down.app_context():
        with pytest.raises(EnqueueError) as info:
            Job.create_and_enqueue(workers.Echo, "late")
        job_id = info.value.job_id
        job = reload_job(job_id)
        job.due_at = utcnow() - timedelta(minutes=6)
        current_db().session.commit()
        assert sweep_jobs().republished == 0  # Still down: the job stays waiting.
    back = make_app(SQLALCHEMY_DATABASE_URI=database, create_tables=False)
    with back.app_context():
        assert sweep_jobs().republished == 1
        assert reload_job(job_id).status is JobStatus.PROCESSED


def _submitting_views(app: Flask) -> Flask:
    """A view that answers for the job EnqueueError holds, and an ``@asynchronous`` one."""

    @app.post("/echo")
    def echo() -> Any:
        try:
            job = Job.create_and_enqueue(workers.Echo, "late")
        except EnqueueError as e:
            job = e.job
        return accepted(job)

    @app.post("/doubled/<int:n>")
    @asynchronous
    def doubled(n: int) -> Any:
        return {"doubled": 2 * n}

    return app


@pytest.mark.parametrize(
    ("url", "body"), [("/echo", '{"args": ["late"]'), ("/doubled/21", '{"doubled":42}')]
)
def test_a_job_stored_while_the_broker_was_down_is_answered_202(
    make_app: AppFactory,
    tmp_path: Path,
    url: str,
    body: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not a 500: the job is stored, and runs once the broker is back.

    A 5xx would have the client submit it again, and both jobs would run. The
    ``@asynchronous`` view answers at once, not waiting for a job no worker has.
    """
    database = f"sqlite:///{tmp_path}/shared.db"
    down = _submitting_views(make_app(SQLALCHEMY_DATABASE_URI=database, CELERY=BROKER_DOWN))
    client = down.test_client()

    def never(*args: Any) -> None:
        raise AssertionError("waited for a job that was not sent")

    monkeypatch.setattr(JobStore, "wait_until_finished", never)
    answer = client.post(url, headers={"Prefer": "wait=30"})
    monkeypatch.undo()
    assert answer.status_code == 202, answer.data
    if url.startswith("/doubled"):
        assert "The sweeper sends it once the broker is back." in caplog.text
    assert answer.headers["Location"] == json_of(answer)["url"]
    token = json_of(answer)["token"]
    assert poll(client, token).json["status"] == "waiting"
    with down.app_context():
        job = current_db().session.query(Job).one()
        job.due_at = utcnow() - timedelta(minutes=6)
        current_db().session.commit()
    back = _submitting_views(make_app(SQLALCHEMY_DATABASE_URI=database, create_tables=False))
    with back.app_context():
        assert sweep_jobs().republished == 1
    finished = poll(back.test_client(), token)
    assert finished.status_code == 200
    assert finished.json["response"]["body"].startswith(body)


def test_sweep_command(app: Flask) -> None:
    """`flask async-request sweep` reports what it did."""
    _processing(-5)
    result = app.test_cli_runner().invoke(args=["async-request", "sweep"])
    assert result.exit_code == 0
    assert "Lost workers: 0 jobs put back to run, 1 failed." in result.output
