"""store: the job store's statements and transactions on SQLite, and its lost connections."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.engine import Engine

from flask_async_request import store as store_module
from flask_async_request.exceptions import DatabaseUnavailable, InvalidJobRow
from flask_async_request.models import Job, JobStatus
from flask_async_request.statements import CLAIM, FINISH, PENDING_OF, TOUCH_WAITING, NewRow
from flask_async_request.store import JobReply, JobStore, Unreachable, lost_connection
from flask_async_request.values import utcnow
from tests.conftest import add_job, reload_job


class _DriverError(Exception):
    """A DB-API error of no driver in particular."""


def _wrapped(kind: type[sa.exc.DBAPIError], *, invalidated: bool = False) -> sa.exc.DBAPIError:
    return kind("SELECT 1", {}, _DriverError("boom"), connection_invalidated=invalidated)


def _claim_params(job_id: int) -> dict[str, Any]:
    now = utcnow()
    return {"job_id": job_id, "now": now, "lease_until": now + timedelta(minutes=5)}


def _finish_params(job_id: int, attempt: int) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "attempt": attempt,
        "status": JobStatus.PROCESSED,
        "status_code": 201,
        "response": "made",
        "now": utcnow(),
        "content_type": None,
        "progress": None,
    }


# lost_connection and Unreachable --------------------------------------------------------


@pytest.mark.parametrize("kind", [sa.exc.OperationalError, sa.exc.InterfaceError])
def test_operational_and_interface_errors_are_lost_connections(
    kind: type[sa.exc.DBAPIError],
) -> None:
    """An OperationalError or InterfaceError says the database was out of reach."""
    assert lost_connection(_wrapped(kind))


@pytest.mark.parametrize("kind", [sa.exc.DataError, sa.exc.IntegrityError, sa.exc.ProgrammingError])
def test_a_refused_statement_is_not_a_lost_connection(kind: type[sa.exc.DBAPIError]) -> None:
    """A value, a constraint or SQL the database refused would be refused again."""
    assert not lost_connection(_wrapped(kind))


def test_an_invalidated_connection_is_lost_whatever_the_error() -> None:
    """An error SQLAlchemy marked as having invalidated its connection is a lost one."""
    assert lost_connection(_wrapped(sa.exc.ProgrammingError, invalidated=True))


@pytest.mark.parametrize("error", [ValueError("x"), ConnectionError("reset"), OSError("x")])
def test_errors_that_are_not_the_database_s_are_not_lost_connections(error: Exception) -> None:
    """Only SQLAlchemy's DBAPIError is classified; a plain exception is not a lost connection."""
    assert not lost_connection(error)


def test_unreachable_turns_a_lost_connection_into_database_unavailable() -> None:
    """Inside Unreachable, a lost connection raises DatabaseUnavailable naming what failed."""
    lost = _wrapped(sa.exc.OperationalError)
    with (
        pytest.raises(
            DatabaseUnavailable, match=r"^Reading jobs: the database is out of reach\.$"
        ) as raised,
        Unreachable("Reading jobs"),
    ):
        raise lost
    assert raised.value.__cause__ is lost


def test_unreachable_lets_other_errors_through_and_serves_many_blocks() -> None:
    """A refused statement leaves Unreachable as it is; the same object serves the next block."""
    unreachable = Unreachable("Reading jobs")
    refused = _wrapped(sa.exc.IntegrityError)
    with pytest.raises(sa.exc.IntegrityError) as raised, unreachable:
        raise refused
    assert raised.value is refused
    with pytest.raises(DatabaseUnavailable), unreachable:
        raise _wrapped(sa.exc.InterfaceError)


# again_if_lost --------------------------------------------------------------------------


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses again_if_lost asks for, none of them slept."""
    pauses: list[float] = []
    monkeypatch.setattr(time, "sleep", pauses.append)
    return pauses


def test_again_if_lost_returns_the_first_try_s_result(job_store: JobStore) -> None:
    """A try that succeeds is the answer, and it is told no try was lost before it."""
    told: list[bool] = []

    def run(lost_before: bool) -> str:
        told.append(lost_before)
        return "done"

    assert job_store.again_if_lost(run, within=10, what="Doing") == "done"
    assert told == [False]


def test_again_if_lost_tries_again_after_a_lost_connection(
    job_store: JobStore, no_sleep: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    """After lost connections it tries again, telling each try so; the first try again at once."""
    told: list[bool] = []

    def run(lost_before: bool) -> int:
        told.append(lost_before)
        if len(told) < 3:
            raise _wrapped(sa.exc.OperationalError)
        return 7

    assert job_store.again_if_lost(run, within=60, what="Claiming job 3") == 7
    assert told == [False, True, True]
    assert no_sleep[0] == 0
    assert no_sleep[1] == store_module.FIRST_PAUSE
    # The first loss is logged once, with the driver's error.
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "Claiming job 3: its connection was lost (_DriverError: boom); trying again."
    ]


def test_again_if_lost_pauses_double_up_to_the_longest(
    job_store: JobStore, no_sleep: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pauses after the first try again double from FIRST_PAUSE and stop at LONGEST_PAUSE."""
    tries = 0

    def run(lost_before: bool) -> int:
        nonlocal tries
        tries += 1
        if tries < 10:
            raise _wrapped(sa.exc.OperationalError)
        return tries

    assert job_store.again_if_lost(run, within=3600, what="Doing") == 10
    first, longest = store_module.FIRST_PAUSE, store_module.LONGEST_PAUSE
    expected = [0.0]
    while len(expected) < 9:
        expected.append(min(first * 2 ** (len(expected) - 1), longest))
    assert no_sleep == expected
    assert no_sleep[-1] == longest


def test_again_if_lost_gives_up_with_database_unavailable(
    job_store: JobStore, no_sleep: list[float]
) -> None:
    """With no time to try for, the one immediate try again ends it: DatabaseUnavailable."""
    tries: list[bool] = []
    lost = _wrapped(sa.exc.OperationalError)

    def run(lost_before: bool) -> None:
        tries.append(lost_before)
        raise lost

    with pytest.raises(
        DatabaseUnavailable,
        match=r"^Storing job 4's reply: the database was out of reach, 2 tries in ",
    ) as raised:
        job_store.again_if_lost(run, within=0, what="Storing job 4's reply")
    assert tries == [False, True]
    assert raised.value.__cause__ is lost
    # The driver's text goes to the log and the cause, never to the message.
    assert "boom" not in str(raised.value)


def test_again_if_lost_raises_other_errors_at_once(job_store: JobStore) -> None:
    """A statement the database refused is raised on its first try, not tried again."""
    tries: list[bool] = []
    refused = _wrapped(sa.exc.IntegrityError)

    def run(lost_before: bool) -> None:
        tries.append(lost_before)
        raise refused

    with pytest.raises(sa.exc.IntegrityError) as raised:
        job_store.again_if_lost(run, within=60, what="Doing")
    assert raised.value is refused
    assert tries == [False]


# The per-database form and its store -----------------------------------------------------


def test_for_app_on_sqlite_uses_the_app_s_engine(app: Flask, engine: Engine) -> None:
    """On SQLite the store runs on the app's own engine, with no autocommit pool of its own."""
    found = JobStore.for_app(app, engine)
    assert found.engine is engine
    assert not found.autocommit
    assert not found.postgresql
    assert not found.listen


def test_for_app_on_a_network_database_makes_an_autocommit_engine(
    make_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Elsewhere the store gets an AUTOCOMMIT engine of its own, the app's other options kept."""
    app = make_app(
        create_tables=False,
        SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 3, "isolation_level": "SERIALIZABLE"},
    )
    made: list[tuple[Any, dict[str, Any]]] = []
    real_create_engine = sa.create_engine

    def create_engine(url: Any, **options: Any) -> Engine:
        made.append((url, options))
        return real_create_engine(url, **options)

    monkeypatch.setattr(sa, "create_engine", create_engine)
    url = sa.make_url("postgresql+psycopg://someone@127.0.0.1:1/nowhere")
    engine = real_create_engine(url)
    found = JobStore.for_app(app, engine)
    try:
        assert found.autocommit and found.postgresql and found.listen
        assert found.engine is not engine
        assert made == [
            (url, {"isolation_level": "AUTOCOMMIT", "pool_reset_on_return": None, "pool_size": 3})
        ]
    finally:
        found.dispose()
        engine.dispose()


def _store_on(url: str, *, autocommit: bool) -> JobStore:
    return JobStore(sa.create_engine(url), autocommit=autocommit)


@pytest.mark.parametrize(
    ("url", "autocommit", "form"),
    [
        ("postgresql+psycopg://x@127.0.0.1:1/x", True, "notifying"),
        ("postgresql+psycopg://x@127.0.0.1:1/x", False, "returning"),
        ("sqlite://", False, "returning"),
        ("mysql+pymysql://x@127.0.0.1:1/x", True, "update"),
    ],
)
def test_the_form_of_a_claim_is_the_database_s(url: str, autocommit: bool, form: str) -> None:
    """One place picks the claim's form: announcing, no WAL wait, RETURNING, or the plain UPDATE."""
    store = _store_on(url, autocommit=autocommit)
    expected = getattr(CLAIM, form)
    if form == "notifying":
        # The claim announces nothing: in its own transaction PostgreSQL skips the WAL wait.
        assert CLAIM.notifying is None
        expected = CLAIM.no_wait
    assert expected is not None
    assert store._form(CLAIM) is expected


def test_an_ending_statement_announces_on_psycopg_even_in_a_session() -> None:
    """FINISH announces on PostgreSQL with psycopg, in its own transaction or the caller's."""
    store = _store_on("postgresql+psycopg://x@127.0.0.1:1/x", autocommit=True)
    assert FINISH.notifying is not None
    assert store._form(FINISH) is FINISH.notifying
    assert store._form(FINISH, own_transaction=False) is FINISH.notifying


def test_no_wal_form_only_in_a_transaction_of_its_own() -> None:
    """In the caller's transaction the claim is not the no-WAL-wait form, which ends its own."""
    store = _store_on("postgresql+psycopg://x@127.0.0.1:1/x", autocommit=True)
    assert store._form(CLAIM) is CLAIM.no_wait
    assert store._form(CLAIM, own_transaction=False) is CLAIM.returning


def test_mariadb_reads_the_changed_row_after_the_update() -> None:
    """Where UPDATE returns no rows the store does not claim RETURNING."""
    store = _store_on("mysql+pymysql://x@127.0.0.1:1/x", autocommit=True)
    assert not store.returning and not store.postgresql and not store.listen


# Statements on SQLite --------------------------------------------------------------------


def test_the_claim_takes_a_waiting_job_once(app: Flask, job_store: JobStore) -> None:
    """run(CLAIM) hands back the claimed row; a second claim of the same job finds nothing."""
    job_id = add_job(args=[1]).id
    row = job_store.run(CLAIM, _claim_params(job_id))
    assert row is not None
    assert (row.id, row.worker, row.attempts) == (job_id, "tests.workers:Echo", 1)
    assert reload_job(job_id).status is JobStatus.PROCESSING
    assert job_store.run(CLAIM, _claim_params(job_id)) is None
    assert reload_job(job_id).attempts == 1


def test_the_claim_in_the_update_then_read_form(
    app: Flask, job_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without RETURNING, the claim is an UPDATE and then a read of the row it changed."""
    monkeypatch.setattr(job_store, "returning", False)
    job_id = add_job().id
    row = job_store.run(CLAIM, _claim_params(job_id))
    assert row is not None and row.id == job_id and row.attempts == 1
    assert job_store.run(CLAIM, _claim_params(job_id)) is None


def test_finish_is_fenced_by_the_attempt(app: Flask, job_store: JobStore) -> None:
    """FINISH stores the reply of the attempt holding the job, and nothing for another attempt."""
    job_id = add_job().id
    job_store.run(CLAIM, _claim_params(job_id))
    assert job_store.run(FINISH, _finish_params(job_id, attempt=2)) is None
    assert reload_job(job_id).status is JobStatus.PROCESSING
    row = job_store.run(FINISH, _finish_params(job_id, attempt=1))
    assert row is not None and row.id == job_id
    job = reload_job(job_id)
    assert (job.status, job.status_code, job.response) == (JobStatus.PROCESSED, 201, "made")


def test_run_in_leaves_the_commit_to_the_session(
    app: Flask, job_store: JobStore, session: Any
) -> None:
    """run_in runs in the session's transaction: a rollback undoes it."""
    job_id = add_job().id
    job_store.run(CLAIM, _claim_params(job_id))
    row = job_store.run_in(session, FINISH, _finish_params(job_id, attempt=1))
    assert row is not None and row.id == job_id
    session.rollback()
    assert reload_job(job_id).status is JobStatus.PROCESSING
    assert job_store.run_in(session, FINISH, _finish_params(job_id, attempt=9)) is None
    session.rollback()


def test_count_is_the_number_of_rows_changed(app: Flask, job_store: JobStore) -> None:
    """count() answers 1 for a changed row, 0 when the statement's condition held for none."""
    waiting = add_job().id
    processing = add_job(status=JobStatus.PROCESSING).id
    assert job_store.count(TOUCH_WAITING, {"job_id": waiting, "now": utcnow()}) == 1
    assert job_store.count(TOUCH_WAITING, {"job_id": processing, "now": utcnow()}) == 0


def test_insert_stores_the_row_and_returns_its_id(app: Flask, job_store: JobStore) -> None:
    """insert() commits the new row at once and answers its id."""
    now = utcnow()
    row = NewRow(
        uid="u-1",
        worker="tests.workers:Echo",
        params={"args": [1], "kwargs": {}},
        status=JobStatus.WAITING,
        owner=None,
        idempotency_scope=None,
        callback_url=None,
        queue=None,
        time_limit=None,
        attempts=0,
        created_at=now,
        updated_at=now,
        due_at=now,
    )
    job_id = job_store.insert(row)
    job = reload_job(job_id)
    assert (job.uid, job.params, job.status) == (
        "u-1",
        {"args": [1], "kwargs": {}},
        JobStatus.WAITING,
    )


def test_first_and_all_read_in_a_transaction_of_their_own(app: Flask, job_store: JobStore) -> None:
    """first() answers the first row or None; all() every row."""
    ids = [add_job().id for _ in range(3)]
    assert job_store.first(sa.select(Job.id).order_by(Job.id), {}) == (ids[0],)
    assert job_store.first(sa.select(Job.id).where(Job.id == -1), {}) is None
    assert [row[0] for row in job_store.all(sa.select(Job.id).order_by(Job.id), {})] == ids


# Reads -----------------------------------------------------------------------------------


def test_fetch_reply_reads_the_status_columns(app: Flask, job_store: JobStore) -> None:
    """fetch_reply answers the row's uid, owner, status and reply as a JobReply."""
    job = add_job(status=JobStatus.PROCESSED, status_code=200, response="hi")
    reply = job_store.fetch_reply(job.id)
    assert reply == JobReply(job.uid, None, JobStatus.PROCESSED, 200, "hi", None, None, None)
    assert isinstance(reply.status, JobStatus)


def test_fetch_reply_of_a_missing_job_is_none(app: Flask, job_store: JobStore) -> None:
    """A job id with no row answers None."""
    assert job_store.fetch_reply(12345) is None


def test_fetch_replies_reads_several_jobs_at_once(app: Flask, job_store: JobStore) -> None:
    """fetch_replies answers each existing job's reply columns by id, as fetch_reply does."""
    first = add_job(status=JobStatus.PROCESSED, status_code=200, response="hi")
    second = add_job()
    replies = job_store.fetch_replies([first.id, 12345, second.id])
    assert replies == {
        first.id: job_store.fetch_reply(first.id),
        second.id: job_store.fetch_reply(second.id),
    }
    assert job_store.fetch_replies([]) == {}


def test_fresh_reads_refresh_reads_for_the_streams(app: Flask, job_store: JobStore) -> None:
    """The store's refresh reads the jobs in one go; a stream woken then takes that read."""
    job = add_job()
    began = job_store.fresh_reads.refresh([job.id, 12345])
    assert job_store.fresh_reads.read(job.id, began) == job_store.fetch_reply(job.id)
    assert job_store.fresh_reads.read(12345, began) is None


def test_fetch_reply_refuses_a_status_that_is_no_job_status(
    app: Flask, job_store: JobStore, engine: Engine
) -> None:
    """A row edited into an unknown status raises InvalidJobRow naming the job and the status."""
    job_id = add_job().id
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE async_request_jobs SET status = 'lost' WHERE id = :id"), {"id": job_id}
        )
    with pytest.raises(InvalidJobRow, match=f"Job {job_id} has the status 'lost'") as raised:
        job_store.fetch_reply(job_id)
    assert raised.value.job_id == job_id


def test_a_lost_raw_connection_is_raised_as_sqlalchemy_s_error(
    app: Flask, job_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A driver error from the pool comes out as SQLAlchemy's DBAPIError, classified as lost."""
    import sqlite3

    def refuse() -> Any:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(job_store.engine, "raw_connection", refuse)
    with pytest.raises(sa.exc.DBAPIError) as raised:
        job_store.fetch_reply(1)
    assert lost_connection(raised.value)


def test_a_refused_raw_statement_is_not_a_lost_connection(
    app: Flask, job_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQL the database refuses on the raw cursor is raised as ProgrammingError-like, not lost."""
    monkeypatch.setattr(job_store, "_reply_sql", "SELECT * FROM no_such_table WHERE id = ?")
    with pytest.raises(sa.exc.DBAPIError) as raised:
        job_store.fetch_reply(1)
    assert not raised.value.connection_invalidated
    # The pool still serves the next poll.
    monkeypatch.undo()
    assert job_store.fetch_reply(1) is None


# The waits' database side -----------------------------------------------------------------


def test_ended_or_gone_keeps_the_jobs_no_longer_pending(app: Flask, job_store: JobStore) -> None:
    """Of the ids waited for, the ended and the deleted ones are answered, in their order."""
    waiting = add_job().id
    processing = add_job(status=JobStatus.PROCESSING).id
    processed = add_job(status=JobStatus.PROCESSED).id
    failed = add_job(status=JobStatus.FAILED).id
    gone = 99999
    asked = [gone, waiting, processed, processing, failed]
    assert job_store._ended_or_gone(asked) == [gone, processed, failed]


def test_ended_or_gone_asks_in_batches(
    app: Flask, job_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many ids are checked in queries of _CHECK_BATCH ids, none left out."""
    monkeypatch.setattr(store_module, "_CHECK_BATCH", 2)
    pending = [add_job().id for _ in range(3)]
    ended = add_job(status=JobStatus.PROCESSED).id
    batches: list[list[int]] = []
    real_all = job_store.all

    def all_(statement: Any, params: dict[str, Any]) -> list[Any]:
        assert statement is PENDING_OF
        batches.append(params["job_ids"])
        return real_all(statement, params)

    monkeypatch.setattr(job_store, "all", all_)
    assert job_store._ended_or_gone([*pending, ended]) == [ended]
    assert batches == [pending[:2], [pending[2], ended]]


def test_wait_until_finished_answers_an_ended_job_at_once(app: Flask, job_store: JobStore) -> None:
    """A job already ended is read once and answered, whatever the timeout."""
    job = add_job(status=JobStatus.FAILED, status_code=500, response="{}")
    reply = job_store.wait_until_finished(job.id, timeout=3600)
    assert reply is not None and reply.status is JobStatus.FAILED


def test_wait_until_finished_answers_none_for_a_missing_job(
    app: Flask, job_store: JobStore
) -> None:
    """A job with no row is gone: None, at once."""
    assert job_store.wait_until_finished(4242, timeout=3600) is None


def test_wait_until_finished_answers_the_pending_reply_at_its_deadline(
    app: Flask, job_store: JobStore
) -> None:
    """A job still pending when the wait ends is answered as it is then."""
    job = add_job(status=JobStatus.PROCESSING)
    reply = job_store.wait_until_finished(job.id, timeout=0.05)
    assert reply is not None and reply.status is JobStatus.PROCESSING


def test_a_progress_write_on_postgresql_takes_the_announcing_form_that_skips_the_flush() -> None:
    """Alone, the announcing form that skips the WAL flush wait; in a transaction, the other."""
    from flask_async_request.statements import PROGRESS

    store = JobStore(sa.create_engine("postgresql+psycopg://x@127.0.0.1:1/x"), autocommit=True)
    assert store._form(PROGRESS) is PROGRESS.notifying_no_wait
    assert store._form(PROGRESS, own_transaction=False) is PROGRESS.notifying


@pytest.mark.parametrize(
    ("url", "options", "age"),
    [
        ("postgresql+psycopg://u@127.0.0.1/db", {}, None),
        ("postgresql+psycopg://u@127.0.0.1/db", {"pool_recycle": 30}, 30.0),
        ("mysql+pymysql://u@127.0.0.1/db", {}, float(store_module.MYSQL_POOL_RECYCLE)),
        ("mysql+pymysql://u@127.0.0.1/db", {"pool_recycle": 600}, 600.0),
    ],
)
def test_kept_connections_are_recycled_as_the_pool_s(
    url: str, options: dict[str, Any], age: float | None
) -> None:
    """A kept connection lives no longer than the pool's ``pool_recycle`` (MySQL's default too)."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = options
    store = JobStore.for_app(app, sa.create_engine(url))
    try:
        assert store._kept is not None and store._kept.max_age == age
        assert store.engine.pool._recycle == (-1 if age is None else age)
    finally:
        store.engine.dispose()
