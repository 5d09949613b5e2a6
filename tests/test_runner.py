"""The worker side of a job's life: claim, execute, store the reply or the error, retry."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_async_request import Job, JobStatus, Worker, lifecycle, signals
from flask_async_request.broker import PROCESS_TASK
from flask_async_request.exceptions import DatabaseUnavailable, JobCancelled
from flask_async_request.outcomes import Outcome
from flask_async_request.runner import MAX_ERROR_LENGTH, MAX_RETRY_DELAY, retry_delay, run_job
from flask_async_request.values import new_uid, utcnow
from tests import workers
from tests.conftest import AppFactory, add_job, json_of, reload_job

BROKER_DOWN = {
    "broker_url": "redis://127.0.0.1:1/0",
    "broker_connection_retry": False,
    "broker_connection_max_retries": 0,
    "broker_transport_options": {"max_retries": 0},
}


def _reply(app: Flask, status: Any, body: Any) -> Job:
    return Job.create_and_enqueue(workers.Reply, status, body)


def test_a_status_name_is_stored_as_its_code(app: Flask) -> None:
    """A reply's status name (a Rails symbol) is stored as its code, with the body."""
    job = _reply(app, "created", "body")
    assert (job.status, job.status_code, job.response) == (JobStatus.PROCESSED, 201, "body")


def test_status_as_http_status(app: Flask) -> None:
    """An http.HTTPStatus member is stored as its code."""
    job = Job.create_and_enqueue(workers.ReplyHTTPStatus)
    assert (job.status_code, job.response) == (201, "made")


def test_none_body_is_stored_as_empty_string(app: Flask) -> None:
    """A None body becomes ''."""
    job = _reply(app, "ok", None)
    assert job.status is JobStatus.PROCESSED
    assert job.response == ""


def test_raising_worker_fails_with_500_and_logs(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    """A raising execute marks the job failed, 500, {"error": message}, traceback logged."""
    with caplog.at_level(logging.ERROR, logger="flask_async_request"):
        job = Job.create_and_enqueue(workers.Boom, "disk on fire")
    assert job.status is JobStatus.FAILED
    assert job.status_code == 500
    assert job.response is not None
    assert json.loads(job.response) == {"error": "disk on fire"}
    record = next(r for r in caplog.records if r.name == "flask_async_request")
    assert record.exc_info is not None
    assert "tests.workers:Boom" in record.getMessage()


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (42, "returned 42; expected a (status, body) pair"),
        ([200], "returned [200]; expected a (status, body) pair"),
        ((200, "a", "text/plain", "x"), "returned headers 'x'; expected a mapping"),
        ((200, "a", "text/plain", {}, 1), "expected a (status, body) pair"),
        ((200, "a", 5), "returned content type 5; expected a str"),
        (None, "returned None; expected a (status, body) pair"),
        ((999, "x"), "status 999 is outside the HTTP range"),
        (("teapot_ish", "x"), "status 'teapot_ish' is not a known HTTP status name"),
        ((True, "x"), "status True is a bool"),
        ((200.0, "x"), "status 200.0 is a float"),
        ((200, {"a": 1}), "body of type dict; expected a str"),
        ((200, 5), "body of type int; expected a str"),
    ],
)
def test_wrong_reply_fails_naming_the_worker(app: Flask, reply: Any, message: str) -> None:
    """A reply of the wrong shape or type fails the job with a message naming the worker."""
    job = Job.create_and_enqueue(workers.ReturnValue, reply)
    assert job.status is JobStatus.FAILED
    assert job.status_code == 500
    assert job.response is not None
    error = json.loads(job.response)["error"]
    assert error.startswith("Worker tests.workers:ReturnValue ")
    assert message in error


def test_chunks_of_text_fail(app: Flask) -> None:
    """A body of chunks that are not bytes is an error on the job, not a crash."""
    job = Job.create_and_enqueue(workers.ReturnValue, [200, ["text", "chunks"]])
    assert job.status is JobStatus.FAILED
    assert job.response is not None
    assert "body whose chunks are str; expected bytes" in json.loads(job.response)["error"]


def test_duplicate_delivery_runs_once(app: Flask, tmp_path: Path) -> None:
    """A second message for a claimed or finished job does nothing."""
    counter = tmp_path / "runs"
    job = Job.create_and_enqueue(workers.FlakyThenOk, str(counter), 0)
    assert job.status is JobStatus.PROCESSED
    assert run_job(job.id) is None
    assert counter.read_text() == "1"


def test_message_for_a_processing_job_does_nothing(app: Flask) -> None:
    """A job already claimed by another worker is not run again."""
    job = add_job(status=JobStatus.PROCESSING)
    assert run_job(job.id) is None
    assert reload_job(job.id).status is JobStatus.PROCESSING


def test_message_for_a_deleted_job_does_nothing(app: Flask) -> None:
    """A message whose row is gone is dropped quietly."""
    assert run_job(123456) is None


@pytest.mark.parametrize(
    "path",
    [
        "os:system",
        "tests.workers:NotAWorker",
        "flask_async_request:Worker",
        "no.such.module:X",
        "tests.workers:Missing",
        "nocolon",
    ],
)
def test_stored_path_that_is_no_worker_is_refused(app: Flask, path: str) -> None:
    """A row naming anything but a Worker subclass fails without running it."""
    job = add_job(worker=path, args=["echo pwned"])
    assert run_job(job.id) is JobStatus.FAILED
    job = reload_job(job.id)
    assert job.status is JobStatus.FAILED
    assert job.status_code == 500
    assert job.response is not None
    assert path.split(":")[0] in json.loads(job.response)["error"]


def test_retry_runs_again_until_success(make_app: AppFactory, tmp_path: Path) -> None:
    """ASYNC_REQUEST_RETRY=n runs a raising job up to n more times."""
    app = make_app(ASYNC_REQUEST_RETRY=2)
    counter = tmp_path / "runs"
    with app.app_context():
        job = Job.create_and_enqueue(workers.FlakyThenOk, str(counter), 2)
        assert job.status is JobStatus.PROCESSED
        assert job.attempts == 3
        assert job.response == "3"


def test_retry_gives_up_after_n_retries(make_app: AppFactory, tmp_path: Path) -> None:
    """When the retries are spent the job fails with the last error."""
    app = make_app(ASYNC_REQUEST_RETRY=1)
    counter = tmp_path / "runs"
    with app.app_context():
        job = Job.create_and_enqueue(workers.FlakyThenOk, str(counter), 5)
        assert job.status is JobStatus.FAILED
        assert job.attempts == 2
        assert job.response is not None
        assert json.loads(job.response) == {"error": "transient failure 2"}


def test_no_retry_by_default(app: Flask, tmp_path: Path) -> None:
    """With the default ASYNC_REQUEST_RETRY=False a raising job fails on its first run."""
    counter = tmp_path / "runs"
    job = Job.create_and_enqueue(workers.FlakyThenOk, str(counter), 1)
    assert job.status is JobStatus.FAILED
    assert counter.read_text() == "1"


def test_times_are_recorded(app: Flask) -> None:
    """created_at <= started_at <= finished_at are set on a finished job."""
    job = Job.create_and_enqueue(workers.Echo)
    assert job.started_at is not None and job.finished_at is not None
    assert job.created_at <= job.started_at <= job.finished_at


def test_job_is_processing_while_it_runs(app: Flask) -> None:
    """The row is claimed as processing before execute is called."""
    job = Job.create_and_enqueue(workers.ReportOwnStatus)
    assert job.response == "processing"
    assert job.status is JobStatus.PROCESSED


def test_reply_may_name_its_content_type(app: Flask) -> None:
    """(status, body, content_type) stores the media type; polls show it."""
    job = Job.create_and_enqueue(workers.ReturnValue, [201, "<p>hi</p>", "text/html"])
    assert (job.status_code, job.response, job.content_type) == (201, "<p>hi</p>", "text/html")
    response = app.test_client().get(
        "/async_request/job", headers={"X-JOB-AUTHORIZATION": job.token}
    )
    assert json_of(response)["response"] == {
        "status_code": 201,
        "body": "<p>hi</p>",
        "content_type": "text/html",
    }


def test_reply_of_a_run_whose_lease_was_taken_over_is_dropped(app: Flask) -> None:
    """A worker that lost its job to another attempt does not overwrite it."""
    job = Job.create_and_enqueue(workers.Hijacked)
    job = reload_job(job.id)
    assert job.status is JobStatus.PROCESSING
    assert job.response is None
    assert job.attempts == 2


def test_a_long_error_message_is_cut(app: Flask) -> None:
    """A worker's error longer than MAX_ERROR_LENGTH is stored cut, ending with '...'."""
    job = Job.create_and_enqueue(workers.Boom, "e" * (MAX_ERROR_LENGTH * 2))
    assert job.response is not None
    error = json.loads(job.response)["error"]
    assert len(error) == MAX_ERROR_LENGTH
    assert error == "e" * (MAX_ERROR_LENGTH - 3) + "..."


def test_an_error_without_a_message_is_named_by_its_type(app: Flask) -> None:
    """An exception with no text fails the job with its class name."""
    job = Job.create_and_enqueue(workers.Boom, "")
    assert job.response is not None
    assert json.loads(job.response) == {"error": "RuntimeError"}


def test_job_started_is_sent_with_the_claim(app: Flask) -> None:
    """job_started names the job, its attempt, its worker and how long it waited."""
    seen: list[dict[str, Any]] = []

    def record(sender: Flask, **details: Any) -> None:
        seen.append(details)

    job = add_job()
    with signals.job_started.connected_to(record, app):
        assert run_job(job.id) is JobStatus.PROCESSED
    assert len(seen) == 1
    assert seen[0]["job_id"] == job.id
    assert (seen[0]["attempt"], seen[0]["worker"]) == (1, "tests.workers:Echo")
    assert seen[0]["waited"] is None or seen[0]["waited"] >= 0


def test_a_lost_database_leaves_the_job_processing(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply that cannot reach the database raises; the job waits for its lease to run out."""

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise DatabaseUnavailable("The jobs database could not be reached.")

    monkeypatch.setattr(lifecycle, "finish", unreachable)
    job = add_job()
    with pytest.raises(DatabaseUnavailable):
        run_job(job.id)
    assert reload_job(job.id).status is JobStatus.PROCESSING


def test_a_refused_reply_fails_the_job_with_the_library_s_error(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply the database refuses fails the job with the library's sentence, not the driver's."""
    real = lifecycle.finish
    calls: list[Outcome] = []

    def refuse_first(store: Any, job_id: int, attempt: int, outcome: Outcome, **kw: Any) -> Any:
        calls.append(outcome)
        if len(calls) == 1:
            raise ValueError("driver says: SELECT secret")
        return real(store, job_id, attempt, outcome, **kw)

    monkeypatch.setattr(lifecycle, "finish", refuse_first)
    job = add_job()
    assert run_job(job.id) is JobStatus.FAILED
    stored = reload_job(job.id)
    assert stored.response is not None
    error = json.loads(stored.response)["error"]
    assert error.startswith("The worker's reply")
    assert "SELECT secret" not in error


# Retries ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "delay"), [(1, 1.0), (2, 2.0), (3, 4.0), (10, 512.0), (11, 600.0), (50, 600.0)]
)
def test_retry_delay_doubles_up_to_its_cap(attempt: int, delay: float) -> None:
    """Attempt n waits 2**(n-1) seconds, never more than MAX_RETRY_DELAY."""
    assert retry_delay(attempt) == delay
    assert retry_delay(attempt) <= MAX_RETRY_DELAY


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


def test_a_retry_that_cannot_be_published_is_logged_and_left_waiting(
    make_app: AppFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker down at a retry leaves the job waiting for the sweeper, saying so in the log."""
    app = make_app(ASYNC_REQUEST_RETRY=1, CELERY=BROKER_DOWN)
    with app.app_context(), caplog.at_level(logging.ERROR, logger="flask_async_request"):
        job_id = add_job(worker="tests.workers:FlakyThenOk", args=[str(tmp_path / "runs"), 5]).id
        assert run_job(job_id) is JobStatus.WAITING
        assert reload_job(job_id).status is JobStatus.WAITING
    assert f"Job {job_id}: the retry could not be published; the sweeper will." in caplog.text


def test_a_worker_stopped_by_its_cancel_stores_nothing(app: Flask, tmp_path: Path) -> None:
    """A run stopped by JobCancelled (its job cancelled meanwhile) returns None, no reply stored."""
    job = add_job(worker="tests.workers:CancelsItself", args=[str(tmp_path / "step")])
    assert run_job(job.id) is None
    stored = reload_job(job.id)
    assert stored.status is JobStatus.CANCELLED
    assert stored.response is not None
    assert "should not be stored" not in stored.response


class RaisesCancelled(Worker):
    """Raises JobCancelled itself, its job not cancelled."""

    def execute(self) -> tuple[int, str]:
        raise JobCancelled("stopped by the worker")


def test_job_cancelled_raised_while_the_job_still_runs_fails_it(app: Flask) -> None:
    """A JobCancelled of the worker's own, its job not cancelled, fails the job, not leaves it."""
    job = add_job(worker="tests.test_runner:RaisesCancelled")
    assert run_job(job.id) is JobStatus.FAILED
    stored = reload_job(job.id)
    assert (stored.status, stored.status_code) == (JobStatus.FAILED, 500)
    assert stored.response is not None
    assert json.loads(stored.response) == {"error": "stopped by the worker"}


def test_run_job_with_the_job_s_uid_runs_it(app: Flask) -> None:
    """run_job(job id, uid) claims and runs the job of that uid."""
    job = add_job()
    assert run_job(job.id, job.uid) is JobStatus.PROCESSED


def test_run_job_with_another_uid_leaves_the_job_waiting(app: Flask) -> None:
    """run_job(job id, another uid), a message from before a table reset, claims nothing."""
    job = add_job()
    assert run_job(job.id, new_uid()) is None
    stored = reload_job(job.id)
    assert (stored.status, stored.attempts) == (JobStatus.WAITING, 0)


def test_a_failed_job_keeps_its_traceback_for_operators(app: Flask, client: Any) -> None:
    """The worker's traceback is stored on the job, never in the status endpoint's answer."""
    job = Job.create_and_enqueue(workers.Boom, "kaput")
    stored = reload_job(job.id)
    assert stored.status is JobStatus.FAILED
    assert stored.traceback is not None
    assert "in execute" in stored.traceback and "kaput" in stored.traceback
    answer = client.get("/async_request/job", headers={"X-JOB-AUTHORIZATION": job.token}).get_data(
        as_text=True
    )
    assert "Traceback" not in answer and "in execute" not in answer


def test_a_retry_clears_the_traceback(app: Flask, tmp_path: Path) -> None:
    """A failed job sent again loses the traceback of the run before."""
    from flask_async_request.maintenance import retry_job

    job = Job.create_and_enqueue(workers.FlakyThenOk, str(tmp_path / "runs"), 1)
    assert reload_job(job.id).traceback is not None
    retry_job(job.id)
    assert reload_job(job.id).status is JobStatus.PROCESSED
    assert reload_job(job.id).traceback is None
