"""Per-worker time limits and queues, stored with each job."""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery.app.task import Task
from flask import Flask
from sqlalchemy.orm import scoped_session

from flask_async_request import Job, JobStatus, Worker
from flask_async_request.broker import hard_time_limit
from flask_async_request.maintenance import sweep_jobs
from flask_async_request.values import utcnow
from tests import workers
from tests.conftest import AppFactory, json_of, poll


class Slow(Worker):
    """Sleeps past any short limit, checking for nothing."""

    time_limit: float | timedelta | None = timedelta(seconds=0.5)

    def execute(self, seconds: float = 30) -> tuple[int, str]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.01)
        return 200, "late"


class Steps(Slow):
    """Like Slow, with no limit of its own."""

    time_limit = None


class BadLimit(Worker):
    time_limit = -1

    def execute(self) -> tuple[int, str]:
        return 200, ""


@pytest.fixture
def sent(process_task: Task[Any, Any], monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The options of each job message published, instead of running it."""
    messages: list[dict[str, Any]] = []
    monkeypatch.setattr(
        process_task,
        "apply_async",
        lambda args, **options: messages.append({"job": args[0], **options}),
    )
    return messages


def test_a_job_past_its_time_limit_fails_saying_so(app: Flask) -> None:
    """A worker that runs past its limit is stopped, and the job fails with the limit error."""
    started = time.monotonic()
    job = Job.create_and_enqueue(Slow)
    assert time.monotonic() - started < 5
    assert job.status is JobStatus.FAILED
    assert job.response is not None
    assert json.loads(job.response) == {"error": "The job exceeded its time limit of 0.5 s."}


def test_a_stopped_worker_can_clean_up(
    app: Flask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TimeLimitExceeded reaches execute, which may catch it to clean up."""
    monkeypatch.setenv(workers.EFFECTS_DIR_ENV, str(tmp_path))
    job = Job.create_and_enqueue(workers.Forever)
    assert job.status is JobStatus.FAILED
    assert (tmp_path / f"cleaned-{job.id}").exists()
    assert job.response is not None
    assert "time limit of 1.5 s" in json.loads(job.response)["error"]


def test_a_job_within_its_limit_is_untouched(app: Flask) -> None:
    """A job that ends in time keeps its reply."""
    job = Job.create_and_enqueue(Slow, 0.05)
    assert job.status is JobStatus.PROCESSED
    assert job.response == "late"


def test_global_time_limit_applies_to_workers_without_their_own(make_app: AppFactory) -> None:
    """ASYNC_REQUEST_TIME_LIMIT limits every worker that sets none."""
    app = make_app(ASYNC_REQUEST_TIME_LIMIT=0.3)
    with app.app_context():
        job = Job.create_and_enqueue(Steps, 30)
        assert job.status is JobStatus.FAILED
        assert job.time_limit == 0.3


def test_a_bad_time_limit_is_refused_at_enqueue(app: Flask, session: scoped_session[Any]) -> None:
    """A limit that is not a positive duration is a ValueError and stores nothing."""
    with pytest.raises(ValueError, match="time_limit is -1"):
        Job.create_and_enqueue(BadLimit)
    assert session.query(Job).count() == 0


def test_the_limit_and_queue_travel_with_the_message(app: Flask, sent: list[Any]) -> None:
    """The job's queue is its worker's; a limit also sets Celery's hard limit for prefork."""
    Job.create_and_enqueue(workers.Report)
    Job.create_and_enqueue(workers.BlockedForever)
    assert sent[0]["queue"] == workers.REPORTS_QUEUE
    assert "time_limit" not in sent[0]
    assert sent[1]["queue"] is None
    assert sent[1]["time_limit"] == hard_time_limit(2) == 7


def test_default_queue_for_workers_without_one(make_app: AppFactory) -> None:
    """ASYNC_REQUEST_QUEUE is stored for workers that name no queue, and is Celery's default."""
    app = make_app(
        ASYNC_REQUEST_QUEUE="jobs", CELERY={"broker_url": "memory://", "task_always_eager": True}
    )
    with app.app_context():
        job = Job.create_and_enqueue(workers.Echo)
        report = Job.create_and_enqueue(workers.Report)
        assert (job.queue, report.queue) == ("jobs", workers.REPORTS_QUEUE)
        assert app.extensions["celery"].conf.task_default_queue == "jobs"


def test_sweeper_sends_a_stale_job_to_its_own_queue(
    app: Flask, session: scoped_session[Any], sent: list[Any]
) -> None:
    """A waiting job whose message was lost goes back to the queue stored with it."""
    job = Job.create_and_enqueue(workers.Thumbnail)
    job.due_at = utcnow() - timedelta(hours=1)
    session.commit()
    sent.clear()
    assert sweep_jobs().republished == 1
    assert sent[0]["queue"] == workers.THUMBS_QUEUE


def test_a_long_poll_on_a_job_past_its_limit_is_answered(app: Flask) -> None:
    """A poll after the limit sees the failure."""
    job = Job.create_and_enqueue(Slow)
    answer = poll(app.test_client(), job.token)
    assert answer.status_code == 200
    assert answer.json["status"] == "failed"


def test_embedded_worker_ends_a_job_past_its_limit_and_goes_on(make_app: AppFactory) -> None:
    """In embedded mode a worker that never returns fails at its limit; the next job runs."""
    app = make_app(CELERY={})
    client = app.test_client()
    with app.app_context():
        stuck = Job.create_and_enqueue(workers.Forever).token
    started = time.monotonic()
    answer = client.get(
        "/async_request/job", headers={"X-JOB-AUTHORIZATION": stuck, "Prefer": "wait=10"}
    )
    assert answer.status_code == 200
    assert "time limit of 1.5 s" in json_of(answer)["response"]["body"]
    assert time.monotonic() - started < 8
    with app.app_context():
        after = Job.create_and_enqueue(workers.Echo, "after").token
    answer = client.get(
        "/async_request/job", headers={"X-JOB-AUTHORIZATION": after, "Prefer": "wait=10"}
    )
    assert json_of(answer)["status"] == "processed"


def test_stats_count_waiting_jobs_per_queue(app: Flask, sent: list[Any]) -> None:
    """stats lists the waiting jobs of each queue, in its table and its JSON."""
    Job.create_and_enqueue(workers.Report)
    Job.create_and_enqueue(workers.Report)
    Job.create_and_enqueue(workers.Thumbnail)
    runner = app.test_cli_runner()
    table = runner.invoke(args=["async-request", "stats"]).output
    assert re.search(rf"^{workers.REPORTS_QUEUE} +2$", table, re.MULTILINE)
    data = json.loads(runner.invoke(args=["async-request", "stats", "--json"]).output)
    assert data["waiting_by_queue"] == {workers.REPORTS_QUEUE: 2, workers.THUMBS_QUEUE: 1}
    assert data["queues_without_workers"] == []
