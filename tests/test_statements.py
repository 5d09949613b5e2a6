"""The jobs table's statements: each database's form of a write, and what each statement does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect

from flask_async_request import statements
from flask_async_request.models import Job, JobStatus
from flask_async_request.statements import (
    CALLBACK_DELIVERIES,
    CANCEL,
    CHANGED_PREFIX,
    CHANNEL,
    CLAIM,
    CLAIM_COLUMNS,
    CLAIMED_AT,
    ENDED_COLUMNS,
    FAIL_LOST,
    FINISH,
    FINISHED_BY,
    GIVE_UP,
    HELD_NOW,
    INSERT,
    LOST_JOBS,
    PENDING_OF,
    PROGRESS,
    RECORD_CALLBACK,
    RECORD_DELIVERY,
    RENEW,
    REPLY,
    REPLY_COLUMNS,
    REQUEUE_LOST,
    RESCHEDULE,
    RESET_FOR_RETRY,
    STALE_JOBS,
    STATUS,
    TOUCH_WAITING,
    WAITING_JOBS,
    JobReply,
    NewRow,
    Statement,
    hot,
    is_hot,
)
from flask_async_request.values import utcnow

#: Every Statement of the module, by name.
STATEMENTS = {
    name: value for name, value in vars(statements).items() if isinstance(value, Statement)
}
#: The dialects the library runs on, without their drivers.
DIALECTS: dict[str, Dialect] = {
    "sqlite": sqlite.dialect(),
    "postgresql": postgresql.psycopg.dialect(),  # type: ignore[no-untyped-call]
    "mysql": mysql.pymysql.dialect(),
}


def _sql(statement: Any, dialect: str) -> str:
    return str(statement.compile(dialect=DIALECTS[dialect]))


def _params(statement: Any, dialect: str) -> dict[str, Any]:
    params: dict[str, Any] = statement.compile(dialect=DIALECTS[dialect]).params
    return params


# Hot statements -------------------------------------------------------------------------------


def test_hot_marks_the_statement_itself_and_returns_it() -> None:
    """hot() gives back its argument; an equal statement built apart is not marked."""
    statement = sa.select(Job.id).where(Job.id == sa.bindparam("job_id"))
    assert hot(statement) is statement
    assert is_hot(statement)
    assert not is_hot(sa.select(Job.id).where(Job.id == sa.bindparam("job_id")))


def test_the_hot_paths_statements_are_marked() -> None:
    """Inserting, claiming, checking and ending a job are hot; the sweeper's reads are not."""
    for statement in (INSERT, CLAIMED_AT, HELD_NOW, FINISHED_BY, STATUS):
        assert is_hot(statement)
    for statement in (REPLY, PENDING_OF, LOST_JOBS, STALE_JOBS, WAITING_JOBS):
        assert not is_hot(statement)


@pytest.mark.parametrize(("name", "statement"), STATEMENTS.items())
def test_a_hot_statement_has_every_form_marked(name: str, statement: Statement) -> None:
    """A Statement built hot marks each of its forms; one built otherwise marks none."""
    forms = [statement.update, statement.returning, statement.notifying, statement.no_wait]
    marked = {is_hot(form) for form in forms if form is not None}
    should = name in {"CLAIM", "RENEW", "PROGRESS", "RESCHEDULE", "FINISH", "FAIL_LOST", "CANCEL"}
    assert marked == {should}


def test_every_statement_is_found() -> None:
    """The module's statements, as the tests above go through them."""
    assert set(STATEMENTS) == {
        "CLAIM",
        "RENEW",
        "GIVE_UP",
        "PROGRESS",
        "RESCHEDULE",
        "FINISH",
        "FAIL_LOST",
        "CANCEL",
        "REQUEUE_LOST",
        "RESET_FOR_RETRY",
        "TOUCH_WAITING",
        "RECORD_CALLBACK",
        "RECORD_DELIVERY",
    }


# The forms of a statement ---------------------------------------------------------------------


def test_a_statement_without_returns_has_only_the_update() -> None:
    """Nothing to hand back: no RETURNING form and no read after the UPDATE."""
    statement = Statement(sa.update(Job).values(worker="w"))
    assert statement.returning is None
    assert statement.read is None
    assert statement.notifying is None
    assert statement.no_wait is None


def test_a_statement_with_returns_has_a_returning_form_and_a_read() -> None:
    """The columns come back by RETURNING where the database can, by a SELECT of the id else."""
    statement = Statement(sa.update(Job).values(worker="w"), returns=(Job.id, Job.uid))
    assert statement.returning is not None
    assert _sql(statement.returning, "postgresql").endswith(
        "RETURNING async_request_jobs.id, async_request_jobs.uid"
    )
    assert _sql(statement.read, "mysql") == (
        "SELECT async_request_jobs.id, async_request_jobs.uid \n"
        "FROM async_request_jobs \n"
        "WHERE async_request_jobs.id = %s"
    )


@pytest.mark.parametrize(("name", "statement"), STATEMENTS.items())
def test_each_statement_compiles_for_every_database(name: str, statement: Statement) -> None:
    """The plain UPDATE of every statement compiles for SQLite, PostgreSQL and MySQL."""
    for dialect in DIALECTS:
        assert _sql(statement.update, dialect).startswith("UPDATE async_request_jobs SET ")


@pytest.mark.parametrize(("name", "statement"), STATEMENTS.items())
def test_a_statement_that_returns_rows_can_be_read_after_on_mysql(
    name: str, statement: Statement
) -> None:
    """Where UPDATE returns nothing (MariaDB, MySQL), each returning statement has its read."""
    assert not DIALECTS["mysql"].update_returning
    assert (statement.returning is None) == (statement.read is None)
    if statement.read is not None:
        assert _sql(statement.read, "mysql").startswith("SELECT ")


@pytest.mark.parametrize(("name", "statement"), STATEMENTS.items())
def test_the_ends_and_the_changes_and_only_they_are_announced(
    name: str, statement: Statement
) -> None:
    """The ends, a progress write and the two ways back to waiting have a NOTIFY form; no other."""
    announced = {"FINISH", "FAIL_LOST", "CANCEL", "PROGRESS", "RESCHEDULE", "REQUEUE_LOST"}
    assert (statement.notifying is not None) == (name in announced)


@pytest.mark.parametrize("statement", [PROGRESS, RESCHEDULE, REQUEUE_LOST])
def test_a_change_is_announced_with_its_prefix(statement: Statement) -> None:
    """A change that is no end sends c<id>, which wakes streams and no long poll."""
    assert statement.notifying is not None
    sql = _sql(statement.notifying, "postgresql")
    assert "RETURNING async_request_jobs.id)" in sql
    assert "::VARCHAR || CAST(done.id AS TEXT))" in sql
    assert CHANGED_PREFIX in _params(statement.notifying, "postgresql").values()


def test_a_progress_write_announces_without_waiting_for_the_flush() -> None:
    """In its own transaction the progress write keeps synchronous_commit off, and announces."""
    assert PROGRESS.notifying_no_wait is not None
    sql = _sql(PROGRESS.notifying_no_wait, "postgresql")
    assert "set_config(" in sql and "pg_notify(" in sql


def test_an_end_is_announced_in_the_same_statement_on_postgresql() -> None:
    """The UPDATE's RETURNING feeds pg_notify on the channel with the job's id, in one statement."""
    sql = _sql(FINISH.notifying, "postgresql")
    assert sql.startswith("WITH done AS \n(UPDATE async_request_jobs SET ")
    assert "RETURNING async_request_jobs.id, " in sql
    assert "pg_notify(%(pg_notify_2)s::VARCHAR, CAST(done.id AS TEXT))" in sql
    assert sql.endswith("FROM done")
    assert _params(FINISH.notifying, "postgresql")["pg_notify_2"] == CHANNEL == "async_request_jobs"


def test_the_announced_row_is_the_ended_columns() -> None:
    """What an ending statement hands back starts with the id, which the notification carries."""
    assert ENDED_COLUMNS[0] is Job.id
    for statement in (FINISH, FAIL_LOST, CANCEL):
        assert isinstance(statement.notifying, sa.Select)
        selected = [column.name for column in statement.notifying.selected_columns]
        assert selected[: len(ENDED_COLUMNS)] == [column.key for column in ENDED_COLUMNS]


@pytest.mark.parametrize(("name", "statement"), STATEMENTS.items())
def test_only_claims_renewals_and_reports_skip_the_flush_wait(
    name: str, statement: Statement
) -> None:
    """The no_wait form exists for what a crash may lose: a claim, a renewal, a progress report."""
    assert (statement.no_wait is not None) == (name in {"CLAIM", "RENEW", "PROGRESS"})


def test_the_no_wait_form_turns_synchronous_commit_off_for_its_own_transaction() -> None:
    """set_config('synchronous_commit', 'off', true): local to the transaction, in the WHERE."""
    assert CLAIM.no_wait is not None
    sql = _sql(CLAIM.no_wait, "postgresql")
    assert " AND set_config(" in sql and ") IS NOT NULL RETURNING " in sql
    values = set(_params(CLAIM.no_wait, "postgresql").values())
    assert {"synchronous_commit", "off", True} <= values
    renew = _sql(RENEW.no_wait, "postgresql")
    assert "set_config(" in renew and "RETURNING" not in renew


def test_a_claim_reads_its_params_as_text_on_every_database() -> None:
    """A row edited into bad JSON fails its run instead of the claim: params come back as text."""
    assert "CAST(async_request_jobs.params AS TEXT) AS params" in _sql(
        CLAIM.returning, "postgresql"
    )
    assert "CAST(async_request_jobs.params AS CHAR) AS params" in _sql(CLAIM.read, "mysql")
    assert "CAST(params AS TEXT) AS params" in _sql(CLAIM.returning, "sqlite")


def test_a_claim_is_conditional_and_bumps_the_attempts() -> None:
    """Only a waiting job is claimed, and each claim adds one to its attempts."""
    for dialect in DIALECTS:
        sql = _sql(CLAIM.update, dialect)
        assert "attempts=(async_request_jobs.attempts + " in sql
        assert "WHERE async_request_jobs.id = " in sql
        assert "AND async_request_jobs.status = " in sql
    assert "waiting" in _params(CLAIM.update, "sqlite").values()


def test_pending_of_expands_its_ids() -> None:
    """One query for any number of long polls: the id list is expanded per call."""
    assert "IN (__[POSTCOMPILE_job_ids])" in _sql(PENDING_OF, "postgresql")


def test_the_reply_columns_are_those_of_a_job_reply() -> None:
    """REPLY reads the JobReply's fields, in its order."""
    assert len(REPLY_COLUMNS) == len(JobReply._fields)
    assert JobReply._fields[:4] == ("uid", "owner", "status", "status_code")
    assert [column.key for column in REPLY_COLUMNS][:4] == ["uid", "owner", "status", "status_code"]
    assert JobReply("u", None, JobStatus.WAITING, None, None, None, None).content_type is None


def test_a_new_row_inserts_every_column_it_names() -> None:
    """INSERT binds one parameter per NewRow field, and returns the id."""
    sql = _sql(INSERT, "postgresql")
    for name in NewRow._fields:
        assert f"%({name})s" in sql
    assert sql.endswith("RETURNING async_request_jobs.id")


# What each statement does, run on SQLite ------------------------------------------------------


@pytest.fixture
def conn() -> Iterator[Connection]:
    """A connection to an in-memory database holding the jobs table alone."""
    engine = sa.create_engine("sqlite://")
    table = Job.__table__
    assert isinstance(table, sa.Table)
    table.create(engine)
    with engine.connect() as connection:
        yield connection
    engine.dispose()


def _insert(conn: Connection, status: JobStatus = JobStatus.WAITING, **columns: Any) -> int:
    """A job row made with INSERT, then set to ``status`` and ``columns``."""
    now = columns.pop("now", utcnow())
    row = NewRow(
        uid=_uid(conn),
        worker="tests.workers:Echo",
        params={"args": [1], "kwargs": {"a": 2}},
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
    job_id: int = conn.execute(INSERT, row._asdict()).scalar_one()
    if status is not JobStatus.WAITING or columns:
        conn.execute(sa.update(Job).where(Job.id == job_id).values(status=status, **columns))
    return job_id


def _uid(conn: Connection) -> str:
    """A uid no row has yet."""
    count = conn.execute(sa.select(sa.func.count()).select_from(Job)).scalar_one()
    return f"{count:032x}"


def _form(form: sa.Executable | None) -> sa.Executable:
    """A form the statement has."""
    assert form is not None
    return form


def _row(conn: Connection, job_id: int) -> Any:
    return conn.execute(sa.select(Job.__table__).where(Job.id == job_id)).one()


def _claim(
    conn: Connection, job_id: int, now: datetime | None = None, uid: str | None = None
) -> Any:
    now = now or utcnow()
    values = {"job_id": job_id, "now": now, "lease_until": now + timedelta(minutes=1)}
    if uid is not None:
        values["message_uid"] = uid
    return conn.execute(_form(CLAIM.returning), values).one_or_none()


def test_insert_stores_a_waiting_row_and_returns_its_id(conn: Connection) -> None:
    """A new row holds what NewRow gave, with its params as JSON."""
    first, second = _insert(conn), _insert(conn)
    assert second == first + 1
    row = _row(conn, first)
    assert (row.status, row.attempts, row.params) == (
        "waiting",
        0,
        {"args": [1], "kwargs": {"a": 2}},
    )


def test_a_waiting_job_is_claimed_once(conn: Connection) -> None:
    """The claim hands back the job's columns with attempts 1; a second claim finds nothing."""
    job_id = _insert(conn)
    claimed = _claim(conn, job_id)
    assert claimed is not None
    assert claimed._fields == tuple(column.key for column in CLAIM_COLUMNS)
    assert (claimed.id, claimed.attempts) == (job_id, 1)
    assert json.loads(claimed.params) == {"args": [1], "kwargs": {"a": 2}}
    assert _row(conn, job_id).status == "processing"
    assert _claim(conn, job_id) is None


def test_a_claim_with_a_uid_takes_only_the_job_of_that_uid(conn: Connection) -> None:
    """A claim naming another uid than the row's changes nothing; one naming its own claims it."""
    job_id = _insert(conn)
    own = _row(conn, job_id).uid
    assert _claim(conn, job_id, uid="f" * 32) is None
    assert (_row(conn, job_id).status, _row(conn, job_id).attempts) == ("waiting", 0)
    claimed = _claim(conn, job_id, uid=own)
    assert claimed is not None and (claimed.id, claimed.uid) == (job_id, own)


def test_claimed_at_finds_only_the_claim_of_its_uid(conn: Connection) -> None:
    """A lost try's read of its claim names the uid it claimed, if any."""
    job_id = _insert(conn)
    now = utcnow()
    own = _claim(conn, job_id, now).uid
    values = {"job_id": job_id, "now": now}
    assert conn.execute(CLAIMED_AT, {**values, "message_uid": own}).one().id == job_id
    assert conn.execute(CLAIMED_AT, {**values, "message_uid": "f" * 32}).one_or_none() is None


def test_the_read_after_the_update_gives_what_returning_gives(conn: Connection) -> None:
    """The MySQL path (UPDATE, then the read) hands back the same row as RETURNING."""
    now = utcnow()
    returned, read = _insert(conn, now=now), _insert(conn, now=now)
    by_returning = _claim(conn, returned, now)
    values = {"job_id": read, "now": now, "lease_until": now + timedelta(minutes=1)}
    assert conn.execute(CLAIM.update, values).rowcount == 1
    by_read = conn.execute(CLAIM.read, {"job_id": read}).one()
    assert by_read._fields == by_returning._fields
    unlike = {"id", "uid"}
    read_values = {k: v for k, v in by_read._asdict().items() if k not in unlike}
    assert read_values == {k: v for k, v in by_returning._asdict().items() if k not in unlike}


def test_claimed_at_finds_the_claim_by_its_start_time(conn: Connection) -> None:
    """A try whose connection dropped finds its own claim by the time it started it."""
    job_id = _insert(conn)
    now = utcnow()
    _claim(conn, job_id, now)
    assert conn.execute(CLAIMED_AT, {"job_id": job_id, "now": now}).one().id == job_id
    later = now + timedelta(seconds=1)
    assert conn.execute(CLAIMED_AT, {"job_id": job_id, "now": later}).one_or_none() is None


def _held(job_id: int, attempt: int, **values: Any) -> dict[str, Any]:
    return {"job_id": job_id, "attempt": attempt, **values}


def test_renew_give_up_progress_and_held_need_the_current_attempt(conn: Connection) -> None:
    """An attempt that no longer holds the job (taken over) changes nothing."""
    job_id = _insert(conn)
    _claim(conn, job_id)
    later = utcnow() + timedelta(hours=1)
    for attempt, changed in ((2, 0), (1, 1)):
        assert conn.execute(RENEW.update, _held(job_id, attempt, lease_until=later)).rowcount == (
            changed
        )
        report = _held(job_id, attempt, progress=0.5, message="half")
        assert conn.execute(PROGRESS.update, report).rowcount == changed
        held = conn.execute(HELD_NOW, _held(job_id, attempt)).one_or_none()
        assert (held is not None) == bool(changed)
    row = _row(conn, job_id)
    assert (row.progress, row.progress_message) == (0.5, "half")
    assert row.lease_expires_at == later.replace(tzinfo=None)
    now = utcnow()
    assert conn.execute(GIVE_UP.update, _held(job_id, 1, now=now)).rowcount == 1
    assert _row(conn, job_id).lease_expires_at == now.replace(tzinfo=None)


def _finish(conn: Connection, job_id: int, attempt: int, progress: float | None) -> Any:
    values = _held(
        job_id,
        attempt,
        status=JobStatus.PROCESSED,
        status_code=201,
        response="made",
        content_type="text/plain",
        progress=progress,
        now=utcnow(),
    )
    return conn.execute(_form(FINISH.returning), values).one_or_none()


def test_finish_stores_the_reply_and_hands_back_the_ended_row(conn: Connection) -> None:
    """The held attempt's finish stores its reply, keeps the last progress, ends the lease."""
    job_id = _insert(conn, callback_url="https://example.com/hook")
    _claim(conn, job_id)
    conn.execute(PROGRESS.update, _held(job_id, 1, progress=0.25, message="a quarter"))
    ended = _finish(conn, job_id, 1, None)
    assert ended._fields == tuple(column.key for column in ENDED_COLUMNS)
    assert (ended.id, ended.status, ended.status_code, ended.response) == (
        job_id,
        JobStatus.PROCESSED,
        201,
        "made",
    )
    assert (ended.progress, ended.content_type, ended.callback_url) == (
        0.25,
        "text/plain",
        "https://example.com/hook",
    )
    row = _row(conn, job_id)
    assert row.lease_expires_at is None and row.finished_at is not None
    found = conn.execute(
        FINISHED_BY,
        {
            "job_id": job_id,
            "status": JobStatus.PROCESSED,
            "attempt": 1,
            "status_code": 201,
            "response": "made",
        },
    ).one()
    assert found == ended


def test_finish_sets_the_progress_it_is_given(conn: Connection) -> None:
    """A finish with a progress stores it (1 for a job done)."""
    job_id = _insert(conn)
    _claim(conn, job_id)
    assert _finish(conn, job_id, 1, 1.0).progress == 1.0


def test_a_finish_of_an_attempt_taken_over_stores_nothing(conn: Connection) -> None:
    """The old attempt's finish finds no row: the job stays the new attempt's."""
    job_id = _insert(conn)
    _claim(conn, job_id)
    conn.execute(sa.update(Job).where(Job.id == job_id).values(attempts=2))
    assert _finish(conn, job_id, 1, None) is None
    assert _row(conn, job_id).status == "processing"


def _ending(job_id: int, now: datetime, attempt: int | None = None) -> dict[str, Any]:
    values = {
        "job_id": job_id,
        "status": JobStatus.FAILED,
        "status_code": 500,
        "response": '{"error": "lost"}',
        "now": now,
    }
    return values if attempt is None else {**values, "attempt": attempt}


def test_fail_lost_and_requeue_lost_need_the_lease_run_out(conn: Connection) -> None:
    """A lost job is failed or put back only once its lease has run out."""
    now = utcnow()
    live, lost, requeued = (_insert(conn) for _ in range(3))
    for job_id in (live, lost, requeued):
        _claim(conn, job_id, now - timedelta(minutes=2))
    conn.execute(
        sa.update(Job).where(Job.id == live).values(lease_expires_at=now + timedelta(minutes=1))
    )
    assert conn.execute(FAIL_LOST.update, _ending(live, now, 1)).rowcount == 0
    assert conn.execute(FAIL_LOST.update, _ending(lost, now, 1)).rowcount == 1
    assert _row(conn, lost).status == "failed"
    back = {"job_id": requeued, "attempt": 1, "now": now, "due_at": now}
    assert conn.execute(REQUEUE_LOST.update, {**back, "job_id": live}).rowcount == 0
    assert conn.execute(REQUEUE_LOST.update, back).rowcount == 1
    row = _row(conn, requeued)
    assert (row.status, row.lease_expires_at) == ("waiting", None)
    lost_rows = conn.execute(LOST_JOBS, {"now": now, "limit": 10}).all()
    assert lost_rows == []


def test_cancel_ends_a_waiting_or_processing_job_only(conn: Connection) -> None:
    """A pending job is cancelled; a finished one is left as it is."""
    now = utcnow()
    waiting = _insert(conn)
    processing = _insert(conn, JobStatus.PROCESSING)
    processed = _insert(conn, JobStatus.PROCESSED)
    for job_id, changed in ((waiting, 1), (processing, 1), (processed, 0)):
        values = {**_ending(job_id, now), "status": JobStatus.CANCELLED, "status_code": 499}
        assert conn.execute(CANCEL.update, values).rowcount == changed
    assert [_row(conn, i).status for i in (waiting, processing, processed)] == [
        "cancelled",
        "cancelled",
        "processed",
    ]


def test_reset_for_retry_clears_a_failed_job_only(conn: Connection) -> None:
    """A failed job goes back to waiting with no reply, progress or attempts; others stay."""
    now = utcnow()
    failed = _insert(
        conn,
        JobStatus.FAILED,
        status_code=500,
        response="x",
        content_type="text/plain",
        progress=0.5,
        progress_message="half",
        attempts=3,
        started_at=now,
        finished_at=now,
    )
    processed = _insert(conn, JobStatus.PROCESSED)
    values = {"job_id": failed, "due_at": now, "now": now}
    reset = conn.execute(_form(RESET_FOR_RETRY.returning), values).one()
    assert (reset.id, reset.due_at) == (failed, now.replace(tzinfo=None))
    row = _row(conn, failed)
    assert row.status == "waiting"
    assert (row.status_code, row.response, row.content_type, row.progress) == (None,) * 4
    assert (row.progress_message, row.attempts, row.started_at, row.finished_at) == (
        None,
        0,
        None,
        None,
    )
    other = {"job_id": processed, "due_at": now, "now": now}
    assert conn.execute(RESET_FOR_RETRY.update, other).rowcount == 0


def test_reschedule_puts_the_held_job_back_to_waiting(conn: Connection) -> None:
    """A retry's reschedule sets the job waiting, due later, with no lease."""
    job_id = _insert(conn)
    _claim(conn, job_id)
    due = utcnow() + timedelta(minutes=5)
    values = _held(job_id, 1, due_at=due, now=utcnow())
    assert conn.execute(RESCHEDULE.update, values).rowcount == 1
    row = _row(conn, job_id)
    assert (row.status, row.due_at, row.lease_expires_at) == (
        "waiting",
        due.replace(tzinfo=None),
        None,
    )


def test_touch_waiting_moves_a_waiting_job_s_due_time_only(conn: Connection) -> None:
    """A waiting job's due time becomes now; a processing job is not touched."""
    now = utcnow() + timedelta(hours=1)
    waiting, processing = _insert(conn), _insert(conn, JobStatus.PROCESSING)
    assert conn.execute(TOUCH_WAITING.update, {"job_id": waiting, "now": now}).rowcount == 1
    assert conn.execute(TOUCH_WAITING.update, {"job_id": processing, "now": now}).rowcount == 0
    assert _row(conn, waiting).due_at == now.replace(tzinfo=None)


def test_the_sweepers_reads_list_their_jobs_by_id_up_to_a_limit(conn: Connection) -> None:
    """Lost, stale and waiting jobs come in id order, at most ``limit`` of them."""
    now = utcnow()
    old = now - timedelta(hours=1)
    waiting = [_insert(conn, now=old) for _ in range(3)]
    lost = [_insert(conn, JobStatus.PROCESSING, lease_expires_at=old, attempts=1) for _ in range(3)]
    _insert(conn, JobStatus.PROCESSING, lease_expires_at=now + timedelta(hours=1))
    _insert(conn, now=now + timedelta(hours=1))
    assert [r.id for r in conn.execute(LOST_JOBS, {"now": now, "limit": 2})] == lost[:2]
    assert [r.id for r in conn.execute(STALE_JOBS, {"cutoff": now, "limit": 5})] == waiting
    after = {"after_id": waiting[0], "limit": 10}
    assert [r.id for r in conn.execute(WAITING_JOBS, after)][:2] == waiting[1:]


def test_reply_and_status_read_one_job(conn: Connection) -> None:
    """REPLY reads a JobReply's columns; STATUS the status alone; PENDING_OF the pending ids."""
    job_id = _insert(conn, JobStatus.PROCESSED, status_code=200, response="done")
    pending = _insert(conn)
    reply = JobReply(*conn.execute(REPLY, {"job_id": job_id}).one())
    assert (reply.status, reply.status_code, reply.response) == (JobStatus.PROCESSED, 200, "done")
    assert conn.execute(STATUS, {"job_id": job_id}).scalar_one() is JobStatus.PROCESSED
    ids = conn.execute(PENDING_OF, {"job_ids": [job_id, pending, 999]}).scalars().all()
    assert ids == [pending]


def test_record_delivery_writes_only_over_the_log_it_read(conn: Connection) -> None:
    """A delivery's entry is written if the log is still the one read (NULL too), else not."""
    job_id = _insert(conn, JobStatus.PROCESSED)
    first = {"job_id": job_id, "callback_status": "a", "before": None, "deliveries": "[1]"}
    assert conn.execute(RECORD_DELIVERY.update, first).rowcount == 1
    stale = {**first, "deliveries": "[2]"}
    assert conn.execute(RECORD_DELIVERY.update, stale).rowcount == 0
    again = {**first, "before": "[1]", "deliveries": "[1,2]"}
    assert conn.execute(RECORD_DELIVERY.update, again).rowcount == 1
    assert conn.execute(CALLBACK_DELIVERIES, {"job_id": job_id}).scalar_one() == "[1,2]"


def test_record_callback_stores_the_delivery_status(conn: Connection) -> None:
    """The callback's last delivery is stored on its job."""
    job_id = _insert(conn, JobStatus.PROCESSED)
    values = {"job_id": job_id, "callback_status": "delivered: 204"}
    assert conn.execute(RECORD_CALLBACK.update, values).rowcount == 1
    assert _row(conn, job_id).callback_status == "delivered: 204"
