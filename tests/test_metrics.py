"""Prometheus metrics: jobs, runs, polls and sweeps counted; the table's figures when scraped."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from flask_async_request import AsyncRequest, Job
from flask_async_request.maintenance import sweep_jobs
from flask_async_request.models import JobStatus
from flask_async_request.values import utcnow
from tests import workers
from tests.conftest import AppFactory, add_job, current_db, poll


def _value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in the exposition text (0 when it is absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if match and ",".join(sorted((match.group(1) or "").split(","))) == wanted:
            return float(match.group(2))
    return 0.0


@pytest.fixture
def measured(make_app: AppFactory) -> Any:
    extension = AsyncRequest()
    app = make_app(extension=extension)
    extension.init_metrics(app)
    with app.app_context():
        yield app


def _scrape(app: Flask) -> str:
    response = app.test_client().get("/async-request/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    return response.get_data(as_text=True)


def test_jobs_runs_and_ends_are_counted(measured: Flask) -> None:
    """A processed and a failed job show in the counters, by worker and status."""
    before = _scrape(measured)
    echo, boom = "tests.workers:Echo", "tests.workers:Boom"
    Job.create_and_enqueue(workers.Echo, 1)
    Job.create_and_enqueue(workers.Boom)
    after = _scrape(measured)

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert grew("async_request_jobs_created_total", worker=echo) == 1
    assert grew("async_request_jobs_started_total", worker=boom) == 1
    assert grew("async_request_jobs_ended_total", status="processed", worker=echo) == 1
    assert grew("async_request_jobs_ended_total", status="failed", worker=boom) == 1
    assert grew("async_request_job_run_seconds_count", worker=echo) == 1
    assert grew("async_request_job_queue_wait_seconds_count", worker=echo) == 1


def test_polls_are_counted_by_kind_and_code(measured: Flask) -> None:
    """Plain and long polls are counted apart, with their status code."""
    job = add_job()
    before = _scrape(measured)
    client = measured.test_client()
    poll(client, job.token)
    client.get("/async_request/job", headers={"X-JOB-AUTHORIZATION": job.token, "Prefer": "wait=0"})
    client.get("/async_request/job", headers={"X-JOB-AUTHORIZATION": "forged"})
    after = _scrape(measured)
    for kind, code, count in (("plain", "202", 1), ("long", "202", 1), ("plain", "400", 1)):
        grown = _value(after, "async_request_polls_total", kind=kind, code=code) - _value(
            before, "async_request_polls_total", kind=kind, code=code
        )
        assert grown == count, (kind, code)


def test_waiting_jobs_are_read_from_the_table(measured: Flask) -> None:
    """Jobs waiting and the oldest one's age come from the table when scraped."""
    job = add_job()
    job.due_at = utcnow() - timedelta(seconds=120)
    add_job()
    add_job(status=JobStatus.PROCESSED)
    current_db().session.commit()
    text = _scrape(measured)
    assert _value(text, "async_request_jobs_waiting") == 2
    assert 119 <= _value(text, "async_request_oldest_waiting_seconds") < 200


def test_sweeper_actions_are_counted(make_app: AppFactory) -> None:
    """A lost job failed by the sweeper counts as a sweeper action and an end."""
    extension = AsyncRequest()
    app = make_app(extension=extension)
    extension.init_metrics(app)
    with app.app_context():
        before = _scrape(app)
        job = add_job(status=JobStatus.PROCESSING)
        job.attempts, job.lease_expires_at = 1, utcnow() - timedelta(seconds=5)
        current_db().session.commit()
        assert sweep_jobs().failed == 1
        after = _scrape(app)
    grown = _value(after, "async_request_sweeper_actions_total", action="failed") - _value(
        before, "async_request_sweeper_actions_total", action="failed"
    )
    assert grown == 1


def test_init_metrics_needs_init_app() -> None:
    """Metrics on an app without the extension is a RuntimeError saying what to do."""
    from flask_async_request import AsyncRequest

    with pytest.raises(RuntimeError, match="init_app"):
        AsyncRequest().init_metrics(Flask(__name__))


def test_callback_deliveries_are_counted_by_outcome(measured: Flask) -> None:
    """Each delivery counts by outcome and by whether an operator asked for it, timed."""
    from flask_async_request.callbacks import redeliver
    from tests.conftest import Receiver

    receiver = Receiver()
    try:
        before = _scrape(measured)
        job = Job.create_and_enqueue(workers.Echo, 1, callback_url=receiver.url)
        receiver.wait()
        redeliver(job.id)
        after = _scrape(measured)
    finally:
        receiver.server.shutdown()

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    name = "async_request_callback_deliveries_total"
    assert grew(name, outcome="delivered", redelivery="false") == 1
    assert grew(name, outcome="delivered", redelivery="true") == 1
    assert grew("async_request_callback_delivery_seconds_count", outcome="delivered") == 2
