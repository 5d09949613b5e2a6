"""The statements' database-specific forms run on the databases they are for: PostgreSQL's
NOTIFY and unflushed forms, and MariaDB's UPDATE followed by its read."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from flask_async_request.models import Job, JobStatus
from flask_async_request.statements import (
    CALLBACK_DELIVERIES,
    CHANNEL,
    CLAIM,
    FINISH,
    INSERT,
    RECORD_DELIVERY,
    NewRow,
)
from flask_async_request.store import JobStore
from flask_async_request.values import utcnow
from tests.conftest import PG_DATABASE_URL

pytestmark = pytest.mark.integration

MARIADB_URL = os.environ.get("FAR_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")


def _engine(url: str) -> Iterator[Engine]:
    """An engine on ``url`` whose database holds a fresh jobs table."""
    engine = sa.create_engine(url)
    table = Job.__table__
    assert isinstance(table, sa.Table)
    table.drop(engine, checkfirst=True)
    table.create(engine)
    yield engine
    table.drop(engine, checkfirst=True)
    engine.dispose()


@pytest.fixture
def pg() -> Iterator[Engine]:
    yield from _engine(PG_DATABASE_URL)


@pytest.fixture
def maria() -> Iterator[Engine]:
    yield from _engine(MARIADB_URL)


def _insert(conn: Connection) -> int:
    now = utcnow()
    count = conn.execute(sa.select(sa.func.count()).select_from(Job)).scalar_one()
    row = NewRow(
        uid=f"{count:032x}",
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
    if conn.dialect.insert_returning:
        job_id: int = conn.execute(INSERT, row._asdict()).scalar_one()
        return job_id
    key = conn.execute(sa.insert(Job).values(row._asdict())).inserted_primary_key
    assert key is not None
    return int(key[0])


def _claim_values(job_id: int) -> dict[str, Any]:
    now = utcnow()
    return {"job_id": job_id, "now": now, "lease_until": now + timedelta(minutes=1)}


def _finish_values(job_id: int, attempt: int) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "attempt": attempt,
        "status": JobStatus.PROCESSED,
        "status_code": 200,
        "response": "done",
        "content_type": None,
        "progress": None,
        "now": utcnow(),
    }


def _listener(engine: Engine) -> psycopg.Connection[Any]:
    url = engine.url
    conn = psycopg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username,
        dbname=url.database,
        autocommit=True,
    )
    conn.execute(f"LISTEN {CHANNEL}")
    return conn


def test_an_end_is_announced_with_the_jobs_id_when_it_commits(pg: Engine) -> None:
    """The NOTIFY form stores the end and announces the id on the channel, at the commit."""
    assert FINISH.notifying is not None
    listener = _listener(pg)
    try:
        with pg.begin() as conn:
            job_id = _insert(conn)
            conn.execute(CLAIM.update, _claim_values(job_id))
        with pg.begin() as conn:
            ended = conn.execute(FINISH.notifying, _finish_values(job_id, 1)).one()
        assert (ended.id, ended.status, ended.response) == (job_id, JobStatus.PROCESSED, "done")
        notifications = list(listener.notifies(timeout=5, stop_after=1))
        assert [(n.channel, n.payload) for n in notifications] == [(CHANNEL, str(job_id))]
    finally:
        listener.close()


def test_no_end_stored_means_none_announced(pg: Engine) -> None:
    """An attempt taken over matches no row: nothing is stored and nothing announced."""
    assert FINISH.notifying is not None
    listener = _listener(pg)
    try:
        with pg.begin() as conn:
            job_id = _insert(conn)
            conn.execute(CLAIM.update, _claim_values(job_id))
        with pg.begin() as conn:
            rows = conn.execute(FINISH.notifying, _finish_values(job_id, 2)).all()
        assert rows == []
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
    finally:
        listener.close()


def test_the_unflushed_claim_leaves_the_sessions_setting_alone(pg: Engine) -> None:
    """The claim turns synchronous_commit off for its own transaction, and only for it."""
    with pg.connect() as conn:
        job_id = _insert(conn)
        conn.commit()
        assert CLAIM.no_wait is not None
        claimed = conn.execute(CLAIM.no_wait, _claim_values(job_id)).one()
        assert (claimed.id, claimed.attempts) == (job_id, 1)
        assert json.loads(claimed.params) == {"args": [1], "kwargs": {}}
        assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "off"
        conn.commit()
        assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "on"


def test_a_claim_naming_another_uid_claims_nothing_on_postgresql(pg: Engine) -> None:
    """The claim's form on PostgreSQL takes the job of the uid named, and no other."""
    assert CLAIM.no_wait is not None
    with pg.connect() as conn:
        job_id = _insert(conn)
        conn.commit()
        own = conn.execute(sa.select(Job.uid).where(Job.id == job_id)).scalar_one()
        other = {**_claim_values(job_id), "message_uid": "f" * 32}
        assert conn.execute(CLAIM.no_wait, other).one_or_none() is None
        conn.commit()
        claimed = conn.execute(CLAIM.no_wait, {**_claim_values(job_id), "message_uid": own}).one()
        assert (claimed.id, claimed.uid, claimed.attempts) == (job_id, own, 1)
        conn.commit()


def test_a_claim_naming_another_uid_claims_nothing_on_mariadb(maria: Engine) -> None:
    """The claim's form on MariaDB takes the job of the uid named, and no other."""
    with maria.begin() as conn:
        job_id = _insert(conn)
        own = conn.execute(sa.select(Job.uid).where(Job.id == job_id)).scalar_one()
        other = {**_claim_values(job_id), "message_uid": "f" * 32}
        assert conn.execute(CLAIM.update, other).rowcount == 0
        mine = {**_claim_values(job_id), "message_uid": own}
        assert conn.execute(CLAIM.update, mine).rowcount == 1
        claimed = conn.execute(CLAIM.read, {"job_id": job_id}).one()
        assert (claimed.uid, claimed.attempts) == (own, 1)


def test_mariadb_reads_the_changed_row_after_the_update(maria: Engine) -> None:
    """Without UPDATE ... RETURNING, the claim's and the finish's reads give the changed row."""
    assert not maria.dialect.update_returning
    with maria.begin() as conn:
        job_id = _insert(conn)
        assert conn.execute(CLAIM.update, _claim_values(job_id)).rowcount == 1
        claimed = conn.execute(CLAIM.read, {"job_id": job_id}).one()
        assert (claimed.id, claimed.attempts) == (job_id, 1)
        assert json.loads(claimed.params) == {"args": [1], "kwargs": {}}
        assert conn.execute(CLAIM.update, _claim_values(job_id)).rowcount == 0
        assert conn.execute(FINISH.update, _finish_values(job_id, 1)).rowcount == 1
        ended = conn.execute(FINISH.read, {"job_id": job_id}).one()
        assert (ended.status, ended.status_code, ended.response) == (
            JobStatus.PROCESSED,
            200,
            "done",
        )


@pytest.mark.parametrize("database", ["pg", "maria"])
def test_the_streams_changes_check_runs_on_each_database(
    database: str, request: pytest.FixtureRequest
) -> None:
    """Where no LISTEN tells (MariaDB), the changes check reads the followed jobs in one query."""
    engine: Engine = request.getfixturevalue(database)
    store = JobStore(engine, autocommit=False)
    with engine.begin() as conn:
        first, second = _insert(conn), _insert(conn)
    assert store._changed([first, second]) == [first, second]
    assert store._changed([first, second]) == []
    with engine.begin() as conn:
        conn.execute(sa.update(Job).where(Job.id == second).values(progress=0.5))
    assert store._changed([first, second]) == [second]


@pytest.mark.parametrize("database", ["pg", "maria"])
def test_a_delivery_is_recorded_only_over_the_log_it_read(
    database: str, request: pytest.FixtureRequest
) -> None:
    """NULL and text compare as equal or not on each database: a stale log writes nothing."""
    engine: Engine = request.getfixturevalue(database)
    with engine.begin() as conn:
        job_id = _insert(conn)
        first = {"job_id": job_id, "callback_status": "a", "before": None, "deliveries": "[1]"}
        assert conn.execute(RECORD_DELIVERY.update, first).rowcount == 1
        assert conn.execute(RECORD_DELIVERY.update, {**first, "deliveries": "[2]"}).rowcount == 0
        again = {**first, "before": "[1]", "deliveries": "[1,2]"}
        assert conn.execute(RECORD_DELIVERY.update, again).rowcount == 1
        assert conn.execute(CALLBACK_DELIVERIES, {"job_id": job_id}).scalar_one() == "[1,2]"
