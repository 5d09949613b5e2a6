"""The library on MariaDB: no UPDATE ... RETURNING, no LISTEN; the portable paths run."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

from flask_async_request import Job, JobStatus
from tests import workers
from tests.conftest import AppFactory, Internals, current_db, poll

pytestmark = pytest.mark.integration

MARIADB_URL = os.environ.get("FAR_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")


@pytest.fixture
def maria_app(make_app: AppFactory) -> Any:
    app = make_app(create_tables=False, SQLALCHEMY_DATABASE_URI=MARIADB_URL)
    with app.app_context():
        db = app.extensions["sqlalchemy"]
        db.drop_all()
        db.create_all()
    return app


def test_jobs_run_and_answer_on_mariadb(maria_app: Any, internals: Internals) -> None:
    """Create, claim (without RETURNING), run, store and poll."""
    with maria_app.app_context():
        store = internals.job_store(maria_app)
        assert not store.returning
        job = Job.create_and_enqueue(workers.Echo, {"nested": [1, 2]}, key="v")
        token = job.token
        assert job.status is JobStatus.PROCESSED
    answer = poll(maria_app.test_client(), token)
    assert answer.status_code == 200
    assert json.loads(answer.json["response"]["body"])["args"] == [{"nested": [1, 2]}]


def test_cancel_and_long_poll_on_mariadb(maria_app: Any) -> None:
    """Cancellation works, and a long poll falls back to a bounded backoff."""
    with maria_app.app_context():
        job = Job(worker="tests.workers:Echo", params={"args": [], "kwargs": {}})
        current_db().session.add(job)
        current_db().session.commit()
        token = job.token
    client = maria_app.test_client()
    started = time.monotonic()
    waited = client.get(
        "/async_request/job", headers={"X-JOB-AUTHORIZATION": token, "Prefer": "wait=1"}
    )
    assert waited.status_code == 202
    assert 0.9 < time.monotonic() - started < 3
    cancelled = client.delete("/async_request/job", headers={"X-JOB-AUTHORIZATION": token})
    assert cancelled.status_code == 200
    assert cancelled.json["status"] == "cancelled"
