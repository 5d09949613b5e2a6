"""What the library guarantees: one effect per claim, retries that wait, nothing stuck."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_async_request import EnqueueError, Job, JobStatus, accepted, asynchronous
from flask_async_request.broker import PROCESS_TASK
from flask_async_request.maintenance import sweep_jobs
from flask_async_request.models import utcnow
from flask_async_request.runner import run_job
from flask_async_request.state import get_state
from flask_async_request.store import JobStore
from tests import workers
from tests.conftest import AppFactory, add_job, json_of, poll, reload_job

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


def test_reply_of_a_run_whose_lease_was_taken_over_is_dropped(app: Flask) -> None:
    """A worker that lost its job to another attempt does not overwrite it."""
    job = Job.create_and_enqueue(workers.Hijacked)
    job = reload_job(job.id)
    assert job.status is JobStatus.PROCESSING
    assert job.response is None
    assert job.attempts == 2


def test_lease_is_renewed_while_the_worker_runs(make_app: AppFactory) -> None:
    """A job running longer than its lease keeps it renewed."""
    app = make_app(ASYNC_REQUEST_LEASE=0.6)
    with app.app_context():
        job = Job.create_and_enqueue(workers.LeaseProbe, 1.0)
        assert job.response is not None
        probe = json.loads(job.response)
        assert probe["after"] > probe["before"]
        assert job.lease_expires_at is None


def test_short_job_costs_no_renewal(make_app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job done within a third of its lease is never renewed."""
    from flask_async_request.leases import LeaseKeeper

    renewals: list[int] = []
    monkeypatch.setattr(
        LeaseKeeper,
        "_renew",
        staticmethod(lambda engine, job_id, attempt, lease: renewals.append(job_id)),
    )
    app = make_app(ASYNC_REQUEST_LEASE=60)
    with app.app_context():
        for _ in range(5):
            Job.create_and_enqueue(workers.Echo)
    assert renewals == []


# Retries ---------------------------------------------------------------------------------


def test_retry_on_limits_what_is_retried(make_app: AppFactory, tmp_path: Path) -> None:
    """An exception outside Worker.retry_on fails the job at once."""
    app = make_app(ASYNC_REQUEST_RETRY=3)
    with app.app_context():
        counter = tmp_path / "value"
        job = Job.create_and_enqueue(workers.Picky, str(counter), "value")
        assert job.status is JobStatus.FAILED
        assert counter.read_text() == "1"
        counter = tmp_path / "connection"
        job = Job.create_and_enqueue(workers.Picky, str(counter), "connection")
        assert job.status is JobStatus.FAILED
        assert counter.read_text() == "4"


def test_retries_back_off_exponentially(
    make_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each retry is published with a doubled countdown and the job waits meanwhile."""
    app = make_app(ASYNC_REQUEST_RETRY=3)
    countdowns: list[float | None] = []
    with app.app_context():
        task = get_state().celery.tasks[PROCESS_TASK]
        real = task.apply_async

        def spy(args: tuple[int], **options: Any) -> Any:
            countdowns.append(options.get("countdown"))
            return real(args, **options)

        monkeypatch.setattr(task, "apply_async", spy)
        job = Job.create_and_enqueue(workers.FlakyThenOk, str(tmp_path / "runs"), 3)
        assert job.status is JobStatus.PROCESSED
    assert countdowns == [None, 1.0, 2.0, 4.0]


def test_job_waits_for_its_retry(make_app: AppFactory, tmp_path: Path) -> None:
    """Between attempts the job is waiting (the status endpoint answers 202), due later."""
    app = make_app(ASYNC_REQUEST_RETRY=1, CELERY=BROKER_DOWN)
    with app.app_context():
        job = add_job(worker="tests.workers:FlakyThenOk", args=[str(tmp_path / "runs"), 5])
        before = utcnow()
        assert run_job(job.id) is JobStatus.WAITING
        job = reload_job(job.id)
        assert job.status is JobStatus.WAITING
        assert job.due_at.replace(tzinfo=before.tzinfo) >= before + timedelta(seconds=0.9)
        response = app.test_client().get(
            "/async_request/job", headers={"X-JOB-AUTHORIZATION": job.token}
        )
        assert response.status_code == 202


# Nothing stuck: the sweeper --------------------------------------------------------------


def _processing(lease_from_now: float, attempts: int = 1) -> int:
    job = add_job(status=JobStatus.PROCESSING)
    job.attempts = attempts
    job.lease_expires_at = utcnow() + timedelta(seconds=lease_from_now)
    get_state().db.session.commit()
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
        get_state().db.session.commit()
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
        job = get_state().db.session.query(Job).one()
        job.due_at = utcnow() - timedelta(minutes=6)
        get_state().db.session.commit()
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


def test_sweep_runs_on_beat(app: Flask) -> None:
    """The sweeper is scheduled every ASYNC_REQUEST_SWEEP_INTERVAL."""
    entry = app.extensions["celery"].conf.beat_schedule["flask_async_request.sweep_jobs"]
    assert entry["schedule"] == timedelta(seconds=30)


def test_sweep_can_be_switched_off(make_app: AppFactory) -> None:
    """ASYNC_REQUEST_SWEEP_INTERVAL=None adds no beat entry."""
    app = make_app(ASYNC_REQUEST_SWEEP_INTERVAL=None)
    assert "flask_async_request.sweep_jobs" not in app.extensions["celery"].conf.beat_schedule
