"""The richer protocol: a generic client following Location, progress, and cancellation."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy.orm import scoped_session

from flask_async_request import Job, JobStatus, accepted
from flask_async_request.runner import run_job
from tests import workers
from tests.conftest import AppFactory, add_job, poll


def delete(client: Any, token: str) -> Any:
    return client.delete("/async_request/job", headers={"X-JOB-AUTHORIZATION": f"Bearer {token}"})


def _generic_lro_client(client: Any, response: Any) -> Any:
    """What a client that knows nothing of this library does: follow Location, honour
    Retry-After, stop at the first answer that is not 202. It sends no token header."""
    polls = 0
    while response.status_code == 202:
        time.sleep(float(response.headers.get("Retry-After", "1")) / 10)
        response = client.get(response.headers["Location"])
        polls += 1
        assert polls < 100
    return response


def test_a_generic_client_finishes_a_job_by_following_location(make_app: AppFactory) -> None:
    """A job's 202 and each pending poll carry a Location a generic client can follow."""
    app = make_app(CELERY={})

    @app.post("/start")
    def start() -> Any:
        return accepted(Job.create_and_enqueue(workers.Sleep, 0.5))

    client = app.test_client()
    first = client.post("/start")
    done = _generic_lro_client(client, first)
    assert done.status_code == 200
    assert done.json["status"] == "processed"


# Progress ------------------------------------------------------------------------------


def test_progress_is_stored_while_running(app: Flask) -> None:
    """progress(done, total, message) is visible in the row while the job runs."""
    job = Job.create_and_enqueue(workers.ProgressProbe)
    assert job.response is not None
    assert json.loads(job.response) == {"progress": 0.75, "message": "three quarters"}
    assert job.progress == 1.0


def test_progress_is_answered_rounded(
    app: Flask, session: scoped_session[Any], client: Any
) -> None:
    """Progress is answered to four decimal places, not as the float it is stored as."""
    job = add_job(status=JobStatus.PROCESSING)
    job.progress = 86 / 300
    session.commit()
    assert poll(client, job.token).json["progress"] == 0.2867


# Cancellation --------------------------------------------------------------------------


def test_cancel_a_waiting_job(app: Flask, client: Any, tmp_path: Path) -> None:
    """DELETE cancels a waiting job; it answers 200 cancelled and never runs."""
    counter = tmp_path / "runs"
    job = add_job(worker="tests.workers:FlakyThenOk", args=[str(counter), 0])
    response = delete(client, job.token)
    assert response.status_code == 200
    assert response.json == {
        "status": "cancelled",
        "response": {"status_code": 499, "body": '{"error": "Job cancelled"}'},
    }
    assert run_job(job.id) is None
    assert not counter.exists()
    assert poll(client, job.token).json["status"] == "cancelled"


def test_cancel_a_running_job_stops_it(app: Flask, tmp_path: Path) -> None:
    """A running worker stops at its next progress report; its reply is never stored."""
    counter = tmp_path / "step"
    job = Job.create_and_enqueue(workers.CancelsItself, str(counter))
    assert job.status is JobStatus.CANCELLED
    assert job.status_code == 499
    assert counter.read_text() == "0"


def test_cancelled_called_like_a_method_answers_too(app: Flask, tmp_path: Path) -> None:
    """self.cancelled() gives the bool that self.cancelled reads as, instead of failing the job."""
    answers = tmp_path / "answers.json"
    job = Job.create_and_enqueue(workers.CallsCancelled, str(answers))
    assert json.loads(answers.read_text()) == [True, True]
    assert job.status is JobStatus.CANCELLED


def test_cancel_revokes_the_task(make_app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelling revokes the job's Celery task id, so a queued message is dropped."""
    app = make_app(CELERY={"broker_url": "redis://127.0.0.1:6379/15"})
    revoked: list[str] = []
    monkeypatch.setattr(app.extensions["celery"].control, "revoke", revoked.append)
    with app.app_context():
        job = add_job()
        expected = f"async-request-{job.id}-{job.uid}"
        assert delete(app.test_client(), job.token).status_code == 200
    assert revoked == [expected]
