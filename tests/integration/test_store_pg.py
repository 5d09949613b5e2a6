"""store on PostgreSQL: its autocommit pool, RETURNING, the announcing forms and the raw cursor."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_async_request.models import JobStatus
from flask_async_request.statements import CHANNEL, CLAIM, FINISH, INSERT, NewRow
from flask_async_request.store import JobReply, JobStore, lost_connection
from flask_async_request.values import utcnow
from tests.conftest import INTERNALS, add_job, reload_job

pytestmark = pytest.mark.integration


@pytest.fixture
def store(pg_app: Flask) -> JobStore:
    """The PostgreSQL app's job store."""
    return INTERNALS.job_store(pg_app)


def _claim_params(job_id: int) -> dict[str, Any]:
    now = utcnow()
    return {"job_id": job_id, "now": now, "lease_until": now + timedelta(minutes=5)}


def _finish_params(job_id: int) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "attempt": 1,
        "status": JobStatus.PROCESSED,
        "status_code": 200,
        "response": "ok",
        "now": utcnow(),
        "content_type": "text/plain",
        "progress": None,
    }


def test_the_store_has_an_autocommit_pool_of_its_own(pg_app: Flask, store: JobStore) -> None:
    """On PostgreSQL with psycopg the store autocommits on its own engine, and LISTENs."""
    assert store.autocommit and store.postgresql and store.listen and store.returning
    assert store.engine is not pg_app.extensions["sqlalchemy"].engine
    with store.engine.connect() as connection:
        assert connection.connection.driver_connection.autocommit  # type: ignore[union-attr]


def test_the_claim_returns_its_row_in_one_statement(store: JobStore) -> None:
    """The claim's RETURNING hands back the claimed row; a second claim finds none."""
    job_id = add_job(args=[3]).id
    row = store.run(CLAIM, _claim_params(job_id))
    assert row is not None
    # The raw path's row is a plain tuple: the statement's returns, in their order.
    assert (row[0], row[3], row[4]) == (job_id, '{"args": [3], "kwargs": {}}', 1)
    assert store.run(CLAIM, _claim_params(job_id)) is None
    assert reload_job(job_id).status is JobStatus.PROCESSING


def test_the_claim_runs_raw_precompiled(store: JobStore) -> None:
    """The claim is a hot statement: precompiled once for the engine, run on a raw cursor."""
    job_id = add_job().id
    store.run(CLAIM, _claim_params(job_id))
    assert store._precompiled is not None
    assert store._precompiled[id(CLAIM.no_wait)] is not None


def test_finish_announces_the_job_s_id(store: JobStore) -> None:
    """FINISH sends the job's id on CHANNEL in the same statement; a listener hears it."""
    job_id = add_job().id
    store.run(CLAIM, _claim_params(job_id))
    heard: list[int] = []
    with store._listening() as announced:
        row = store.run(FINISH, _finish_params(job_id))
        assert row is not None and row[0] == job_id
        for found in announced(30.0):
            heard.append(found)
            break
    assert heard == [job_id]
    assert reload_job(job_id).content_type == "text/plain"


def test_a_listener_skips_a_payload_that_is_no_id(store: JobStore) -> None:
    """A NOTIFY on the channel whose payload is not a job id yields nothing; the next id does."""
    heard: list[int] = []
    with store._listening() as announced:
        with store.engine.connect() as connection:
            connection.execute(sa.select(sa.func.pg_notify(CHANNEL, "hello")))
            connection.execute(sa.select(sa.func.pg_notify(CHANNEL, "17")))
        for found in announced(30.0):
            heard.append(found)
            break
    assert heard == [17]


def test_finish_in_a_session_announces_at_its_commit(pg_app: Flask, store: JobStore) -> None:
    """run_in's FINISH is the announcing form; the listener hears it once the session commits."""
    session = pg_app.extensions["sqlalchemy"].session
    job_id = add_job().id
    store.run(CLAIM, _claim_params(job_id))
    with store._listening() as announced:
        row = store.run_in(session, FINISH, _finish_params(job_id))
        assert row is not None and row[0] == job_id
        session.commit()
        heard = next(iter(announced(30.0)))
    assert heard == job_id


def test_insert_is_a_raw_insert_returning(store: JobStore) -> None:
    """insert() runs the precompiled INSERT ... RETURNING and answers the new id."""
    now = utcnow()
    row = NewRow(
        uid="pg-1",
        worker="tests.workers:Echo",
        params={"args": [], "kwargs": {}},
        status=JobStatus.WAITING,
        owner="alice",
        idempotency_scope=None,
        callback_url=None,
        queue="q",
        time_limit=None,
        attempts=0,
        created_at=now,
        updated_at=now,
        due_at=now,
    )
    job_id = store.insert(row)
    assert store._precompiled is not None and store._precompiled[id(INSERT)] is not None
    job = reload_job(job_id)
    assert (job.uid, job.owner, job.queue) == ("pg-1", "alice", "q")


def test_fetch_reply_on_the_raw_cursor(store: JobStore) -> None:
    """The poll reads the reply columns with its named parameter on a raw cursor."""
    assert not store._positional
    job = add_job(status=JobStatus.PROCESSED, status_code=204, response="")
    assert store.fetch_reply(job.id) == JobReply(
        job.uid, None, JobStatus.PROCESSED, 204, "", None, None, None
    )
    assert store.fetch_reply(job.id + 1000) is None


def test_a_terminated_connection_is_lost_and_dropped(pg_app: Flask, store: JobStore) -> None:
    """A backend killed under the pool: the raw read raises a lost connection; the next works."""
    job_id = add_job().id
    # The store's pool now holds one idle connection: this one.
    (pid,) = store._raw("SELECT pg_backend_pid()", ())
    with pg_app.extensions["sqlalchemy"].engine.connect() as killer:
        killer.execute(sa.select(sa.func.pg_terminate_backend(pid)))
    with pytest.raises(sa.exc.DBAPIError) as raised:
        store.fetch_reply(job_id)
    assert lost_connection(raised.value)
    assert raised.value.connection_invalidated
    # The lost connection was dropped: the next read gets a fresh one.
    reply = store.fetch_reply(job_id)
    assert reply is not None and reply.status is JobStatus.WAITING


def test_a_refused_raw_statement_keeps_its_connection(store: JobStore) -> None:
    """A statement PostgreSQL refuses on the raw cursor is not a lost connection."""
    with pytest.raises(sa.exc.DBAPIError) as raised:
        store._raw("SELECT 1 / 0", {})
    assert not lost_connection(raised.value)
    assert isinstance(raised.value, sa.exc.DataError)
    assert store.fetch_reply(1) is None


def test_a_wait_is_woken_by_the_end_s_announcement(store: JobStore) -> None:
    """A job's end wakes a wait on it through LISTEN, with the ended reply."""
    job_id = add_job().id
    store.run(CLAIM, _claim_params(job_id))
    replies: list[JobReply | None] = []
    started = threading.Event()

    def wait() -> None:
        started.set()
        replies.append(store.wait_until_finished(job_id, timeout=60))

    thread = threading.Thread(target=wait)
    thread.start()
    started.wait()
    store.run(FINISH, _finish_params(job_id))
    thread.join(60)
    assert not thread.is_alive()
    assert [r.status if r else None for r in replies] == [JobStatus.PROCESSED]


def test_a_thread_s_statements_share_one_connection(store: JobStore) -> None:
    """A thread keeps its connection between raw statements: no checkout after its first."""
    checkouts: list[object] = []
    sa.event.listen(store.engine.pool, "checkout", lambda *_: checkouts.append(1))
    (first,) = store._raw("SELECT pg_backend_pid()", ())
    (second,) = store._raw("SELECT pg_backend_pid()", ())
    assert store.fetch_reply(add_job().id) is not None
    assert first == second
    assert len(checkouts) <= 1


def test_a_thread_s_statements_share_one_cursor(store: JobStore) -> None:
    """A thread's raw statements run on one cursor of its kept connection; a binary read on
    a cursor of its own; a statement refused on it leaves it good for the next."""
    made: list[Any] = []
    store._raw("SELECT 1", ())
    assert store._kept is not None
    shared = store._kept.cursor()
    original = shared.connection.cursor

    def cursor(*args: Any, **kwargs: Any) -> Any:
        made.append(kwargs)
        return original(*args, **kwargs)

    shared.connection.cursor = cursor
    try:
        job_id = add_job().id
        assert store.fetch_reply(job_id) is not None
        store.run(CLAIM, _claim_params(job_id))
        with pytest.raises(sa.exc.DataError):
            store._raw("SELECT 1 / 0", {})
        assert store._raw("SELECT 2", ()) == (2,)
        assert store._raw("SELECT 3", (), binary=True) == (3,)
    finally:
        shared.connection.cursor = original
    assert made == [{"binary": True}]


def test_a_lost_connection_drops_those_other_threads_keep(pg_app: Flask, store: JobStore) -> None:
    """After a restart's lost connection, another thread's next statement opens a fresh one."""
    pids: list[int] = []
    took, go_on = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def other_thread() -> None:
        pids.append(store._raw("SELECT pg_backend_pid()", ())[0])
        took.set()
        go_on.wait()
        try:
            pids.append(store._raw("SELECT pg_backend_pid()", ())[0])
        except BaseException as e:  # the thread's error, for the test
            errors.append(e)

    thread = threading.Thread(target=other_thread)
    thread.start()
    took.wait()
    (mine,) = store._raw("SELECT pg_backend_pid()", ())
    with pg_app.extensions["sqlalchemy"].engine.connect() as killer:
        for pid in (mine, pids[0]):
            killer.execute(sa.select(sa.func.pg_terminate_backend(pid)))
    with pytest.raises(sa.exc.DBAPIError) as raised:
        store._raw("SELECT 1", ())
    assert lost_connection(raised.value)
    go_on.set()
    thread.join()
    assert errors == []
    assert pids[1] != pids[0]


def test_no_connection_is_kept_where_each_checkout_pings(pg_app: Flask) -> None:
    """With ``pool_pre_ping`` every statement checks out, so that the ping spares a lost one."""
    app = Flask(__name__)
    engine = pg_app.extensions["sqlalchemy"].engine
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_pre_ping": True}
    pinging = JobStore.for_app(app, engine)
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {}
    keeping = JobStore.for_app(app, engine)
    try:
        assert pinging._kept is None
        assert keeping._kept is not None and keeping._kept.limit == 4
    finally:
        pinging.dispose()
        keeping.dispose()
