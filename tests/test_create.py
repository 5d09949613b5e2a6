"""Job.create_and_enqueue: validation, the stored row, publishing after commit."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from sqlalchemy.orm import scoped_session

from flask_async_request import EnqueueError, Job, JobStatus, Worker
from flask_async_request.tokens import TokenVerifier
from tests import workers
from tests.conftest import AppFactory, current_db


def _count(app: Flask) -> int:
    return app.extensions["sqlalchemy"].session.query(Job).count()  # type: ignore[no-any-return]


def test_stores_a_row_and_runs_it(app: Flask) -> None:
    """A job is stored with its worker path and params, and eager Celery runs it."""
    job = Job.create_and_enqueue(workers.Echo, 1, "two", three=3)
    assert job.worker == "tests.workers:Echo"
    assert job.params == {"args": [1, "two"], "kwargs": {"three": 3}}
    assert len(job.uid) == 32
    assert job.status is JobStatus.PROCESSED
    assert job.response is not None
    assert json.loads(job.response) == {
        "args": [1, "two"],
        "kwargs": {"three": 3},
        "job_id": job.id,
    }


def test_nested_params_come_back_equal(app: Flask) -> None:
    """Hashes, lists, numbers and strings reach execute unchanged."""
    params: dict[str, Any] = {"a": {"b": [1, 2.5, None, True]}, "c": "d", "e": []}
    job = Job.create_and_enqueue(workers.Echo, params, [params])
    assert job.response is not None
    assert json.loads(job.response)["args"] == [params, [params]]


def test_tuples_are_stored_as_lists(app: Flask) -> None:
    """A tuple argument is accepted and arrives as a list, as JSON stores it."""
    job = Job.create_and_enqueue(workers.Echo, (1, 2))
    assert job.response is not None
    assert json.loads(job.response)["args"] == [[1, 2]]


class _NotImportable(Worker):
    def execute(self) -> tuple[int, str]:
        return 200, ""


_NotImportable.__qualname__ = "Renamed"


def _local_worker() -> type[Worker]:
    class Local(Worker):
        def execute(self) -> tuple[int, str]:
            return 200, ""

    return Local


@pytest.mark.parametrize(
    ("worker_class", "error", "message"),
    [
        (None, TypeError, "subclass of flask_async_request.Worker, got None"),
        ("tests.workers:Echo", TypeError, "subclass of flask_async_request.Worker"),
        (workers.NotAWorker, TypeError, "subclass of flask_async_request.Worker"),
        (workers.Echo(), TypeError, "subclass of flask_async_request.Worker"),
        (Worker, TypeError, "not Worker itself"),
        (print, TypeError, "subclass of flask_async_request.Worker"),
        (_local_worker(), ValueError, "defined inside a function"),
        (_NotImportable, ValueError, "cannot be imported by its path"),
    ],
)
def test_bad_worker_class_leaves_no_row(
    app: Flask, worker_class: Any, error: type[Exception], message: str
) -> None:
    """Anything but an importable Worker subclass raises and stores nothing."""
    with pytest.raises(error, match=message):
        Job.create_and_enqueue(worker_class)
    assert _count(app) == 0


def test_queue_setting_routes_the_message(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ASYNC_REQUEST_QUEUE names the queue the message is sent to."""
    app = make_app(ASYNC_REQUEST_QUEUE="slow")
    sent: list[dict[str, Any]] = []
    with app.app_context():
        task = app.extensions["celery"].tasks["flask_async_request.process_job"]
        monkeypatch.setattr(task, "apply_async", lambda args, **options: sent.append(options))
        Job.create_and_enqueue(workers.Echo)
    assert sent[0]["queue"] == "slow"


def test_broker_down_keeps_the_row_and_raises(make_app: AppFactory) -> None:
    """A broker that cannot be reached gives EnqueueError; the row stays waiting."""
    app = make_app(
        CELERY={
            "broker_url": "redis://127.0.0.1:1/0",
            "broker_connection_retry": False,
            "broker_connection_max_retries": 0,
            "broker_transport_options": {"max_retries": 0},
        }
    )
    with app.app_context():
        with pytest.raises(EnqueueError, match="could not be published") as info:
            Job.create_and_enqueue(workers.Echo)
        job = current_db().session.get(Job, info.value.job_id)
        assert job is not None
        assert job.status is JobStatus.WAITING


def test_a_job_read_from_the_database_is_signed_on_first_use(
    app: Flask, session: scoped_session[Any], verify_token: TokenVerifier
) -> None:
    """Job.token works on a job a query loads, signed with the app's settings."""
    created = Job.create_and_enqueue(workers.Echo, 1)
    job_id, uid = created.id, created.uid
    session.expunge_all()
    loaded = session.get(Job, job_id)
    assert loaded is not None
    claims = verify_token(loaded.token)
    assert (claims.job_id, claims.uid) == (job_id, uid)
