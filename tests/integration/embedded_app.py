"""An app in embedded mode for the tests that run it with `flask run`: its workers count their runs.

Each run of a job leaves a file in ``FAR_TEST_RUNS_DIR``; a ``Slow`` job sleeps
only in its first run, so a run cut short and run again ends quickly.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_async_request import AsyncRequest, Job, Worker

db = SQLAlchemy()


def _count_run(job_id: int | None) -> int:
    """Note a run of job ``job_id``; how many it has had, this one included."""
    runs = Path(os.environ["FAR_TEST_RUNS_DIR"])
    (runs / f"{job_id}-{uuid.uuid4().hex}").touch()
    return len(list(runs.glob(f"{job_id}-*")))


class Slow(Worker):
    """Sleeps ``seconds`` in its first run only."""

    def execute(self, seconds: float) -> tuple[int, str]:
        runs = _count_run(self.job_id)
        if runs == 1:
            time.sleep(seconds)
        return 200, json.dumps({"runs": runs})


class Fast(Worker):
    """Answers at once."""

    def execute(self) -> tuple[int, str]:
        return 200, json.dumps({"runs": _count_run(self.job_id)})


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="embedded-app-secret-key-long-enough-for-hs256-signing",
        SQLALCHEMY_DATABASE_URI=os.environ["FAR_TEST_DATABASE_URI"],
        CELERY={},
        ASYNC_REQUEST_LEASE=2,
        ASYNC_REQUEST_SWEEP_INTERVAL=0.5,
        ASYNC_REQUEST_RETRY=1,
    )
    db.init_app(app)
    AsyncRequest(app)
    with app.app_context():
        db.create_all()

    @app.post("/slow/<int:seconds>")
    def slow(seconds: int) -> Any:
        job = Job.create_and_enqueue(Slow, seconds)
        return {"id": job.id, "token": job.token}, 202

    @app.post("/fast")
    def fast() -> Any:
        job = Job.create_and_enqueue(Fast)
        return {"id": job.id, "token": job.token}, 202

    @app.get("/jobs/<int:job_id>")
    def show(job_id: int) -> Any:
        job = db.session.get(Job, job_id)
        assert job is not None
        return {"status": job.status.value, "attempts": job.attempts, "response": job.response}

    @app.get("/pid")
    def pid() -> Any:
        return {"pid": os.getpid()}

    return app
