"""The richer protocol: 202 with progress and Retry-After, accepted(), cancellation, signals."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy.engine import Engine
from sqlalchemy.orm import scoped_session

from flask_async_request import Job, JobStatus, accepted, signals
from flask_async_request.runner import run_job
from flask_async_request.store import JobStore
from tests import workers
from tests.conftest import AppFactory, add_job, current_db, json_of, poll


def delete(client: Any, token: str) -> Any:
    return client.delete("/async_request/job", headers={"X-JOB-AUTHORIZATION": f"Bearer {token}"})


def test_pending_answer_has_progress_and_retry_after(
    app: Flask, session: scoped_session[Any], client: Any
) -> None:
    """A 202 carries Retry-After and a body with status, progress and message."""
    job = add_job(status=JobStatus.PROCESSING)
    job.progress, job.progress_message = 0.5, "halfway"
    session.commit()
    response = poll(client, job.token)
    assert response.status_code == 202
    assert response.headers["Retry-After"] == "1"
    assert response.json == {"status": "processing", "progress": 0.5, "message": "halfway"}


def test_retry_after_is_configurable(make_app: AppFactory) -> None:
    """ASYNC_REQUEST_RETRY_AFTER sets the header."""
    app = make_app(ASYNC_REQUEST_RETRY_AFTER=5)
    with app.app_context():
        token = add_job().token
    assert poll(app.test_client(), token).headers["Retry-After"] == "5"


def test_accepted_builds_the_202(app: Flask) -> None:
    """accepted(job) answers 202 with token, url, Location and Retry-After."""

    @app.post("/start")
    def start() -> Any:
        return accepted(Job.create_and_enqueue(workers.Echo, 1), kind="echo")

    response = app.test_client().post("/start")
    assert response.status_code == 202
    token = json_of(response)["token"]
    assert json_of(response)["url"] == f"http://localhost/async_request/job/{token}"
    assert json_of(response)["kind"] == "echo"
    assert response.headers["Location"] == json_of(response)["url"]
    assert response.headers["Retry-After"] == "1"
    assert poll(app.test_client(), token).status_code == 200


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


def test_pending_polls_of_the_job_url_repeat_location(app: Flask, client: Any) -> None:
    """A 202 from a job's own url tells where to poll next, as the first 202 did."""
    job = add_job()
    answer = client.get(f"/async_request/job/{job.token}")
    assert answer.status_code == 202
    assert answer.headers["Location"] == f"http://localhost/async_request/job/{job.token}"


def test_the_job_url_can_be_turned_off(make_app: AppFactory) -> None:
    """ASYNC_REQUEST_TOKEN_IN_URL = False: the shared url, and a job url answers 404."""
    app = make_app(ASYNC_REQUEST_TOKEN_IN_URL=False)

    @app.post("/start")
    def start() -> Any:
        return accepted(Job.create_and_enqueue(workers.Echo, 1))

    response = app.test_client().post("/start")
    token = json_of(response)["token"]
    assert response.headers["Location"] == "http://localhost/async_request/job"
    assert app.test_client().get(f"/async_request/job/{token}").status_code == 404
    assert poll(app.test_client(), token).status_code == 200


def test_a_bad_token_in_the_job_url_is_400(client: Any) -> None:
    """A forged or oversized token in the path is refused like one in the header."""
    assert client.get("/async_request/job/forged").status_code == 400
    assert client.get("/async_request/job/" + "x" * 5000).status_code == 400
    assert client.delete("/async_request/job/forged").status_code == 400


# Progress ------------------------------------------------------------------------------


def test_progress_is_stored_while_running(app: Flask) -> None:
    """progress(done, total, message) is visible in the row while the job runs."""
    job = Job.create_and_enqueue(workers.ProgressProbe)
    assert job.response is not None
    assert json.loads(job.response) == {"progress": 0.75, "message": "three quarters"}
    assert job.progress == 1.0


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


def test_cancel_a_finished_job_is_409(app: Flask, client: Any) -> None:
    """A finished job cannot be cancelled."""
    job = Job.create_and_enqueue(workers.Echo)
    response = delete(client, job.token)
    assert response.status_code == 409
    assert response.json["errors"][0]["message"].startswith("The job has finished already")
    assert _reload(job).status is JobStatus.PROCESSED


def test_cancel_needs_a_valid_token(app: Flask, session: scoped_session[Any], client: Any) -> None:
    """DELETE with a bad token is 400, with a token of a deleted job 404."""
    assert delete(client, "garbage").status_code == 400
    job = add_job()
    token = job.token
    session.delete(job)
    session.commit()
    assert delete(client, token).status_code == 404


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


def _reload(job: Job) -> Job:
    session = current_db().session
    session.expire_all()
    found = session.get(Job, job.id)
    assert found is not None
    return found


# Signals -------------------------------------------------------------------------------


@pytest.fixture
def received() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Every signal sent during the test, as (name, keyword arguments)."""
    seen: list[tuple[str, dict[str, Any]]] = []
    names = ["job_enqueued", "job_started", "job_progress", "job_finished", "job_failed"]
    names.append("job_cancelled")
    receivers = []
    for name in names:

        def receiver(sender: Flask, _name: str = name, **kwargs: Any) -> None:
            seen.append((_name, kwargs))

        getattr(signals, name).connect(receiver)
        receivers.append((name, receiver))
    yield seen
    for name, receiver in receivers:
        getattr(signals, name).disconnect(receiver)


def test_signals_of_a_successful_job(app: Flask, received: list[Any]) -> None:
    """A job sends enqueued, started, progress and finished."""
    job = Job.create_and_enqueue(workers.ProgressProbe)
    names = [name for name, _ in received]
    assert names == ["job_started", "job_progress", "job_finished", "job_enqueued"]
    assert all(kwargs["job_id"] == job.id for _, kwargs in received)
    assert received[2][1]["status_code"] == 200


def test_signals_of_a_failed_and_a_cancelled_job(
    app: Flask, client: Any, received: list[Any]
) -> None:
    """A raising job sends failed with the error; a DELETE sends cancelled."""
    Job.create_and_enqueue(workers.Boom, "bad")
    boom, echo = "tests.workers:Boom", "tests.workers:Echo"
    assert ("job_failed", {"job_id": 1, "error": "bad", "worker": boom}) in received
    job = add_job()
    delete(client, job.token)
    assert received[-1] == ("job_cancelled", {"job_id": job.id, "worker": echo})


# Long polling ------------------------------------------------------------------------


def _prefer(client: Any, token: str, prefer: str) -> Any:
    return client.get(
        "/async_request/job",
        headers={"X-JOB-AUTHORIZATION": f"Bearer {token}", "Prefer": prefer},
    )


def test_prefer_wait_answers_when_the_job_finishes(app: Flask, engine: Engine, client: Any) -> None:
    """A long poll returns as soon as the job finishes, with its reply."""
    import threading
    import time

    import sqlalchemy as sa

    job = add_job(status=JobStatus.PROCESSING)
    token, job_id = job.token, job.id

    def finish_soon() -> None:
        time.sleep(0.4)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE async_request_jobs SET status = 'processed', status_code = 200,"
                    " response = 'done' WHERE id = :id"
                ),
                {"id": job_id},
            )

    threading.Thread(target=finish_soon).start()
    started = time.monotonic()
    response = _prefer(client, token, "wait=10")
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.json["response"]["body"] == "done"
    assert response.headers["Preference-Applied"] == "wait=10"
    assert 0.3 < elapsed < 3


def test_prefer_wait_is_capped(make_app: AppFactory) -> None:
    """The wait is capped by ASYNC_REQUEST_MAX_WAIT; a pending job then answers 202."""
    import time

    app = make_app(ASYNC_REQUEST_MAX_WAIT=1)
    with app.app_context():
        token = add_job().token
    started = time.monotonic()
    response = _prefer(app.test_client(), token, "respond-async, wait=100")
    assert response.status_code == 202
    assert response.headers["Preference-Applied"] == "wait=1"
    assert 0.9 < time.monotonic() - started < 3


def test_without_prefer_a_poll_does_not_wait(app: Flask, client: Any) -> None:
    """Plain polls answer at once and apply no preference."""
    response = poll(client, add_job().token)
    assert response.status_code == 202
    assert "Preference-Applied" not in response.headers


def test_prefer_wait_on_a_finished_job_answers_at_once(app: Flask, client: Any) -> None:
    """A finished job needs no wait."""
    token = Job.create_and_enqueue(workers.Echo).token
    response = _prefer(client, token, "wait=30")
    assert response.status_code == 200
    assert "Preference-Applied" not in response.headers


@pytest.mark.parametrize(
    "prefer",
    [
        "wait=1.5",
        "wait=1e3",
        "wait=-1",
        "wait=",
        "handling=lenient; wait=2",
        'foo="a, wait=2"',
        "respond-async; wait=2",
        "wait=1.5, wait=2",
    ],
)
def test_a_wait_that_is_not_delta_seconds_is_ignored(
    app: Flask, client: Any, prefer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 7240: wait is a non-negative integer, first instance only; anything else is ignored."""
    waits: list[float] = []
    monkeypatch.setattr(
        JobStore, "wait_until_finished", lambda store, job_id, timeout: waits.append(timeout)
    )
    response = _prefer(client, add_job().token, prefer)
    assert response.status_code == 202
    assert "Preference-Applied" not in response.headers
    assert waits == []


@pytest.mark.parametrize("prefer", ["WAIT = 1", 'wait="1"', "return=minimal, wait=1; x=y, wait=9"])
def test_a_wait_preference_in_any_valid_form_is_applied(
    app: Flask, client: Any, prefer: str
) -> None:
    """Names match without regard to case, values may be quoted, parameters are allowed."""
    response = _prefer(client, add_job().token, prefer)
    assert response.headers["Preference-Applied"] == "wait=1"


def test_progress_is_answered_rounded(
    app: Flask, session: scoped_session[Any], client: Any
) -> None:
    """Progress is answered to four decimal places, not as the float it is stored as."""
    job = add_job(status=JobStatus.PROCESSING)
    job.progress = 86 / 300
    session.commit()
    assert poll(client, job.token).json["progress"] == 0.2867
