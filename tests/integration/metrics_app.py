"""An app with metrics for the multiprocess test: SQLite, jobs run eagerly in the web process."""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_async_request import AsyncRequest, Job, accepted
from tests import workers

db = SQLAlchemy()
async_request = AsyncRequest()

app = Flask(__name__)
app.config.update(
    SECRET_KEY="metrics-test-secret-key-long-enough-for-hmac-sha256",
    SQLALCHEMY_DATABASE_URI=os.environ["FAR_TEST_METRICS_DATABASE_URL"],
    CELERY={"task_always_eager": True},
)
db.init_app(app)
async_request.init_app(app)
async_request.init_metrics(app)


@app.post("/echo")
def echo() -> Any:
    # Slow enough that concurrent requests spread over both worker processes.
    time.sleep(0.1)
    return accepted(Job.create_and_enqueue(workers.Echo, os.getpid()))
