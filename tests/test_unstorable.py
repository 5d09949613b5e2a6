"""Values no database can store: refused where they are given, or the job fails readably.

Whatever a worker or a client hands the library, the job ends (``processed`` or
``failed``) or is refused at creation with a typed error and no row; an error a
client reads is the library's sentence, never the driver's text or SQL.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, request
from flask_sqlalchemy import SQLAlchemy
from hypothesis import given, settings
from sqlalchemy.orm import scoped_session

from flask_async_request import (
    AsyncRequest,
    InvalidCallbackUrl,
    InvalidIdempotencyKey,
    Job,
    JobStatus,
    UnstorableValue,
    asynchronous,
    lifecycle,
    runner,
    web,
)
from flask_async_request.outcomes import Outcome
from flask_async_request.store import JobStore
from tests import hostile_values, workers
from tests.conftest import SECRET, AppFactory, add_job, current_db, json_of, poll, reload_job
from tests.hostile_values import DRIVER_TEXT


def _error(job: Job) -> str:
    job = reload_job(job.id)
    assert job.status is JobStatus.FAILED, (job.status, job.response)
    message: str = json.loads(job.response or "")["error"]
    assert not any(text in message for text in DRIVER_TEXT), message
    return message


def _rows() -> int:
    session = current_db().session
    count = session.execute(sa.select(sa.func.count()).select_from(Job)).scalar_one()
    session.commit()
    return int(count)


def _database_error(kind: type[sa.exc.DBAPIError] = sa.exc.DataError, **extra: Any) -> Any:
    """An error as SQLAlchemy raises it for the library's own UPDATE: SQL and parameters inside."""
    return kind(
        "UPDATE async_request_jobs SET response=%(response)s WHERE id = %(job_id)s",
        {"response": "secret", "job_id": 1},
        Exception("value refused"),
        **extra,
    )


@pytest.fixture
def refuse_finish(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[Outcome]]:
    """Have a run's finish raise ``error`` for the outcomes ``refused`` picks; store the rest."""

    def install(
        error: BaseException | None = None,
        refused: Callable[[Outcome], bool] = lambda outcome: outcome.status is JobStatus.PROCESSED,
    ) -> list[Outcome]:
        real = lifecycle.finish
        tried: list[Outcome] = []

        def finish(
            store: JobStore, job_id: int, attempt: int, outcome: Outcome, **options: Any
        ) -> Any:
            tried.append(outcome)
            if refused(outcome):
                raise error if error is not None else _database_error()
            return real(store, job_id, attempt, outcome, **options)

        monkeypatch.setattr(lifecycle, "finish", finish)
        return tried

    return install


# Replies --------------------------------------------------------------------------------


def test_a_body_with_a_nul_character_fails_the_job(app: Flask) -> None:
    """A reply body with a NUL character fails the job with a sentence that names it."""
    job = Job.create_and_enqueue(workers.Reply, 200, "line one\x00line two")
    assert _error(job) == (
        "Worker tests.workers:Reply returned a body that cannot be stored:"
        " it contains a NUL character"
    )


def test_a_body_with_a_lone_surrogate_fails_the_job(app: Flask) -> None:
    """A reply body no driver can encode (a lone surrogate) fails the job readably."""
    workers.HOSTILE_VALUES["k"] = "half \ud800 a pair"
    job = Job.create_and_enqueue(workers.Hostile, "body", "k")
    assert "returned a body that cannot be stored: it contains a lone surrogate" in _error(job)


def test_a_content_type_with_a_nul_character_fails_the_job(app: Flask) -> None:
    """A content type with a NUL character fails the job, saying why."""
    job = Job.create_and_enqueue(workers.ReturnValue, [200, "x", "text/plain\x00"])
    assert "returned a content type that cannot be stored: it contains a NUL" in _error(job)


def test_a_huge_status_name_is_cut_in_the_error(app: Flask) -> None:
    """An unknown status name of a megabyte is quoted cut, not whole, in the job's error."""
    job = Job.create_and_enqueue(workers.ReturnValue, ["x" * 1_000_000, "body"])
    message = _error(job)
    assert "is not a known HTTP status name" in message
    assert len(message) < 400


def test_an_asynchronous_view_answering_a_nul_character_fails_its_job(app: Flask) -> None:
    """``?from=a%00b`` echoed by an @asynchronous text view fails its job; polls end."""

    @app.get("/greet")
    @asynchronous
    def greet() -> Any:
        return f"from {request.args['from']}", 200, {"Content-Type": "text/plain"}

    client = app.test_client()
    started = client.get("/greet?from=a%00b")
    assert started.status_code == 202
    answer = poll(client, json_of(started)["token"])
    assert answer.status_code == 200
    assert answer.json["status"] == "failed"
    assert "contains a NUL character" in json.loads(answer.json["response"]["body"])["error"]


# Progress -------------------------------------------------------------------------------


def test_a_progress_message_with_a_nul_character_is_refused(app: Flask) -> None:
    """A progress message with a NUL character raises ValueError in the worker: it fails."""
    workers.HOSTILE_VALUES["k"] = "step\x001"
    job = Job.create_and_enqueue(workers.Hostile, "progress", "k")
    assert _error(job) == "The progress message cannot be stored: it contains a NUL character."


def test_a_refused_progress_write_fails_the_job_with_the_librarys_sentence(
    app: Flask, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A progress UPDATE the database refuses fails the job; its SQL goes to the log only."""

    def refuse(*args: Any) -> bool:
        raise _database_error()

    monkeypatch.setattr(lifecycle, "set_progress", refuse)
    workers.HOSTILE_VALUES["k"] = "halfway"
    with caplog.at_level(logging.ERROR, logger="flask_async_request"):
        job = Job.create_and_enqueue(workers.Hostile, "progress", "k")
    assert _error(job) == (
        "The progress report could not be stored: the database refused it"
        " (DataError; details are in the worker's log)."
    )
    assert any(r.exc_info and "[SQL:" in str(r.exc_info[1]) for r in caplog.records)


def test_a_refused_progress_write_is_not_retried(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused progress write fails the job at once, with retries allowed: it would recur."""

    def refuse(*args: Any) -> bool:
        raise _database_error()

    monkeypatch.setattr(lifecycle, "set_progress", refuse)
    workers.HOSTILE_VALUES["k"] = "halfway"
    with make_app(ASYNC_REQUEST_RETRY=3).app_context():
        job = Job.create_and_enqueue(workers.Hostile, "progress", "k")
        assert _error(job).startswith("The progress report could not be stored")
        assert reload_job(job.id).attempts == 1


def test_a_progress_write_on_a_lost_connection_is_skipped(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A progress report that loses its connection is skipped; the job still finishes."""

    def lose(*args: Any) -> bool:
        raise _database_error(sa.exc.OperationalError, connection_invalidated=True)

    monkeypatch.setattr(lifecycle, "set_progress", lose)
    workers.HOSTILE_VALUES["k"] = "halfway"
    job = Job.create_and_enqueue(workers.Hostile, "progress", "k")
    assert reload_job(job.id).status is JobStatus.PROCESSED


def test_a_progress_write_failing_from_a_lost_connection_is_skipped(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error raised from a lost connection (the database still out of reach) is skipped too."""

    def unavailable(*args: Any) -> bool:
        try:
            raise _database_error(sa.exc.OperationalError)
        except sa.exc.OperationalError as e:
            raise RuntimeError("The jobs database is unavailable.") from e

    monkeypatch.setattr(lifecycle, "set_progress", unavailable)
    workers.HOSTILE_VALUES["k"] = "halfway"
    job = Job.create_and_enqueue(workers.Hostile, "progress", "k")
    assert reload_job(job.id).status is JobStatus.PROCESSED


# A worker's own errors ----------------------------------------------------------------------


def test_a_database_error_raised_by_the_worker_is_not_shown(app: Flask) -> None:
    """A worker's own failed query fails the job naming the error's class, not its SQL."""
    job = Job.create_and_enqueue(workers.RaisesDatabaseError)
    assert _error(job) == (
        "The worker raised OperationalError (a database error; details are in the worker's log)."
    )


def test_a_database_error_importing_the_worker_is_not_shown(app: Flask) -> None:
    """A worker module whose import raises a database error fails its job without the SQL."""
    job = add_job(worker="tests.imports_a_missing_table:Never")
    runner.run_job(job.id)
    assert _error(job) == (
        "Worker tests.imports_a_missing_table:Never cannot be loaded: importing it raised"
        " OperationalError (a database error; details are in the worker's log)."
    )


def test_a_huge_error_message_is_cut(app: Flask) -> None:
    """A worker's exception message is stored cut to MAX_ERROR_LENGTH characters."""
    workers.HOSTILE_VALUES["k"] = "e" * 100_000
    job = Job.create_and_enqueue(workers.Hostile, "error", "k")
    message = _error(job)
    assert len(message) == runner.MAX_ERROR_LENGTH
    assert message.endswith("...")


# The runner's own failures ----------------------------------------------------------------


def test_a_reply_the_database_refuses_fails_the_job(
    app: Flask, refuse_finish: Callable[..., list[Outcome]]
) -> None:
    """A finish the database refuses stores a failure of the library's instead."""
    refuse_finish()
    job = Job.create_and_enqueue(workers.Echo)
    assert _error(job) == (
        "The worker's reply could not be stored: the database refused it"
        " (DataError; details are in the worker's log)."
    )


def test_an_error_the_database_refuses_fails_the_job_with_the_librarys_sentence(
    app: Flask, refuse_finish: Callable[..., list[Outcome]]
) -> None:
    """A worker's error the database refuses is replaced by the library's sentence."""
    refuse_finish(refused=lambda outcome: "disk on fire" in outcome.body)
    job = Job.create_and_enqueue(workers.Boom, "disk on fire")
    assert _error(job).startswith("The job's error could not be stored: the database refused it")


def test_a_finish_on_a_lost_connection_leaves_the_job_to_the_sweeper(
    app: Flask, refuse_finish: Callable[..., list[Outcome]]
) -> None:
    """A lost connection while finishing is raised, not stored as a failure: the lease decides."""
    refuse_finish(_database_error(sa.exc.OperationalError, connection_invalidated=True))
    job = add_job(worker="tests.workers:Echo")
    with pytest.raises(sa.exc.OperationalError):
        runner.run_job(job.id)
    assert reload_job(job.id).status is JobStatus.PROCESSING


def test_a_failure_that_cannot_be_stored_either_is_logged_with_the_job_id(
    app: Flask, refuse_finish: Callable[..., list[Outcome]], caplog: pytest.LogCaptureFixture
) -> None:
    """When even the library's failure is refused, the job id is logged; the sweeper is left."""
    refuse_finish(refused=lambda outcome: True)
    job = add_job(worker="tests.workers:Echo")
    with caplog.at_level(logging.ERROR, logger="flask_async_request"):
        assert runner.run_job(job.id) is None
    assert reload_job(job.id).status is JobStatus.PROCESSING
    assert any(
        f"Job {job.id}: its failure could not be stored either" in r.getMessage()
        for r in caplog.records
    )


def test_a_refused_reply_of_a_cancelled_attempt_changes_nothing(
    job_store: JobStore, refuse_finish: Callable[..., list[Outcome]]
) -> None:
    """The failure stored for a refused reply is fenced: a job cancelled meanwhile stays so."""
    store = job_store

    def cancel_then_refuse(outcome: Outcome) -> bool:
        if outcome.status is JobStatus.PROCESSED:
            lifecycle.cancel(store, job.id)
            return True
        return False

    tried = refuse_finish(refused=cancel_then_refuse)
    job = add_job(worker="tests.workers:Echo")
    assert runner.run_job(job.id) is None
    assert [outcome.status for outcome in tried] == [JobStatus.PROCESSED, JobStatus.FAILED]
    assert reload_job(job.id).status is JobStatus.CANCELLED


def test_a_transactional_write_the_database_refuses_fails_the_job(app: Flask) -> None:
    """A transactional worker's own write refused at the commit fails the job, rolled back."""
    job = Job.create_and_enqueue(workers.RefusedWrite)
    assert _error(job) == (
        "The worker's reply and database writes could not be stored: the database refused"
        " them (IntegrityError; details are in the worker's log)."
    )
    assert _rows() == 1


# Creation -------------------------------------------------------------------------------------


def test_arguments_with_a_lone_surrogate_are_refused(app: Flask) -> None:
    """An argument with a lone surrogate raises UnstorableValue (a ValueError) and stores no row."""
    with pytest.raises(UnstorableValue, match=r"args\[0\]\['q'\] contains a lone surrogate"):
        Job.create_and_enqueue(workers.Echo, {"q": "\udc80"})
    assert _rows() == 0


def test_a_dict_key_with_a_lone_surrogate_is_refused(app: Flask) -> None:
    """A dict key with a lone surrogate is refused like a value."""
    with pytest.raises(UnstorableValue, match="contains a lone surrogate"):
        Job.create_and_enqueue(workers.Echo, options={"\ud800": 1})
    assert _rows() == 0


def test_a_view_passing_a_clients_lone_surrogate_answers_400(app: Flask) -> None:
    """Client JSON with a lone surrogate, passed to create_and_enqueue, answers 400."""

    @app.post("/search")
    def search() -> Any:
        return {"token": Job.create_and_enqueue(workers.Echo, request.json).token}, 202

    answer = app.test_client().post(
        "/search", data='{"q": "\\ud800"}', content_type="application/json"
    )
    assert answer.status_code == 400
    assert "lone surrogate" in json_of(answer)["errors"][0]["message"]
    assert _rows() == 0


@pytest.mark.parametrize(
    ("identity", "reason"),
    [("alice\x00admin", "contains a NUL character"), ("a" * 256, "its column holds 255")],
)
def test_an_owner_the_table_cannot_hold_is_refused(
    extension: AsyncRequest, app: Flask, identity: str, reason: str
) -> None:
    """An identity with a NUL character, or longer than 255 characters, makes no job."""
    extension.identity_loader(lambda: identity)
    with pytest.raises(UnstorableValue, match=reason) as refused:
        Job.create_and_enqueue(workers.Echo)
    assert identity not in str(refused.value)
    assert _rows() == 0


@pytest.mark.parametrize("url", ["http://example.com/\x00", "http://example.com/\ud800"])
def test_a_callback_url_the_table_cannot_hold_is_refused(app: Flask, url: str) -> None:
    """A callback url with a NUL character or a lone surrogate is an InvalidCallbackUrl."""
    with pytest.raises(InvalidCallbackUrl):
        Job.create_and_enqueue(workers.Echo, callback_url=url)
    assert _rows() == 0


@pytest.mark.parametrize("key", ["key\x00", "key\udfff"])
def test_an_idempotency_key_with_a_nul_or_lone_surrogate_is_refused(app: Flask, key: str) -> None:
    """An Idempotency-Key with a NUL character or a lone surrogate is an InvalidIdempotencyKey."""
    with pytest.raises(InvalidIdempotencyKey):
        Job.create_and_enqueue(workers.Echo, idempotency_key=key)
    assert _rows() == 0


def test_a_queue_name_longer_than_its_column_is_refused(app: Flask) -> None:
    """A worker class naming a queue of 256 characters makes no job: a ValueError says why."""
    with pytest.raises(ValueError, match="holds 255 at most"):
        Job.create_and_enqueue(workers.LongQueue)
    assert _rows() == 0


def test_a_callback_status_quoting_unstorable_text_is_stored_replaced(job_store: JobStore) -> None:
    """A delivery status quoting a NUL character or a lone surrogate is stored, replaced."""
    job = add_job()
    lifecycle.record_callback(job_store, job.id, "refused: a\x00b \ud800")
    assert reload_job(job.id).callback_status == "refused: a\ufffdb ?"


def test_a_value_the_database_refuses_at_creation_is_an_unstorable_value(
    extension: AsyncRequest, session: scoped_session[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value past the checks that the database refuses is an UnstorableValue, without SQL."""
    monkeypatch.setattr(web, "unstorable", lambda text, limit=None: None)
    extension.identity_loader(lambda: "half \ud800 a pair")
    with pytest.raises(UnstorableValue) as refused:
        Job.create_and_enqueue(workers.Echo)
    assert str(refused.value) == (
        "The job could not be stored: the database refused one of its values"
        " (UnicodeEncodeError; details are in the server's log)."
    )
    session.rollback()
    assert _rows() == 0


def test_a_cancellation_check_the_database_refuses_fails_the_job(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancellation check the database refuses fails the job with the library's sentence."""

    def refuse(*args: Any) -> bool:
        raise _database_error(sa.exc.ProgrammingError)

    monkeypatch.setattr(lifecycle, "held", refuse)
    job = Job.create_and_enqueue(workers.ChecksCancelled)
    assert _error(job) == (
        "The job's status could not be read (ProgrammingError; details are in the worker's log)."
    )


def test_a_dashboard_worker_filter_with_a_nul_character_is_a_400_page(
    make_app: AppFactory,
) -> None:
    """The dashboard's worker filter with a NUL character answers 400, not a database error."""
    extension = AsyncRequest()
    app = make_app(extension=extension)
    extension.init_dashboard(app, authorize=lambda: True)
    answer = app.test_client().get("/async-request/dashboard/?worker=a%00b")
    assert answer.status_code == 400
    assert "worker cannot be searched for: it contains a NUL character." in answer.text


def test_arguments_with_a_nul_character_reach_the_worker(app: Flask) -> None:
    """A NUL character in an argument is stored, escaped in JSON, and reaches the worker."""
    job = Job.create_and_enqueue(workers.Echo, "a\x00b")
    assert json.loads(reload_job(job.id).response or "")["args"] == ["a\x00b"]


@pytest.fixture(autouse=True)
def _no_values_left() -> Iterator[None]:
    yield
    workers.HOSTILE_VALUES.clear()


# Any value, at any field ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sqlite_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """One app for every example: eager Celery on SQLite, an identity set per example."""
    path = tmp_path_factory.mktemp("hostile") / "jobs.db"
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        SECRET_KEY=SECRET,
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{path}",
        CELERY={"task_always_eager": True},
    )
    db = SQLAlchemy()
    db.init_app(app)
    extension = AsyncRequest(app)
    with app.app_context():
        db.create_all()
    yield hostile_values.hostile_app(app, extension)
    with app.app_context():
        db.engine.dispose()


@pytest.mark.parametrize("field", hostile_values.FIELDS)
@settings(max_examples=40, deadline=None)
@given(value=hostile_values.values)
def test_any_value_at_any_field_ends_its_job_on_sqlite(
    sqlite_app: Flask, field: str, value: Any
) -> None:
    """Any value at any field: the job ends, or no row is made; no answer shows SQL."""
    hostile_values.hand_over(sqlite_app, field, value)
