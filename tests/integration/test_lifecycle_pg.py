"""The lifecycle on a real PostgreSQL: ends that wake long polls, cancels across a restart,
the caller's transaction on the fast path, and transactional workers under SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from flask import Flask

from flask_async_request import Job, JobStatus
from flask_async_request.maintenance import sweep_jobs
from flask_async_request.outcomes import Outcome
from flask_async_request.statements import hot
from flask_async_request.values import utcnow
from tests import workers
from tests.conftest import (
    INTERNALS,
    PG_DATABASE_URL,
    Internals,
    Receiver,
    add_job,
    current_db,
    json_of,
    poll,
)
from tests.integration.conftest import Stack, _environment, _start_worker

pytestmark = pytest.mark.integration

DATABASE_URL = PG_DATABASE_URL


#: The test database's own name and a libpq conninfo for it, from DATABASE_URL.
_URL = sa.make_url(DATABASE_URL)
_CONNINFO = f"host={_URL.host} port={_URL.port or 5432} user={_URL.username}"


def _terminate_other_backends() -> int:
    """What a database restart does to every pooled connection of the test database: each is cut."""
    with psycopg.connect(f"{_CONNINFO} dbname=postgres", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (_URL.database,),
        ).fetchall()
    return len(rows)


def test_long_poll_wakes_when_the_sweeper_fails_a_job(pg_app: Flask) -> None:
    """A long poll on a lost job answers as soon as the sweeper fails it, not at its deadline."""
    job = add_job(status=JobStatus.PROCESSING)
    job.attempts, job.lease_expires_at = 1, utcnow() - timedelta(seconds=5)
    current_db().session.commit()
    token = job.token
    answers: list[tuple[int, float]] = []

    def long_poll() -> None:
        response = pg_app.test_client().get(
            "/async_request/job", headers={"X-JOB-AUTHORIZATION": token, "Prefer": "wait=10"}
        )
        answers.append((response.status_code, time.monotonic()))

    waiter = threading.Thread(target=long_poll)
    waiter.start()
    time.sleep(0.5)  # the poll is listening by now
    assert sweep_jobs().failed == 1
    swept = time.monotonic()
    waiter.join(15)
    assert answers, "the long poll never answered"
    status, answered = answers[0]
    assert status == 200
    assert answered - swept < 2


def test_delete_after_a_database_restart_cancels_and_calls_back(
    pg_app: Flask, receiver: Receiver
) -> None:
    """A DELETE made just after a restart cancels once, answers the cancelled reply, calls back."""
    job = add_job()
    job.callback_url = receiver.url
    current_db().session.commit()
    token = job.token
    current_db().session.commit()  # the session holds no connection through the restart
    client = pg_app.test_client()
    headers = {"X-JOB-AUTHORIZATION": token}
    assert client.get("/async_request/job", headers=headers).status_code == 202
    assert _terminate_other_backends() >= 1
    # The store's pool finds its connections cut: 503 once, then it reconnects.
    for _ in range(3):
        if client.get("/async_request/job", headers=headers).status_code == 202:
            break
    answer = client.delete("/async_request/job", headers=headers)
    assert answer.status_code == 200, answer.json
    assert json_of(answer)["status"] == "cancelled"
    receiver.wait()
    assert json.loads(receiver.calls[0][0])["status"] == "cancelled"
    assert client.delete("/async_request/job", headers=headers).status_code == 409


def test_core_statement_before_enqueue_is_committed(pg_app: Flask) -> None:
    """The caller's own Core statement in the session is committed with the job, never dropped."""
    session = current_db().session
    session.execute(sa.text("DROP TABLE IF EXISTS accounts"))
    session.execute(sa.text("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER)"))
    session.execute(sa.text("INSERT INTO accounts VALUES (1, 100)"))
    session.commit()
    session.execute(sa.text("UPDATE accounts SET balance = balance - 30 WHERE id = 1"))
    job = Job.create_and_enqueue(workers.Echo, "debited")
    assert job.status is JobStatus.PROCESSED
    session.remove()
    with current_db().engine.connect() as conn:
        balance = conn.execute(sa.text("SELECT balance FROM accounts WHERE id = 1")).scalar_one()
    assert balance == 70


def test_clean_session_still_takes_the_one_statement_insert(
    pg_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing of the caller's in the session each job is one autocommit INSERT."""
    session = current_db().session
    session.commit()
    monkeypatch.setattr(session(), "commit", lambda: pytest.fail("committed the session"))
    first = Job.create_and_enqueue(workers.Echo, "quick")
    # The first job, now known to the session, is no work of the caller's to carry.
    second = Job.create_and_enqueue(workers.Echo, "again")
    assert first.id is not None and second.id == first.id + 1
    assert first in session and second in session


def test_a_new_job_s_id_and_token_cost_no_query(pg_app: Flask) -> None:
    """The fast path hands back the job by its id alone: the rest of its row is read afresh."""
    session = current_db().session
    session.commit()
    job = Job.create_and_enqueue(workers.Echo, "quick")
    executed: list[str] = []
    sa.event.listen(current_db().engine, "before_cursor_execute", lambda *a: executed.append(a[2]))
    assert INTERNALS.verify_token(pg_app)(job.token).job_id == job.id
    assert executed == []
    # Eager Celery ran it meanwhile: what is read is the row as it is now.
    assert job.status is JobStatus.PROCESSED
    assert len(executed) == 1 and executed[0].startswith("SELECT")
    session.flush()
    assert len(executed) == 1


# Transactional workers against a real prefork worker -----------------------------------------


def _effects(app: Flask) -> list[int]:
    with app.app_context(), current_db().engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT job_id FROM effects")).scalars())


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_transactional_worker_killed_mid_job_applies_its_writes_once(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL after the worker wrote leaves nothing; the sweeper's rerun writes exactly once."""
    monkeypatch.setenv("FAR_TEST_LEASE", "2")
    monkeypatch.setenv("FAR_TEST_RETRY", "1")
    app, worker = stack()
    with app.app_context():
        session = current_db().session
        session.execute(sa.text("DROP TABLE IF EXISTS effects"))
        session.execute(sa.text("CREATE TABLE effects (job_id INTEGER NOT NULL)"))
        session.commit()
        job_id = Job.create_and_enqueue(workers.WriteEffect, sleep=30).id
    written = tmp_path / "effects" / f"written-{job_id}"
    _wait_for(written.exists, 30, "the worker's write")
    for child in _children(worker.proc.pid):
        os.kill(child, signal.SIGKILL)
    worker.proc.kill()
    worker.proc.wait(10)
    assert _effects(app) == []
    # The lease runs out; the sweeper puts the job back; a new worker runs it
    # (without the long sleep, since it has written once before).
    time.sleep(2.5)
    with app.app_context():
        assert sweep_jobs().requeued == 1
    env = _environment(tmp_path, os.environ.get("FAR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
    env["FAR_TEST_QUEUE"] = app.config["ASYNC_REQUEST_QUEUE"]
    rerun = _start_worker(env, tmp_path / "rerun.log", 2)
    try:
        with app.app_context():
            _wait_for(lambda: _status(job_id) is JobStatus.PROCESSED, 30, "the rerun")
    finally:
        rerun.stop()
    assert _effects(app) == [job_id]


def _status(job_id: int) -> JobStatus:
    session = current_db().session
    status = session.execute(sa.select(Job.status).where(Job.id == job_id)).scalar_one()
    session.commit()
    return JobStatus(status)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_poll_after_transactional_job(pg_app: Flask) -> None:
    """A transactional job's reply is read by the status endpoint like any other."""
    session = current_db().session
    session.execute(sa.text("DROP TABLE IF EXISTS effects"))
    session.execute(sa.text("CREATE TABLE effects (job_id INTEGER NOT NULL)"))
    session.commit()
    job = Job.create_and_enqueue(workers.WriteEffect)
    answer = poll(pg_app.test_client(), job.token)
    assert answer.status_code == 200
    assert answer.json["response"]["body"] == "written"


def _wal_syncs(store: Any) -> int:
    """WAL flushes so far, with the counts of this thread's statements' connection reported first.

    The store's statements run on the connection the thread keeps; its backend
    reports its counts when it goes idle after a forced flush.
    """
    store._raw("SELECT pg_stat_force_next_flush()", ())
    with store.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT wal_sync FROM pg_stat_wal")).scalar_one())


def test_claims_renewals_and_progress_do_not_wait_for_the_wal_flush(
    pg_app: Flask, internals: Internals
) -> None:
    """Only the stored reply waits for a flush: 60 claims, renewals and reports do not."""
    from flask_async_request import lifecycle

    store = internals.job_store(pg_app)
    jobs = [add_job(status=JobStatus.WAITING).id for _ in range(20)]
    before = _wal_syncs(store)
    for job_id in jobs:
        claim = lifecycle.claim(store, job_id, timedelta(minutes=1))
        assert claim is not None
        assert lifecycle.renew(store, job_id, claim.attempt, timedelta(minutes=2))
        assert lifecycle.set_progress(store, job_id, claim.attempt, 0.5, "half")
    unflushed = _wal_syncs(store) - before
    # With every commit waiting, there would be one flush each (60); the WAL
    # writer flushes a few times a second in the background.
    assert unflushed < 30, unflushed
    # The setting was the statements' own: the session's is untouched.
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "on"
    outcome = Outcome(JobStatus.PROCESSED, 200, "done")
    before = _wal_syncs(store)
    for job_id in jobs:
        assert lifecycle.finish(store, job_id, 1, outcome) is not None
    assert _wal_syncs(store) - before >= len(jobs)


def _updated_at(job_id: int) -> Any:
    with psycopg.connect(f"{_CONNINFO} dbname={_URL.database}") as conn:
        row = conn.execute(
            "SELECT updated_at FROM async_request_jobs WHERE id = %s", (job_id,)
        ).fetchone()
    assert row is not None
    return row[0]


def test_a_claim_on_a_raw_cursor_takes_only_the_job_of_its_uid(
    pg_app: Flask, internals: Internals
) -> None:
    """The precompiled claim naming another uid claims nothing; its own uid, or none, claims."""
    from flask_async_request import lifecycle

    store = internals.job_store(pg_app)
    executed: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *a: executed.append(a[2]))
    job = add_job(status=JobStatus.WAITING)
    assert lifecycle.claim(store, job.id, timedelta(minutes=1), "f" * 32) is None
    assert _status_and_attempts(job.id) == ("waiting", 0)
    claim = lifecycle.claim(store, job.id, timedelta(minutes=1), job.uid)
    assert claim is not None and (claim.uid, claim.attempt) == (job.uid, 1)
    other = add_job(status=JobStatus.WAITING).id
    assert lifecycle.claim(store, other, timedelta(minutes=1)) is not None
    assert executed == []


def _status_and_attempts(job_id: int) -> tuple[str, int]:
    with psycopg.connect(f"{_CONNINFO} dbname={_URL.database}") as conn:
        row = conn.execute(
            "SELECT status, attempts FROM async_request_jobs WHERE id = %s", (job_id,)
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_a_job_s_hot_statements_run_on_raw_cursors(pg_app: Flask, internals: Internals) -> None:
    """Claim, renew, progress, check, reschedule, finish and cancel skip SQLAlchemy's
    execution layer, and come back typed as through it."""
    from flask_async_request import lifecycle, retention

    store = internals.job_store(pg_app)
    executed: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *a: executed.append(a[2]))
    job_id = add_job(status=JobStatus.WAITING).id
    claim = lifecycle.claim(store, job_id, timedelta(minutes=1))
    assert claim is not None
    assert (claim.attempt, json.loads(claim.params)) == (1, {"args": [], "kwargs": {}})
    assert claim.due_at is not None and claim.due_at.tzinfo is not None
    claimed_at = utcnow()
    assert lifecycle.renew(store, job_id, claim.attempt, timedelta(minutes=2))
    assert lifecycle.set_progress(store, job_id, claim.attempt, 0.25, "a quarter")
    # The renewal and the report leave updated_at to the column's onupdate.
    assert store.fetch_reply(job_id).message == "a quarter"  # type: ignore[union-attr]
    assert _updated_at(job_id) >= claimed_at
    assert lifecycle.held(store, job_id, claim.attempt)
    assert not lifecycle.held(store, job_id, claim.attempt + 1)
    assert lifecycle.reschedule(store, job_id, claim.attempt, utcnow())
    claim = lifecycle.claim(store, job_id, timedelta(minutes=1))
    assert claim is not None and claim.attempt == 2
    outcome = Outcome(JobStatus.PROCESSED, 201, "made")
    ended = lifecycle.finish(store, job_id, claim.attempt, outcome)
    assert ended is not None
    assert ended.status is JobStatus.PROCESSED
    assert (ended.reply.status_code, ended.reply.response, ended.reply.progress) == (201, "made", 1)
    assert executed == []
    # A statement that cannot be precompiled (cancel's IN list), and statements
    # built per call, go through SQLAlchemy as before.
    other = add_job(status=JobStatus.WAITING).id
    assert lifecycle.cancel(store, other).status is JobStatus.CANCELLED
    assert len(executed) == 1
    assert (
        retention.delete_matching(store, retention.purge_filter(timedelta(days=1)), batch_size=100)
        == 0
    )
    assert len(executed) > 1


def test_a_hot_statement_cannot_expand_parameters() -> None:
    """A list parameter would compile afresh for each length: it has no place among them."""
    from sqlalchemy.dialects import postgresql

    from flask_async_request.compat import Precompiled

    statement = sa.select(Job.id).where(Job.id.in_(sa.bindparam("ids", expanding=True)))
    with pytest.raises(ValueError, match="expanding"):
        Precompiled(statement, postgresql.psycopg.dialect())  # type: ignore[no-untyped-call]


#: A hot statement whose parameter names the driver cannot take as they are.
_ODD_NAMES = hot(
    sa.update(Job)
    .where(Job.id == sa.bindparam("job.id"))
    .values(params=sa.bindparam("new params", type_=Job.__table__.c.params.type))
    .returning(Job.params, Job.status)
)


def test_a_hot_statement_s_parameters_are_processed_by_their_escaped_names(
    pg_app: Flask,
    internals: Internals,
) -> None:
    """ "new params" is "new_params" in the SQL: its JSON type still serializes the dict."""
    store = internals.job_store(pg_app)
    executed: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *a: executed.append(a[2]))
    job_id = add_job(status=JobStatus.WAITING).id
    row = store.first(_ODD_NAMES, {"job.id": job_id, "new params": {"args": [1], "kwargs": {}}})
    assert row == ({"args": [1], "kwargs": {}}, JobStatus.WAITING)
    assert executed == []


def _terminate(pids: list[int]) -> None:
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        for pid in pids:
            c.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))


def test_a_lost_connection_takes_the_stale_idle_ones_with_it(
    pg_app: Flask, internals: Internals
) -> None:
    """After the database dropped every connection, one statement fails (as SQLAlchemy's
    would) and the next gets a new connection, not another stale one."""
    store = internals.job_store(pg_app)
    job_id = add_job().id
    store.engine.pool.dispose()
    held = [store.engine.raw_connection() for _ in range(2)]
    pids = []
    for connection in held:
        assert connection.driver_connection is not None
        pids.append(connection.driver_connection.info.backend_pid)
    for connection in held:
        connection.close()
    _terminate(pids)
    with pytest.raises(sa.exc.OperationalError) as lost:
        store.fetch_reply(job_id)
    assert lost.value.connection_invalidated
    assert store.fetch_reply(job_id) is not None


def test_a_statement_that_fails_keeps_its_connection(pg_app: Flask, internals: Internals) -> None:
    """A constraint error is the statement's, not the connection's: the next statement's is it."""
    from flask_async_request import lifecycle

    store = internals.job_store(pg_app)
    taken = add_job().uid
    store.engine.pool.dispose()

    def backend() -> int:
        """The backend of the connection the store's statements run on, in this thread."""
        (pid,) = store._raw("SELECT pg_backend_pid()", ())
        return int(pid)

    before = backend()
    job = lifecycle.new_job("tests.workers:Echo", {"args": [], "kwargs": {}})
    job.uid = taken
    with pytest.raises(sa.exc.IntegrityError) as refused:
        lifecycle.insert(store, job)
    assert not refused.value.connection_invalidated
    assert backend() == before
