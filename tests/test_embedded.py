"""Embedded mode: with no broker, jobs run in a worker thread of the web process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from flask import Flask, url_for

from flask_async_request import Job, JobStatus
from flask_async_request.embedded import EmbeddedWorker
from flask_async_request.signals import jobs_swept
from flask_async_request.values import as_utc, utcnow
from tests import workers
from tests.conftest import AppFactory, Internals, add_job, current_db, json_of, poll, reload_job


def _poll_until_done(client: Any, token: str, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = poll(client, token)
        if response.status_code != 202:
            return response
        time.sleep(0.05)
    raise AssertionError(f"job still pending after {timeout} s")


def _start_and_recover(app: Flask, embedded: EmbeddedWorker) -> None:
    """Start the app's embedded worker and wait for its start-up recovery."""
    swept = threading.Event()

    def on_swept(sender: Flask, **kwargs: Any) -> None:
        swept.set()

    with jobs_swept.connected_to(on_swept, app):
        embedded.ensure_started()
        assert swept.wait(10)


def _app_with_view(make_app: AppFactory) -> Flask:
    app = make_app(CELERY={})

    @app.post("/sleep")
    def sleep() -> Any:
        job = Job.create_and_enqueue(workers.Sleep, 1.0, tag="embedded")
        return {"token": job.token, "url": url_for("async_request.job", _external=True)}, 202

    return app


def test_job_runs_in_the_background(make_app: AppFactory, internals: Internals) -> None:
    """The view answers 202 at once; polling gives 202, then 200 with the reply."""
    app = _app_with_view(make_app)
    client = app.test_client()
    # The app's first request starts the worker, whose recovery sweep runs then.
    _start_and_recover(app, internals.embedded_worker(app))
    response = client.post("/sleep")
    # Answered while the job still sleeps: its poll is pending, not finished.
    assert response.status_code == 202
    assert json_of(response)["url"] == "http://localhost/async_request/job"
    assert poll(client, json_of(response)["token"]).status_code == 202
    done = _poll_until_done(client, json_of(response)["token"])
    assert done.status_code == 200
    assert done.json["status"] == "processed"
    assert '"tag": "embedded"' in done.json["response"]["body"]


def test_worker_starts_on_first_enqueue(make_app: AppFactory, internals: Internals) -> None:
    """No thread runs until a job is enqueued."""
    # The threads themselves, not their count: another test's thread may end meanwhile.
    before = set(threading.enumerate())
    app = _app_with_view(make_app)
    embedded = internals.embedded_worker(app)
    assert not embedded.running
    assert set(threading.enumerate()) <= before
    app.test_client().post("/sleep")
    assert embedded.running


def test_several_jobs_finish(make_app: AppFactory) -> None:
    """A handful of jobs enqueued together all finish."""
    app = _app_with_view(make_app)
    client = app.test_client()
    tokens = [json_of(client.post("/sleep"))["token"] for _ in range(5)]
    assert {_poll_until_done(client, t).json["status"] for t in tokens} == {"processed"}


def test_web_process_can_still_wait_on_results(make_app: AppFactory) -> None:
    """Starting the embedded worker does not turn AsyncResult.get() off in the web process."""
    app = _app_with_view(make_app)
    app.test_client().post("/sleep")
    celery_app = app.extensions["celery"]
    celery_app.conf.task_always_eager = True

    @celery_app.task(shared=False)  # type: ignore[untyped-decorator]  # Celery has no type hints
    def add(a: int, b: int) -> int:
        return a + b

    assert add.delay(2, 3).get(timeout=5) == 5


def _wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s")
        time.sleep(0.05)


def _status(app: Flask, job_id: int) -> JobStatus:
    with app.app_context():
        return reload_job(job_id).status


def _left_running(app: Flask, *, lease_ago: float, attempts: int = 1) -> int:
    """A job a process left ``processing``, its lease ending ``lease_ago`` seconds ago."""
    with app.app_context():
        job = add_job(status=JobStatus.PROCESSING)
        job.attempts = attempts
        job.lease_expires_at = utcnow() - timedelta(seconds=lease_ago)
        current_db().session.commit()
        return job.id


def test_first_request_starts_the_worker(make_app: AppFactory, internals: Internals) -> None:
    """Any request the app serves starts the embedded worker, before anything is enqueued."""
    app = make_app(CELERY={})
    app.test_client().get("/no-such-page")
    assert internals.embedded_worker(app).running


def test_start_runs_the_waiting_jobs_left_in_the_table(
    make_app: AppFactory, internals: Internals
) -> None:
    """Waiting jobs whose messages a process before took with it run when the worker starts."""
    app = make_app(CELERY={})
    with app.app_context():
        job_id = add_job(args=["left"]).id
    internals.embedded_worker(app).ensure_started()
    _wait_for(lambda: _status(app, job_id) is JobStatus.PROCESSED)


def test_start_runs_a_retry_left_waiting_when_it_is_due(
    make_app: AppFactory, internals: Internals
) -> None:
    """A job left waiting for its retry's backoff runs at its due time, not before."""
    app = make_app(CELERY={})
    due = utcnow() + timedelta(seconds=2)
    with app.app_context():
        job = add_job(args=["later"])
        job.due_at = due
        current_db().session.commit()
        job_id = job.id
    internals.embedded_worker(app).ensure_started()
    _wait_for(lambda: _status(app, job_id) is JobStatus.PROCESSED)
    with app.app_context():
        started_at = reload_job(job_id).started_at
    # Read from the row, not the clock around the test: a loaded machine may
    # start the worker after the due time, but the job never runs before it.
    assert started_at is not None and as_utc(started_at) >= due


def test_start_retries_a_job_whose_lease_ran_out(
    make_app: AppFactory, internals: Internals
) -> None:
    """A running job whose lease ran out runs again at start while its retries allow."""
    app = make_app(CELERY={}, ASYNC_REQUEST_RETRY=1)
    job_id = _left_running(app, lease_ago=5)
    internals.embedded_worker(app).ensure_started()
    _wait_for(lambda: _status(app, job_id) is JobStatus.PROCESSED)
    with app.app_context():
        assert reload_job(job_id).attempts == 2


def test_start_fails_a_job_whose_lease_ran_out_with_no_retry_left(
    make_app: AppFactory, internals: Internals
) -> None:
    """A running job whose lease ran out, with no retry left, fails at start saying why."""
    app = make_app(CELERY={})
    job_id = _left_running(app, lease_ago=5)
    internals.embedded_worker(app).ensure_started()
    _wait_for(lambda: _status(app, job_id) is JobStatus.FAILED)
    with app.app_context():
        assert "worker running this job was lost" in (reload_job(job_id).response or "")


def test_start_leaves_a_running_job_whose_lease_holds(
    make_app: AppFactory, internals: Internals
) -> None:
    """A running job whose lease holds may be another live process's: the start leaves it."""
    app = make_app(CELERY={}, ASYNC_REQUEST_RETRY=1)
    job_id = _left_running(app, lease_ago=-60)
    _start_and_recover(app, internals.embedded_worker(app))
    assert _status(app, job_id) is JobStatus.PROCESSING


def test_worker_sweeps_every_interval(make_app: AppFactory, internals: Internals) -> None:
    """While it runs, the embedded worker sweeps every ASYNC_REQUEST_SWEEP_INTERVAL."""
    app = make_app(CELERY={}, ASYNC_REQUEST_SWEEP_INTERVAL=0.2)
    internals.embedded_worker(app).ensure_started()
    job_id = _left_running(app, lease_ago=1)
    _wait_for(lambda: _status(app, job_id) is JobStatus.FAILED, timeout=5)


def test_stop_waits_for_running_jobs_only_briefly(
    make_app: AppFactory, internals: Internals
) -> None:
    """Stopping (a reload, the process exiting) waits for running jobs at most its grace."""
    app = make_app(CELERY={})
    with app.app_context():
        job_id = Job.create_and_enqueue(workers.Sleep, 5).id
    _wait_for(lambda: _status(app, job_id) is JobStatus.PROCESSING)
    started = time.monotonic()
    internals.embedded_worker(app).stop(timeout=0.5)
    assert time.monotonic() - started < 2


def test_stop_ends_the_leases_of_the_jobs_it_cuts_short(
    make_app: AppFactory, internals: Internals
) -> None:
    """A job still running when the worker stops has its lease ended, for the next start."""
    app = make_app(CELERY={})
    with app.app_context():
        job_id = Job.create_and_enqueue(workers.Sleep, 5).id
    _wait_for(lambda: _status(app, job_id) is JobStatus.PROCESSING)
    internals.embedded_worker(app).stop(timeout=0.2)
    with app.app_context():
        job = reload_job(job_id)
        assert job.lease_expires_at is not None
        assert as_utc(job.lease_expires_at) <= utcnow()


def test_a_sweep_ending_after_a_stop_starts_no_worker(
    make_app: AppFactory, internals: Internals
) -> None:
    """A sweep still running when the worker stops sends its jobs to no new worker."""
    app = make_app(CELERY={})
    embedded = internals.embedded_worker(app)
    release, finished = threading.Event(), threading.Event()

    def slow_sweep(recovering: bool) -> None:
        release.wait(10)
        embedded.ensure_started()  # what publishing a job does
        finished.set()

    embedded.keep_jobs(slow_sweep, None, lambda: None)
    embedded.ensure_started()
    embedded.stop(timeout=0.1)
    release.set()
    assert finished.wait(10)
    assert not embedded.running
