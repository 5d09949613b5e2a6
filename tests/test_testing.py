"""Running an app's jobs inline in its tests: the JobRunner, and the example of its fixture.

The first part is the example of docs/testing.rst, which includes it: an app
with a view that starts a job, the fixtures a project writes, and its tests.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request
from flask_sqlalchemy import SQLAlchemy
from werkzeug.serving import make_server

from flask_async_request import (
    AsyncRequest,
    AsyncRequestError,
    InvalidToken,
    Job,
    JobStatus,
    Worker,
    accepted,
)
from flask_async_request.client import wait_for
from flask_async_request.signals import job_progress
from flask_async_request.testing import JobRun, JobRunner
from flask_async_request.webhooks import DeliveryError
from tests.conftest import AppFactory, Internals, add_job, reload_job, serving
from tests.workers import Echo, FlakyThenOk

# [app]
db = SQLAlchemy()
async_request = AsyncRequest()


class Report(Worker):
    """Adds up a month's sales."""

    def execute(self, month: int) -> tuple[int, str]:
        if not 1 <= month <= 12:
            raise ValueError(f"There is no month {month}.")
        self.progress(0.5, message="sales added up")
        return 200, json.dumps({"month": month, "total": 100 * month})


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="change-me-to-32-random-bytes-or-more")
    app.config.update(config or {})
    db.init_app(app)
    async_request.init_app(app)
    with app.app_context():
        db.create_all()

    @app.post("/reports")
    def start_report() -> Any:
        return accepted(Job.create_and_enqueue(Report, request.json["month"]))

    return app


# [app end]


# [fixtures]
@pytest.fixture
def app(tmp_path: Path) -> Flask:
    """The app, on a database of its own; no broker, no worker."""
    return create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/test.db"})


@pytest.fixture
def client(app: Flask) -> Any:
    return app.test_client()


# [fixtures end]


# [tests]
def test_report(client: Any, async_jobs: JobRunner) -> None:
    """The view answers 202; once the jobs have run, the poll answers 200 with the reply."""
    started = client.post("/reports", json={"month": 3})
    assert started.status_code == 202
    # No worker has run it yet.
    assert client.get(started.json["url"]).json["status"] == "waiting"

    runs = async_jobs.run_pending()

    assert [run.status for run in runs] == [JobStatus.PROCESSED]
    finished = client.get(started.json["url"])
    assert finished.status_code == 200
    assert json.loads(finished.json["response"]["body"]) == {"month": 3, "total": 300}


def test_report_as_a_client_waits(client: Any, async_jobs: JobRunner) -> None:
    """wait_for runs the pending jobs and polls, as the Python client does."""
    result = async_jobs.wait_for(client.post("/reports", json={"month": 3}), client=client)
    assert result.ok
    assert json.loads(result.body)["total"] == 300


def test_a_bad_month_fails(client: Any, async_jobs: JobRunner) -> None:
    """A raising worker leaves a failed job, answered with 500 and the error."""
    result = async_jobs.wait_for(client.post("/reports", json={"month": 13}), client=client)
    assert (result.status, result.status_code) == ("failed", 500)
    assert json.loads(result.body) == {"error": "There is no month 13."}


def test_progress_is_polled(app: Flask, client: Any, async_jobs: JobRunner) -> None:
    """A poll made while the worker runs shows its progress."""
    started = client.post("/reports", json={"month": 3})
    seen = []

    def poll_now(sender: Flask, **report: Any) -> None:
        seen.append(client.get(started.json["url"]).json)

    with job_progress.connected_to(poll_now, app):
        async_jobs.run_pending()

    assert seen == [{"status": "processing", "progress": 0.5, "message": "sales added up"}]


# [tests end]


# The runner itself, on the suite's apps (eager Celery, which it overrides).


@pytest.fixture
def eager_app(make_app: AppFactory) -> Iterator[Flask]:
    app = make_app()
    with app.app_context():
        yield app


@pytest.fixture
def runner(eager_app: Flask) -> Iterator[JobRunner]:
    with JobRunner(eager_app) as runner:
        yield runner


def test_the_runner_keeps_jobs_from_an_eager_celery(eager_app: Flask, runner: JobRunner) -> None:
    """With a runner bound, even task_always_eager leaves the new job waiting."""
    job = Job.create_and_enqueue(Echo, 1)
    assert runner.pending == [job.id]
    assert reload_job(job.id).status is JobStatus.WAITING


def test_run_pending_runs_in_order(eager_app: Flask, runner: JobRunner) -> None:
    """Pending jobs run oldest first, each once, through a worker's claim."""
    first, second = Job.create_and_enqueue(Echo, 1), Job.create_and_enqueue(Echo, 2)
    assert runner.run_pending() == [
        JobRun(first.id, JobStatus.PROCESSED),
        JobRun(second.id, JobStatus.PROCESSED),
    ]
    assert runner.pending == []
    assert runner.run_pending() == []
    assert reload_job(first.id).attempts == 1


def test_run_one_job_by_id_token_or_job(eager_app: Flask, runner: JobRunner) -> None:
    """run() takes a job's id, its token or the job, and leaves the others pending."""
    jobs = [Job.create_and_enqueue(Echo, n) for n in range(3)]
    assert runner.run(jobs[1].token) is JobStatus.PROCESSED
    assert runner.run(jobs[2]) is JobStatus.PROCESSED
    assert runner.pending == [jobs[0].id]
    assert runner.run(jobs[0].id) is JobStatus.PROCESSED
    # Run again, a job claims nothing, as a duplicate message would.
    assert runner.run(jobs[0].id) is None


def test_run_refuses_a_forged_token(eager_app: Flask, runner: JobRunner) -> None:
    """A token that does not verify is an InvalidToken."""
    with pytest.raises(InvalidToken):
        runner.run("forged")


def test_a_cancelled_job_does_not_run(eager_app: Flask, runner: JobRunner) -> None:
    """A job cancelled before its turn is skipped, its cancel stored."""
    job = Job.create_and_enqueue(Echo, 1)
    client = eager_app.test_client()
    cancelled = client.delete("/async_request/job", headers={"X-JOB-AUTHORIZATION": job.token})
    assert cancelled.status_code == 200
    assert runner.run_pending() == [JobRun(job.id, None)]
    assert reload_job(job.id).status is JobStatus.CANCELLED


def test_retries_run_too(make_app: AppFactory, tmp_path: Path) -> None:
    """A retried job is published again and run in the same run_pending."""
    app = make_app(ASYNC_REQUEST_RETRY=2)
    with app.app_context(), JobRunner(app) as runner:
        job = Job.create_and_enqueue(FlakyThenOk, str(tmp_path / "runs"), 2)
        statuses = [run.status for run in runner.run_pending()]
        assert statuses == [JobStatus.WAITING, JobStatus.WAITING, JobStatus.PROCESSED]
        assert reload_job(job.id).response == "3"


def test_jobs_lists_the_rows(eager_app: Flask, runner: JobRunner) -> None:
    """jobs() gives every row as it is now, oldest first."""
    first, second = Job.create_and_enqueue(Echo, 1), Job.create_and_enqueue(Echo, 2)
    runner.run(second)
    assert [(job.id, job.status) for job in runner.jobs()] == [
        (first.id, JobStatus.WAITING),
        (second.id, JobStatus.PROCESSED),
    ]


def test_callbacks_are_kept_and_delivered(eager_app: Flask, runner: JobRunner) -> None:
    """A finished job's callback is kept, and delivered only when asked."""
    received: list[bytes] = []

    def receiver(environ: Any, start_response: Any) -> list[bytes]:
        received.append(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])))
        start_response("204 No Content", [])
        return []

    server = make_server("127.0.0.1", 0, receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        job = Job.create_and_enqueue(Echo, 1, callback_url=url)
        runner.run_pending()
        assert runner.callbacks == [job.id]
        assert received == []
        assert runner.deliver_callbacks() == [True]
    finally:
        server.shutdown()
    assert runner.callbacks == []
    assert json.loads(received[0])["job_id"] == job.id


def test_publishing_goes_back_to_the_broker_on_close(
    eager_app: Flask, internals: Internals
) -> None:
    """Closing the runner gives the app its broker back: eager Celery runs the job at once."""
    with JobRunner(eager_app) as runner:
        kept = Job.create_and_enqueue(Echo, 1)
        assert runner.pending == [kept.id]
    job = Job.create_and_enqueue(Echo, 1)
    assert reload_job(job.id).status is JobStatus.PROCESSED


def test_one_runner_per_app(eager_app: Flask, runner: JobRunner) -> None:
    """A second runner on the same app is refused, saying why."""
    with pytest.raises(RuntimeError, match="holds this app's messages already"):
        JobRunner(eager_app)


def test_no_embedded_worker_starts(make_app: AppFactory, internals: Internals) -> None:
    """On an app without a broker, the runner's jobs start no worker thread."""
    app = make_app(CELERY={})
    with app.app_context(), JobRunner(app) as runner:
        job = Job.create_and_enqueue(Echo, 1)
        assert runner.run_pending() == [JobRun(job.id, JobStatus.PROCESSED)]
        assert not internals.embedded_worker(app).running


def test_requests_start_no_embedded_worker(make_app: AppFactory, internals: Internals) -> None:
    """On an app without a broker, requests made while a runner is bound start no worker."""
    app = make_app(CELERY={})
    with JobRunner(app):
        app.test_client().get("/no-such-page")
        assert not internals.embedded_worker(app).running


def test_wait_for_refuses_a_job_nothing_will_run(eager_app: Flask, runner: JobRunner) -> None:
    """A job pending with no message kept is reported at once, not waited for."""
    orphan = add_job()  # stored, never published
    with pytest.raises(AsyncRequestError, match="holds no message to run it"):
        runner.wait_for(None, url="http://localhost/async_request/job", token=orphan.token)


def test_the_client_polls_through_a_test_client(eager_app: Flask) -> None:
    """The stdlib client's wait_for(session=) polls with Flask's test client."""
    job = Job.create_and_enqueue(Echo, 7)
    result = wait_for(
        url="http://localhost/async_request/job", token=job.token, session=eager_app.test_client()
    )
    assert result.ok
    assert json.loads(result.body)["args"] == [7]


class Chain(Worker):
    """Enqueues one more job of its own kind until ``left`` reaches 0."""

    def execute(self, left: int) -> tuple[int, str]:
        if left:
            Job.create_and_enqueue(Chain, left - 1)
        return 200, str(left)


def test_jobs_that_jobs_enqueue_run_in_the_same_call(eager_app: Flask, runner: JobRunner) -> None:
    """run_pending runs the messages published while it runs, until none is left."""
    Job.create_and_enqueue(Chain, 2)
    runs = runner.run_pending()
    assert [run.status for run in runs] == [JobStatus.PROCESSED] * 3
    assert [job.response for job in runner.jobs()] == ["2", "1", "0"]
    assert runner.pending == []


def test_run_takes_the_202_of_the_view_that_started_the_job(
    client: Any, async_jobs: JobRunner
) -> None:
    """run() of a view's 202 runs that job."""
    started = client.post("/reports", json={"month": 4})
    assert async_jobs.run(started) is JobStatus.PROCESSED
    assert async_jobs.pending == []
    assert client.get(started.json["url"]).status_code == 200


def test_run_refuses_a_job_never_stored(eager_app: Flask, runner: JobRunner) -> None:
    """A Job with no id cannot be run: a ValueError saying so."""
    with pytest.raises(ValueError, match="never stored"):
        runner.run(Job(worker="tests.workers:Echo", params={"args": [], "kwargs": {}}))


def test_close_drops_what_was_not_run(eager_app: Flask) -> None:
    """Messages and callbacks still kept at close are dropped; the rows stay waiting."""
    runner = JobRunner(eager_app)
    job = Job.create_and_enqueue(Echo, 1)
    runner.queue_callback(job.id)
    runner.close()
    assert (runner.pending, runner.callbacks) == ([], [])
    assert reload_job(job.id).status is JobStatus.WAITING


def test_no_broker_is_needed_whatever_celery_says(make_app: AppFactory) -> None:
    """With a runner bound, an app whose broker is down enqueues and runs its jobs."""
    app = make_app(CELERY={"broker_url": "redis://127.0.0.1:1/0", "broker_connection_retry": False})
    with app.app_context(), JobRunner(app) as runner:
        job = Job.create_and_enqueue(Echo, 1)
        assert runner.run_pending() == [JobRun(job.id, JobStatus.PROCESSED)]


def test_a_callback_the_receiver_refuses_raises_delivery_error(
    eager_app: Flask, runner: JobRunner
) -> None:
    """deliver_callbacks raises DeliveryError for a receiver that does not answer 2xx."""

    def receiver(environ: Any, start_response: Any) -> list[bytes]:
        start_response("500 Internal Server Error", [])
        return [b"down"]

    with serving(receiver) as base:
        job = Job.create_and_enqueue(Echo, 1, callback_url=f"{base}/hook")
        runner.run_pending()
        assert runner.callbacks == [job.id]
        with pytest.raises(DeliveryError):
            runner.deliver_callbacks()
    assert runner.callbacks == []
