"""Long polls cost the database nothing while they wait: many waiters on a small pool."""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from flask import Flask

from flask_async_request import lifecycle
from flask_async_request.lifecycle import Outcome
from flask_async_request.models import JobStatus
from flask_async_request.state import get_state
from tests.conftest import AppFactory, add_job, serving

pytestmark = pytest.mark.integration

DATABASE_URL = os.environ.get(
    "FAR_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MARIADB_URL = os.environ.get("FAR_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
APPLICATION = "far-long-poll-scale"
WAITERS = 200


def _served(app: Flask) -> Iterator[str]:
    with serving(app) as base:
        yield f"{base}/async_request/job"


def _get(url: str, token: str, prefer: str | None = None) -> tuple[int, float]:
    headers = {"X-JOB-AUTHORIZATION": token}
    if prefer:
        headers["Prefer"] = prefer
    started = time.monotonic()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    return status, time.monotonic() - started


def _small_pool_app(make_app: AppFactory, url: str, **options: Any) -> Flask:
    app = make_app(
        create_tables=False,
        SQLALCHEMY_DATABASE_URI=url,
        SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 2, "max_overflow": 0, "pool_timeout": 3, **options},
    )
    with app.app_context():
        db = app.extensions["sqlalchemy"]
        db.drop_all()
        db.create_all()
    return app


def _backends() -> int:
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (APPLICATION,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def _run_waiters(app: Flask, url: str, count_backends: bool = False) -> dict[str, Any]:
    """200 long polls and a stream of plain polls on one pending job, then the job ends."""
    with app.app_context():
        job = add_job()
        token, job_id = job.token, job.id
        get_state().db.session.commit()
    waited: list[tuple[int, float]] = []
    plain: list[tuple[int, float]] = []

    def long_poll() -> None:
        status, _ = _get(url, token, "wait=25")
        waited.append((status, time.monotonic()))

    threads = [threading.Thread(target=long_poll) for _ in range(WAITERS)]
    for thread in threads:
        thread.start()
    with app.app_context():
        store = get_state().store()
        deadline = time.monotonic() + 20
        while store.waiters().count < WAITERS:
            assert time.monotonic() < deadline, f"only {store.waiters().count} waiting"
            time.sleep(0.05)
    for _ in range(40):
        plain.append(_get(url, token))
    connections = _backends() if count_backends else None
    with app.app_context():
        store = get_state().store()
        claim = lifecycle.claim(store, job_id, timedelta(minutes=1))
        assert claim is not None
        ended_at = time.monotonic()
        assert lifecycle.finish(
            store, job_id, claim.attempt, Outcome(JobStatus.PROCESSED, 200, "x")
        )
    for thread in threads:
        thread.join(30)
    return {"waited": waited, "plain": plain, "ended_at": ended_at, "connections": connections}


def test_waiters_on_postgresql_hold_no_connection(make_app: AppFactory) -> None:
    """200 waiters on a pool of 2: plain polls answer, every waiter gets 200 when the job ends."""
    app = _small_pool_app(make_app, DATABASE_URL, connect_args={"application_name": APPLICATION})
    for url in _served(app):
        result = _run_waiters(app, url, count_backends=True)
    assert Counter(status for status, _ in result["plain"]) == {202: 40}
    assert max(seconds for _, seconds in result["plain"]) < 2.5  # under the pool timeout
    assert Counter(status for status, _ in result["waited"]) == {200: WAITERS}
    assert max(at for _, at in result["waited"]) - result["ended_at"] < 5
    # The app's pool, the store's pool and one listener: a handful, not one per waiter.
    assert result["connections"] <= 6


def test_waiters_without_listen_share_one_check(make_app: AppFactory) -> None:
    """On MariaDB (no LISTEN) the waiters share one query per interval and all get 200."""
    app = _small_pool_app(make_app, MARIADB_URL)
    for url in _served(app):
        result = _run_waiters(app, url)
    assert Counter(status for status, _ in result["plain"]) == {202: 40}
    assert Counter(status for status, _ in result["waited"]) == {200: WAITERS}
    assert max(at for _, at in result["waited"]) - result["ended_at"] < 5
