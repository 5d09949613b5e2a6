"""The jobs dashboard on PostgreSQL with a million jobs: every read is an index scan, no sort."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask import Flask

from tests.conftest import AppFactory, Internals, current_db
from tests.dashboards import PREFIX, open_dashboard, statements

pytestmark = pytest.mark.integration

PG_ADMIN_URL = os.environ.get(
    "FAR_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
ROWS = 1_000_000

# Mostly processed jobs, as in a real table; the rare statuses are the ones an
# operator looks for, and where a plan that filters the primary key would crawl.
FILL = f"""
INSERT INTO async_request_jobs
    (uid, worker, params, status, attempts, due_at, created_at, updated_at,
     started_at, finished_at, status_code, response)
SELECT md5(i::text),
       'tests.workers:' || (ARRAY['Echo', 'Sleep', 'Boom', 'Reply'])[1 + mod(i, 4)],
       '{{"args": [], "kwargs": {{}}}}',
       CASE WHEN mod(i, 1000) = 1 THEN 'waiting'
            WHEN mod(i, 1000) = 2 THEN 'processing'
            WHEN mod(i, 100) = 0 THEN 'failed'
            WHEN mod(i, 500) = 3 THEN 'cancelled'
            ELSE 'processed' END,
       1, t, t, t, t, t + interval '1 second', 200, 'ok'
FROM generate_series(1, {ROWS}) AS i,
     LATERAL (SELECT now() - ({ROWS} - i) * interval '1 second' AS t) AS moment
"""

QUERIES = [
    "",
    "status=waiting",
    "status=failed",
    "status=processed",
    "worker=tests.workers:Boom",
    "status=failed&worker=tests.workers:Echo",
    "older_than=7d",
    "newer_than=1h",
    "status=waiting&older_than=1d&newer_than=8d",
    "before=500000",
    "after=500000",
    "status=failed&before=500000",
    "worker=tests.workers:Sleep&after=100",
]


@pytest.fixture(scope="module")
def big_app_database() -> Iterator[str]:
    """A database of its own, dropped at the end."""
    name = f"far_dashboard_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


@pytest.fixture
def big_app(make_app: AppFactory, big_app_database: str, internals: Internals) -> Iterator[Flask]:
    app = open_dashboard(make_app, create_tables=False, SQLALCHEMY_DATABASE_URI=big_app_database)
    with app.app_context():
        db = app.extensions["sqlalchemy"]
        if not sa.inspect(db.engine).has_table("async_request_jobs"):
            db.create_all()
            with db.engine.begin() as conn:
                conn.exec_driver_sql(FILL)
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE async_request_jobs")
    yield app
    with app.app_context():
        internals.job_store(app).dispose()


@pytest.mark.parametrize("query", QUERIES)
def test_every_read_is_an_index_scan_at_a_million_rows(big_app: Flask, query: str) -> None:
    """EXPLAIN of each dashboard SELECT has no Seq Scan and no Sort, and a page comes fast."""
    client = big_app.test_client()
    with statements(big_app) as seen:
        assert client.get(f"{PREFIX}/?{query}").status_code == 200
        assert client.get(f"{PREFIX}/jobs/{ROWS // 2}").status_code == 200
    selects = [(s, p) for s, p in seen if s.lstrip().upper().startswith("SELECT")]
    assert selects
    with big_app.app_context():
        connection = current_db().engine.raw_connection()
        try:
            cursor = connection.cursor()
            for statement, parameters in selects:
                cursor.execute(f"EXPLAIN {statement}", parameters)
                plan = "\n".join(row[0] for row in cursor.fetchall())
                assert "Seq Scan" not in plan, plan
                assert "Sort" not in plan, plan
                assert "Index" in plan, plan
        finally:
            connection.close()
