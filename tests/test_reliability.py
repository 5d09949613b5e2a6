"""What the library guarantees: publish after commit, one effect per claim, nothing stuck."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery.app.task import Task
from flask import Flask
from sqlalchemy.orm import scoped_session

from flask_async_request import EnqueueError, Job, JobStatus, accepted, asynchronous
from flask_async_request.broker import PROCESS_TASK
from flask_async_request.maintenance import sweep_jobs
from flask_async_request.models import utcnow
from flask_async_request.runner import run_job
from flask_async_request.store import JobStore
from tests import workers
from tests.conftest import AppFactory, add_job, current_db, json_of, poll, reload_job

BROKER_DOWN = {
    "broker_url": "redis://127.0.0.1:1/0",
    "broker_connection_retry": False,
    "broker_connection_max_retries": 0,
    "broker_transport_options": {"max_retries": 0},
}


@pytest.fixture
def sent(
    process_task: Task[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> list[tuple[int, dict[str, Any]]]:
    """Record the messages published, instead of running them."""
    messages: list[tuple[int, dict[str, Any]]] = []
    monkeypatch.setattr(
        process_task, "apply_async", lambda args, **options: messages.append((args[0], options))
    )
    return messages


# Publishing after commit -------------------------------------------------------------


def test_commit_false_publishes_on_the_callers_commit(
    app: Flask, session: scoped_session[Any], sent: list[Any]
) -> None:
    """With commit=False nothing is sent until the caller commits."""
    job = Job.create_and_enqueue(workers.Echo, 1, commit=False)
    job_id = job.id
    assert sent == []
    session.commit()
    assert [message[0] for message in sent] == [job_id]


def test_commit_false_rolled_back_is_never_published(
    app: Flask, session: scoped_session[Any], sent: list[Any]
) -> None:
    """A rolled back transaction leaves no row and sends no message."""
    Job.create_and_enqueue(workers.Echo, commit=False)
    session.rollback()
    session.commit()
    assert sent == []
    assert session.query(Job).count() == 0


def test_begin_block_publishes_when_it_commits(
    app: Flask, session: scoped_session[Any], sent: list[Any]
) -> None:
    """Inside db.session.begin() the job waits for the block's commit."""
    session.commit()
    with session.begin():
        job_id = Job.create_and_enqueue(workers.Echo).id
        assert sent == []
    assert [message[0] for message in sent] == [job_id]


def test_begin_block_rolled_back_publishes_nothing(
    app: Flask, session: scoped_session[Any], sent: list[Any]
) -> None:
    """An exception in the block rolls the job back and nothing is sent."""
    session.commit()
    with pytest.raises(RuntimeError), session.begin():
        Job.create_and_enqueue(workers.Echo)
        raise RuntimeError("abort")
    assert sent == []
    assert session.query(Job).count() == 0


def test_publish_failure_after_commit_is_logged(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker down at the caller's commit loses nothing: the row stays waiting, it is logged."""
    app = make_app(CELERY=BROKER_DOWN)
    with app.app_context(), caplog.at_level(logging.ERROR, logger="flask_async_request"):
        job_id = Job.create_and_enqueue(workers.Echo, commit=False).id
        current_db().session.commit()
        assert reload_job(job_id).status is JobStatus.WAITING
    assert f"Job {job_id} is stored but could not be published yet" in caplog.text


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
        task = app.extensions["celery"].tasks[PROCESS_TASK]
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
    current_db().session.commit()
    return job.id


def test_lost_worker_without_retries_fails_the_job(app: Flask, sent: list[Any]) -> None:
    """An expired lease with no retry left fails the job, saying the worker was lost."""
    job_id = _processing(-5)
    assert sweep_jobs().failed == 1
    job = reload_job(job_id)
    assert job.status is JobStatus.FAILED
    assert job.status_code == 500
    assert job.response is not None
    assert "The worker running this job was lost" in json.loads(job.response)["error"]
    assert sent == []


def test_lost_worker_with_retries_runs_again(make_app: AppFactory) -> None:
    """An expired lease with retries left puts the job back and it runs."""
    app = make_app(ASYNC_REQUEST_RETRY=1)
    with app.app_context():
        job_id = _processing(-5)
        assert sweep_jobs().requeued == 1
        job = reload_job(job_id)
        assert job.status is JobStatus.PROCESSED
        assert job.attempts == 2


def test_live_lease_is_left_alone(app: Flask, sent: list[Any]) -> None:
    """A processing job whose lease is current is not touched."""
    job_id = _processing(30)
    assert sweep_jobs().failed == 0
    assert reload_job(job_id).status is JobStatus.PROCESSING
    assert sent == []


def test_unclaimed_waiting_job_is_sent_again(
    app: Flask, session: scoped_session[Any], sent: list[Any]
) -> None:
    """A waiting job due longer ago than the timeout is published again, once per timeout."""
    stale = add_job()
    stale.due_at = utcnow() - timedelta(minutes=10)
    fresh = add_job()
    session.commit()
    assert sweep_jobs().republished == 1
    assert [message[0] for message in sent] == [stale.id]
    assert sweep_jobs().republished == 0
    assert reload_job(fresh.id).status is JobStatus.WAITING


def test_sweeping_all_waiting_jobs_sends_every_one_page_by_page(
    app: Flask, sent: list[Any]
) -> None:
    """sweep_jobs(all_waiting=True) sends every waiting job, past one batch, each once."""
    ids = [add_job().id for _ in range(5)]
    assert sweep_jobs(batch_size=2, all_waiting=True).republished == 5
    assert [message[0] for message in sent] == ids


def test_sweeping_all_waiting_jobs_keeps_a_retry_backoff(
    app: Flask, session: scoped_session[Any], sent: list[Any]
) -> None:
    """sweep_jobs(all_waiting=True) sends a job due later with the countdown left to it."""
    job = add_job()
    job.due_at = utcnow() + timedelta(seconds=30)
    session.commit()
    assert sweep_jobs(all_waiting=True).republished == 1
    ((_, options),) = sent
    assert 25 < options["countdown"] <= 30


def test_enqueue_error_holds_the_stored_job(make_app: AppFactory) -> None:
    """create_and_enqueue's EnqueueError names the job and holds it, token signed."""
    app = make_app(CELERY=BROKER_DOWN)
    with app.app_context():
        with pytest.raises(EnqueueError) as info:
            Job.create_and_enqueue(workers.Echo, "late")
        job = info.value.job
        assert isinstance(job, Job)
        assert job.id == info.value.job_id
        assert job.status is JobStatus.WAITING
        assert job.token


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


def test_sweep_runs_on_beat(app: Flask) -> None:
    """The sweeper is scheduled every ASYNC_REQUEST_SWEEP_INTERVAL."""
    entry = app.extensions["celery"].conf.beat_schedule["flask_async_request.sweep_jobs"]
    assert entry["schedule"] == timedelta(seconds=30)


def test_sweep_can_be_switched_off(make_app: AppFactory) -> None:
    """ASYNC_REQUEST_SWEEP_INTERVAL=None adds no beat entry."""
    app = make_app(ASYNC_REQUEST_SWEEP_INTERVAL=None)
    assert "flask_async_request.sweep_jobs" not in app.extensions["celery"].conf.beat_schedule


def test_every_new_app_publishes_on_commit(tmp_path: Path) -> None:
    """Apps made and dropped one after another each get their listeners (no stale registry)."""
    import gc

    from flask_sqlalchemy import SQLAlchemy

    from flask_async_request import AsyncRequest

    for n in range(150):
        app = Flask(__name__)
        app.config.update(
            SECRET_KEY="k" * 32,
            SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/app{n}.db",
            CELERY={"task_always_eager": True},
        )
        db = SQLAlchemy(app)
        AsyncRequest(app)
        with app.app_context():
            db.create_all()
            messages: list[int] = []
            task = app.extensions["celery"].tasks[PROCESS_TASK]
            task.apply_async = lambda args, _sent=messages, **options: _sent.append(args[0])
            job_id = Job.create_and_enqueue(workers.Echo, commit=False).id
            db.session.commit()
            assert messages == [job_id], f"app {n} published nothing on commit"
            db.session.remove()
            db.engine.dispose()
        del app, db
        gc.collect()
