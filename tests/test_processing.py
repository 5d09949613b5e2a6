"""The processing task: claim, execute, store the reply or the error, retry."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_async_request import Job, JobStatus
from flask_async_request.runner import run_job
from flask_async_request.state import get_state
from tests import workers
from tests.conftest import AppFactory, add_job, json_of


def _reply(app: Flask, status: Any, body: Any) -> Job:
    return Job.create_and_enqueue(workers.Reply, status, body)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (200, 200),
        (201, 201),
        ("ok", 200),
        ("created", 201),
        ("bad_request", 400),
        ("not_found", 404),
        ("unprocessable_entity", 422),
        ("payload_too_large", 413),
        ("internal_server_error", 500),
        ("OK", 200),
        (":accepted", 202),
    ],
)
def test_status_as_int_or_name(app: Flask, status: Any, code: int) -> None:
    """Ints and status names (the Rails symbols) become the stored status code."""
    job = _reply(app, status, "body")
    assert (job.status, job.status_code, job.response) == (JobStatus.PROCESSED, code, "body")


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
    get_state().db.session.refresh(job)
    assert job.status is JobStatus.PROCESSING


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
    get_state().db.session.refresh(job)
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


def test_http_status_enum_name_lookup_is_case_insensitive(app: Flask) -> None:
    """'Not_Found' and HTTPStatus.NOT_FOUND give the same code."""
    job = _reply(app, "Not_Found", "")
    assert job.status_code == HTTPStatus.NOT_FOUND


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
