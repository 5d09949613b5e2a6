"""Values PostgreSQL and MariaDB refuse: every job still ends, and no answer shows SQL."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, request
from flask_sqlalchemy import SQLAlchemy
from hypothesis import HealthCheck, given, settings

from flask_async_request import AsyncRequest, Job, JobStatus, asynchronous, runner, worker
from tests import hostile_values, workers
from tests.conftest import SECRET, Internals, json_of, poll, reload_job
from tests.hostile_values import DRIVER_TEXT

pytestmark = pytest.mark.integration

DATABASE_URL = os.environ.get(
    "FAR_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MARIADB_URL = os.environ.get("FAR_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _app(url: str, internals: Internals) -> Iterator[Flask]:
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        SECRET_KEY=SECRET,
        SQLALCHEMY_DATABASE_URI=url,
        CELERY={"task_always_eager": True},
    )
    db = SQLAlchemy()
    db.init_app(app)
    extension = AsyncRequest(app)

    @app.get("/greet")
    @asynchronous
    def greet() -> Any:
        return f"from {request.args['from']}", 200, {"Content-Type": "text/plain"}

    with app.app_context():
        db.drop_all()
        db.create_all()
    yield hostile_values.hostile_app(app, extension)
    with app.app_context():
        db.session.remove()
        internals.job_store(app).dispose()
        db.engine.dispose()


@pytest.fixture(scope="module")
def pg_app(internals: Internals) -> Iterator[Flask]:
    """An app on PostgreSQL, eager Celery, one jobs table for every example."""
    yield from _app(DATABASE_URL, internals)


@pytest.fixture(scope="module")
def maria_app(internals: Internals) -> Iterator[Flask]:
    """An app on MariaDB, eager Celery, one jobs table for every example."""
    yield from _app(MARIADB_URL, internals)


def _failure(app: Flask, job_id: int) -> str:
    with app.app_context():
        row = reload_job(job_id)
    assert row.status is JobStatus.FAILED, (row.status, row.response)
    message: str = json.loads(row.response or "")["error"]
    assert not any(text in message for text in DRIVER_TEXT), message
    return message


def test_a_nul_reply_fails_its_job_on_postgresql(pg_app: Flask) -> None:
    """A worker's ``"line one\\u0000line two"`` fails its job on PostgreSQL, readably."""
    with pg_app.app_context():
        job_id = Job.create_and_enqueue(workers.Reply, 200, "line one\x00line two").id
    assert "returned a body that cannot be stored: it contains a NUL character" in _failure(
        pg_app, job_id
    )


def test_an_asynchronous_view_answering_a_nul_character_fails_its_job_on_postgresql(
    pg_app: Flask,
) -> None:
    """``?from=a%00b`` echoed by an @asynchronous text view: its job fails, polls end."""
    client = pg_app.test_client()
    started = client.get("/greet?from=a%00b")
    assert started.status_code == 202
    answer = poll(client, json_of(started)["token"])
    assert answer.status_code == 200
    assert answer.json["status"] == "failed"
    message = json.loads(answer.json["response"]["body"])["error"]
    assert message.endswith("returned a body that cannot be stored: it contains a NUL character")


def test_a_nul_reply_postgresql_refuses_fails_its_job(
    pg_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NUL reply that reaches PostgreSQL's UPDATE fails the job with the library's sentence."""
    monkeypatch.setattr(runner, "normalize_reply", lambda reply: (200, "a\x00b", None))
    with pg_app.app_context():
        job_id = Job.create_and_enqueue(workers.Echo).id
    assert _failure(pg_app, job_id) == (
        "The worker's reply could not be stored: the database refused it"
        " (DataError; details are in the worker's log)."
    )


def test_a_nul_progress_message_fails_its_job_on_postgresql(pg_app: Flask) -> None:
    """A progress message with a NUL character fails its job on PostgreSQL, readably."""
    workers.HOSTILE_VALUES["k"] = "step\x001"
    with pg_app.app_context():
        job_id = Job.create_and_enqueue(workers.Hostile, "progress", "k").id
    assert _failure(pg_app, job_id) == (
        "The progress message cannot be stored: it contains a NUL character."
    )


def test_a_nul_progress_message_postgresql_refuses_fails_its_job(
    pg_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NUL progress message that reaches PostgreSQL fails the job without its SQL."""
    monkeypatch.setattr(worker, "unstorable", lambda text, limit=None: None)
    workers.HOSTILE_VALUES["k"] = "step\x001"
    with pg_app.app_context():
        job_id = Job.create_and_enqueue(workers.Hostile, "progress", "k").id
    assert _failure(pg_app, job_id) == (
        "The progress report could not be stored: the database refused it"
        " (DataError; details are in the worker's log)."
    )


def test_a_reply_longer_than_mariadbs_text_goes_to_the_result_store(maria_app: Flask) -> None:
    """A text reply over the 64 KiB a MariaDB TEXT holds is stored in chunks, not refused."""
    text = "x" * 70_000 + "\N{SNOWMAN}"
    with maria_app.app_context():
        job = Job.create_and_enqueue(workers.Reply, 200, text)
        row = reload_job(job.id)
        token = job.token
    assert (row.status, row.response, row.result_size) == (
        JobStatus.PROCESSED,
        "",
        len(text.encode()),
    )
    client = maria_app.test_client()
    assert json_of(poll(client, token))["response"]["size"] == len(text.encode())
    download = client.get("/async_request/result", headers={"X-JOB-AUTHORIZATION": token})
    assert download.data.decode() == text


@pytest.mark.parametrize("field", hostile_values.FIELDS)
@FUZZ
@given(value=hostile_values.values)
def test_any_value_at_any_field_ends_its_job_on_postgresql(
    pg_app: Flask, field: str, value: Any
) -> None:
    """Any value at any field on PostgreSQL: the job ends or no row is made; no SQL shown."""
    hostile_values.hand_over(pg_app, field, value)


@pytest.mark.parametrize("field", hostile_values.FIELDS)
@FUZZ
@given(value=hostile_values.values)
def test_any_value_at_any_field_ends_its_job_on_mariadb(
    maria_app: Flask, field: str, value: Any
) -> None:
    """Any value at any field on MariaDB: the job ends or no row is made; no SQL shown."""
    hostile_values.hand_over(maria_app, field, value)
