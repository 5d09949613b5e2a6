"""What the library guarantees: publish after commit, one effect per claim, nothing stuck."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_async_request import EnqueueError, Job, JobStatus, accepted, asynchronous
from flask_async_request.broker import PROCESS_TASK
from flask_async_request.maintenance import sweep_jobs
from flask_async_request.models import utcnow
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


@pytest.fixture
def sent(app: Flask, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, dict[str, Any]]]:
    """Record the messages published, instead of running them."""
    messages: list[tuple[int, dict[str, Any]]] = []
    task = get_state().celery.tasks[PROCESS_TASK]
    monkeypatch.setattr(
        task, "apply_async", lambda args, **options: messages.append((args[0], options))
    )
    return messages


# Publishing after commit -------------------------------------------------------------


def test_commit_false_publishes_on_the_callers_commit(app: Flask, sent: list[Any]) -> None:
    """With commit=False nothing is sent until the caller commits."""
    job = Job.create_and_enqueue(workers.Echo, 1, commit=False)
    job_id = job.id
    assert sent == []
    get_state().db.session.commit()
    assert [message[0] for message in sent] == [job_id]


def test_commit_false_rolled_back_is_never_published(app: Flask, sent: list[Any]) -> None:
    """A rolled back transaction leaves no row and sends no message."""
    Job.create_and_enqueue(workers.Echo, commit=False)
    session = get_state().db.session
    session.rollback()
    session.commit()
    assert sent == []
    assert session.query(Job).count() == 0


def test_begin_block_publishes_when_it_commits(app: Flask, sent: list[Any]) -> None:
    """Inside db.session.begin() the job waits for the block's commit."""
    session = get_state().db.session
    session.commit()
    with session.begin():
        job_id = Job.create_and_enqueue(workers.Echo).id
        assert sent == []
    assert [message[0] for message in sent] == [job_id]


def test_begin_block_rolled_back_publishes_nothing(app: Flask, sent: list[Any]) -> None:
    """An exception in the block rolls the job back and nothing is sent."""
    session = get_state().db.session
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
        get_state().db.session.commit()
        assert reload_job(job_id).status is JobStatus.WAITING
    assert f"Job {job_id} is stored but could not be published yet" in caplog.text


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
    get_state().db.session.commit()
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


def test_unclaimed_waiting_job_is_sent_again(app: Flask, sent: list[Any]) -> None:
    """A waiting job due longer ago than the timeout is published again, once per timeout."""
    stale = add_job()
    stale.due_at = utcnow() - timedelta(minutes=10)
    fresh = add_job()
    get_state().db.session.commit()
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


def test_sweeping_all_waiting_jobs_keeps_a_retry_backoff(app: Flask, sent: list[Any]) -> None:
    """sweep_jobs(all_waiting=True) sends a job due later with the countdown left to it."""
    job = add_job()
    job.due_at = utcnow() + timedelta(seconds=30)
    get_state().db.session.commit()
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
            task = get_state().celery.tasks[PROCESS_TASK]
            task.apply_async = lambda args, _sent=messages, **options: _sent.append(args[0])
            job_id = Job.create_and_enqueue(workers.Echo, commit=False).id
            db.session.commit()
            assert messages == [job_id], f"app {n} published nothing on commit"
            db.session.remove()
            db.engine.dispose()
        del app, db
        gc.collect()
