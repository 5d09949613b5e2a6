"""flask-async-request on PostgreSQL and Redis."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, url_for
from flask_sqlalchemy import SQLAlchemy

from bench.settings import DATABASE_URL, FAR_QUEUE, REDIS_URL, SECRET_KEY
from flask_async_request import AsyncRequest, Job, Worker, asynchronous

db = SQLAlchemy()


class Noop(Worker):
    def execute(self) -> tuple[int, str]:
        return 200, '{"ok": true}'


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(
        # The token key alone, not SECRET_KEY: with one, Flask opens its cookie
        # session in every request, which the peers' apps (and bare Flask) have none of.
        ASYNC_REQUEST_ENCODE_KEY=SECRET_KEY,
        ASYNC_REQUEST_DECODE_KEY=SECRET_KEY,
        SQLALCHEMY_DATABASE_URI=DATABASE_URL,
        # Lets the long-poll benchmark count the web process's connections.
        SQLALCHEMY_ENGINE_OPTIONS={
            "connect_args": {"application_name": os.environ.get("BENCH_APPLICATION_NAME", "far")}
        },
        CELERY={"broker_url": REDIS_URL},
        ASYNC_REQUEST_QUEUE=FAR_QUEUE,
        ASYNC_REQUEST_CLEAN_JOBS=False,
    )
    db.init_app(app)
    AsyncRequest(app)

    @app.post("/submit")
    def submit() -> tuple[dict[str, Any], int]:
        job = Job.create_and_enqueue(Noop)
        return {"token": job.token, "url": url_for("async_request.job", _external=True)}, 202

    # The same submission through the decorator, whose view runs in the worker: the
    # request is stored with the job, and the 202 is the library's own.
    @app.post("/submit-view")
    @asynchronous
    def submit_view() -> dict[str, bool]:
        return {"ok": True}

    return app


app = create_app()
celery_app = app.extensions["celery"]
