"""signals: each is sent by the app where its change happens, with its documented arguments."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from blinker import NamedSignal
from flask import Flask

from flask_async_request import Job, JobStatus, lifecycle, signals
from flask_async_request.exceptions import JobFinished
from flask_async_request.maintenance import sweep_jobs
from flask_async_request.runner import run_job
from flask_async_request.web import cancel_job
from tests import workers
from tests.conftest import AppFactory, add_job, reload_job

#: Every signal of the module, by its attribute name.
SIGNALS = {name: value for name, value in vars(signals).items() if isinstance(value, NamedSignal)}

Sent = tuple[str, Flask, dict[str, Any]]


@pytest.fixture
def received() -> Iterator[list[Sent]]:
    """Every signal sent during the test, as (name, sender, keyword arguments)."""
    seen: list[Sent] = []
    receivers = []
    for name, signal in SIGNALS.items():

        def receiver(sender: Flask, _name: str = name, **kwargs: Any) -> None:
            seen.append((_name, sender, kwargs))

        signal.connect(receiver)
        receivers.append((signal, receiver))
    yield seen
    for signal, receiver in receivers:
        signal.disconnect(receiver)


def _of(received: list[Sent], name: str) -> list[dict[str, Any]]:
    return [kwargs for sent, _, kwargs in received if sent == name]


def test_the_module_defines_the_documented_signals() -> None:
    """The eight signals, each under its own name in the module's namespace."""
    assert {name: signal.name for name, signal in SIGNALS.items()} == {
        "job_enqueued": "job-enqueued",
        "job_started": "job-started",
        "job_progress": "job-progress",
        "job_finished": "job-finished",
        "job_failed": "job-failed",
        "job_cancelled": "job-cancelled",
        "jobs_swept": "jobs-swept",
        "callback_delivered": "callback-delivered",
    }


def test_signals_of_a_successful_job(app: Flask, received: list[Sent]) -> None:
    """A job sends started, progress and finished as it runs, then enqueued, all from the app."""
    job = Job.create_and_enqueue(workers.ProgressProbe)
    names = [name for name, _, _ in received]
    # Eager Celery runs the job while it is published: job_enqueued comes after the publish.
    assert names == ["job_started", "job_progress", "job_finished", "job_enqueued"]
    assert all(sender is app for _, sender, _ in received)
    assert all(kwargs["job_id"] == job.id for _, _, kwargs in received)


def test_job_enqueued_names_the_job_and_its_worker(app: Flask, received: list[Sent]) -> None:
    """job_enqueued carries job_id and the worker's dotted path."""
    job = Job.create_and_enqueue(workers.Echo, 1)
    assert _of(received, "job_enqueued") == [{"job_id": job.id, "worker": "tests.workers:Echo"}]


def test_job_started_is_sent_with_the_row_claimed(app: Flask) -> None:
    """When job_started is sent the row is processing already, with its attempt counted."""
    job_id = add_job().id
    seen: list[tuple[JobStatus, int, dict[str, Any]]] = []

    def record(sender: Flask, **kwargs: Any) -> None:
        row = reload_job(job_id)
        seen.append((row.status, row.attempts, kwargs))

    with signals.job_started.connected_to(record, app):
        assert run_job(job_id) is JobStatus.PROCESSED
    [(status, attempts, kwargs)] = seen
    assert (status, attempts) == (JobStatus.PROCESSING, 1)
    assert set(kwargs) == {"job_id", "attempt", "worker", "waited"}
    assert (kwargs["job_id"], kwargs["attempt"], kwargs["worker"]) == (
        job_id,
        1,
        "tests.workers:Echo",
    )
    assert isinstance(kwargs["waited"], float)


def test_job_progress_carries_the_fraction_and_message(app: Flask, received: list[Sent]) -> None:
    """job_progress carries the fraction reported and its message."""
    job = Job.create_and_enqueue(workers.ProgressProbe)
    assert _of(received, "job_progress") == [
        {"job_id": job.id, "progress": 0.75, "message": "three quarters"}
    ]


def test_job_finished_is_sent_with_the_reply_stored(app: Flask) -> None:
    """When job_finished is sent the reply is in the table; it carries the status code."""
    seen: list[tuple[JobStatus, dict[str, Any]]] = []

    def record(sender: Flask, **kwargs: Any) -> None:
        seen.append((reload_job(kwargs["job_id"]).status, kwargs))

    with signals.job_finished.connected_to(record, app):
        job = Job.create_and_enqueue(workers.Reply, "created", "made")
    assert seen == [
        (
            JobStatus.PROCESSED,
            {"job_id": job.id, "status_code": 201, "worker": "tests.workers:Reply"},
        )
    ]


def test_job_failed_carries_the_error_message(app: Flask, received: list[Sent]) -> None:
    """A raising job sends job_failed with the error the client reads, and no job_finished."""
    job = Job.create_and_enqueue(workers.Boom, "bad")
    assert _of(received, "job_failed") == [
        {"job_id": job.id, "error": "bad", "worker": "tests.workers:Boom"}
    ]
    assert _of(received, "job_finished") == []


def test_job_cancelled_is_sent_once_by_the_cancel(app: Flask, received: list[Sent]) -> None:
    """A cancel sends job_cancelled with the job and its worker; a second cancel sends nothing."""
    job = add_job()
    cancel_job(job.id)
    assert [name for name, _, _ in received] == ["job_cancelled"]
    assert _of(received, "job_cancelled") == [{"job_id": job.id, "worker": "tests.workers:Echo"}]
    with pytest.raises(JobFinished):
        cancel_job(job.id)
    assert len(received) == 1


def test_a_cancelled_job_never_sends_started(app: Flask, received: list[Sent]) -> None:
    """A job cancelled before its run is not started: run_job sends nothing for it."""
    job = add_job()
    cancel_job(job.id)
    received.clear()
    assert run_job(job.id) is None
    assert received == []


def test_jobs_swept_counts_what_the_sweep_did(make_app: AppFactory) -> None:
    """jobs_swept is sent by the sweeping app even when it found nothing, with three counts."""
    app = make_app()
    seen: list[tuple[Flask, dict[str, Any]]] = []

    def record(sender: Flask, **counts: Any) -> None:
        seen.append((sender, counts))

    with app.app_context(), signals.jobs_swept.connected_to(record):
        sweep_jobs()
    assert seen == [(app, {"republished": 0, "requeued": 0, "failed": 0})]


def test_a_receiver_connected_to_one_app_hears_only_that_app(
    make_app: AppFactory,
) -> None:
    """The sender is the app: a receiver connected for one app hears none of another's jobs."""
    mine, other = make_app(), make_app()
    heard: list[int] = []

    def record(sender: Flask, job_id: int, **kwargs: Any) -> None:
        heard.append(job_id)

    with signals.job_enqueued.connected_to(record, mine):
        with other.app_context():
            Job.create_and_enqueue(workers.Echo)
        with mine.app_context():
            job_id = Job.create_and_enqueue(workers.Echo).id
    assert heard == [job_id]


# Receivers that raise ---------------------------------------------------------------------


def _broken(sender: Flask, **kwargs: Any) -> None:
    raise RuntimeError("receiver broke")


def test_a_raising_job_started_receiver_fails_the_job(app: Flask) -> None:
    """A receiver of job_started that raises fails the job instead of leaving it processing."""
    with signals.job_started.connected_to(_broken, app):
        job = Job.create_and_enqueue(workers.Echo)
    job = reload_job(job.id)
    assert job.status is JobStatus.FAILED
    assert json.loads(job.response or "") == {
        "error": "The job could not be run: the library raised RuntimeError"
        " (details are in the worker's log)."
    }


@pytest.mark.parametrize(
    ("signal", "worker", "status"),
    [
        (signals.job_finished, workers.Echo, JobStatus.PROCESSED),
        (signals.job_failed, workers.Boom, JobStatus.FAILED),
    ],
)
def test_a_raising_end_receiver_leaves_the_end_stored_and_the_callback_queued(
    app: Flask,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    signal: NamedSignal,
    worker: type[Any],
    status: JobStatus,
) -> None:
    """A receiver of an end signal that raises is logged; the callback is queued all the same."""
    queued: list[int] = []
    monkeypatch.setattr(lifecycle, "queue_callback", queued.append)
    with signal.connected_to(_broken, app):
        job = Job.create_and_enqueue(worker, callback_url="http://127.0.0.1:9/hook")
    assert reload_job(job.id).status is status
    assert queued == [job.id]
    assert f"Job {job.id}: a receiver of its" in caplog.text


def test_a_raising_job_cancelled_receiver_leaves_the_cancel_done(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    """A cancel whose job_cancelled receiver raises is still answered and stored."""
    job = add_job()
    with signals.job_cancelled.connected_to(_broken, app):
        reply = cancel_job(job.id)
    assert reply.status is JobStatus.CANCELLED
    assert reload_job(job.id).status is JobStatus.CANCELLED
    assert "receiver broke" in caplog.text


def test_a_raising_job_progress_receiver_ends_the_job_failed(app: Flask) -> None:
    """A receiver of job_progress that raises inside a run ends the claimed job failed."""
    with signals.job_progress.connected_to(_broken, app):
        job = Job.create_and_enqueue(workers.ProgressProbe)
    job = reload_job(job.id)
    assert job.status is JobStatus.FAILED
    assert job.finished_at is not None
    # The library's sentence, as for job_started: never the receiver's own text.
    assert job.response is not None
    assert json.loads(job.response)["error"] == (
        "The job could not be run: a receiver of job_progress raised RuntimeError"
        " (details are in the worker's log)."
    )


def test_a_raising_job_progress_receiver_is_not_retried(make_app: AppFactory) -> None:
    """The receiver's error is the library's: the job fails at once, retries or not."""
    app = make_app(ASYNC_REQUEST_RETRY=3)
    with app.app_context(), signals.job_progress.connected_to(_broken, app):
        job = Job.create_and_enqueue(workers.ProgressProbe)
        job = reload_job(job.id)
        assert (job.status, job.attempts) == (JobStatus.FAILED, 1)
