"""Embedded mode: with no broker, jobs run in a worker thread of the web process."""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import Flask, url_for

from flask_async_request import Job
from tests import workers
from tests.conftest import AppFactory, poll


def _poll_until_done(client: Any, token: str, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = poll(client, token)
        if response.status_code != 202:
            return response
        time.sleep(0.05)
    raise AssertionError(f"job still pending after {timeout} s")


def _app_with_view(make_app: AppFactory) -> Flask:
    app = make_app(CELERY={})

    @app.post("/sleep")
    def sleep() -> Any:
        job = Job.create_and_enqueue(workers.Sleep, 0.3, tag="embedded")
        return {"token": job.token, "url": url_for("async_request.job", _external=True)}, 202

    return app


def test_job_runs_in_the_background(make_app: AppFactory) -> None:
    """The view answers 202 at once; polling gives 202, then 200 with the reply."""
    app = _app_with_view(make_app)
    client = app.test_client()
    started = time.monotonic()
    response = client.post("/sleep")
    assert response.status_code == 202
    assert time.monotonic() - started < 0.3
    assert response.json["url"] == "http://localhost/async_request/job"
    assert poll(client, response.json["token"]).status_code == 202
    done = _poll_until_done(client, response.json["token"])
    assert done.status_code == 200
    assert done.json["status"] == "processed"
    assert '"tag": "embedded"' in done.json["response"]["body"]


def test_worker_starts_on_first_enqueue(make_app: AppFactory) -> None:
    """No thread runs until a job is enqueued."""
    app = _app_with_view(make_app)
    state = app.extensions["async_request"]
    names = {t.name for t in threading.enumerate()}
    assert not state.embedded.running
    assert "flask-async-request-worker" not in names
    app.test_client().post("/sleep")
    assert state.embedded.running


def test_several_jobs_finish(make_app: AppFactory) -> None:
    """A handful of jobs enqueued together all finish."""
    app = _app_with_view(make_app)
    client = app.test_client()
    tokens = [client.post("/sleep").json["token"] for _ in range(5)]
    assert {_poll_until_done(client, t).json["status"] for t in tokens} == {"processed"}


def test_web_process_can_still_wait_on_results(make_app: AppFactory) -> None:
    """Starting the embedded worker does not turn AsyncResult.get() off in the web process."""
    app = _app_with_view(make_app)
    app.test_client().post("/sleep")
    celery_app = app.extensions["celery"]
    celery_app.conf.task_always_eager = True

    @celery_app.task(shared=False)
    def add(a: int, b: int) -> int:
        return a + b

    assert add.delay(2, 3).get(timeout=5) == 5
