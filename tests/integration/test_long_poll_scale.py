"""Long polls cost the database nothing while they wait: many waiters on a small pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask

from flask_async_request import lifecycle
from flask_async_request.models import JobStatus
from flask_async_request.outcomes import Outcome
from flask_async_request.store import JobStore
from tests.conftest import AppFactory, Internals, add_job, current_db, serving
from tests.integration.conftest import (
    ROOT,
    _environment,
    _load_project,
    free_port,
    wait_for_port,
)

pytestmark = pytest.mark.integration

DATABASE_URL = os.environ.get(
    "FAR_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MARIADB_URL = os.environ.get("FAR_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
APPLICATION = "far-long-poll-scale"
GEVENT_APPLICATION = "far-long-poll-gevent"
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


def _backends(application: str = APPLICATION) -> int:
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (application,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def _run_waiters(
    app: Flask, store_of: Callable[[Flask], JobStore], url: str, count_backends: bool = False
) -> dict[str, Any]:
    """200 long polls and a stream of plain polls on one pending job, then the job ends."""
    with app.app_context():
        job = add_job()
        token, job_id = job.token, job.id
        current_db().session.commit()
    waited: list[tuple[int, float]] = []
    plain: list[tuple[int, float]] = []

    def long_poll() -> None:
        status, _ = _get(url, token, "wait=25")
        waited.append((status, time.monotonic()))

    threads = [threading.Thread(target=long_poll) for _ in range(WAITERS)]
    for thread in threads:
        thread.start()
    with app.app_context():
        store = store_of(app)
        deadline = time.monotonic() + 20
        while store.waiters().count < WAITERS:
            assert time.monotonic() < deadline, f"only {store.waiters().count} waiting"
            time.sleep(0.05)
    for _ in range(40):
        plain.append(_get(url, token))
    connections = _backends() if count_backends else None
    with app.app_context():
        store = store_of(app)
        claim = lifecycle.claim(store, job_id, timedelta(minutes=1))
        assert claim is not None
        ended_at = time.monotonic()
        assert lifecycle.finish(
            store, job_id, claim.attempt, Outcome(JobStatus.PROCESSED, 200, "x")
        )
    for thread in threads:
        thread.join(30)
    return {"waited": waited, "plain": plain, "ended_at": ended_at, "connections": connections}


def test_waiters_on_postgresql_hold_no_connection(
    make_app: AppFactory, internals: Internals
) -> None:
    """200 waiters on a pool of 2: plain polls answer, every waiter gets 200 when the job ends."""
    app = _small_pool_app(make_app, DATABASE_URL, connect_args={"application_name": APPLICATION})
    for url in _served(app):
        result = _run_waiters(app, internals.job_store, url, count_backends=True)
    assert Counter(status for status, _ in result["plain"]) == {202: 40}
    assert max(seconds for _, seconds in result["plain"]) < 2.5  # under the pool timeout
    assert Counter(status for status, _ in result["waited"]) == {200: WAITERS}
    assert max(at for _, at in result["waited"]) - result["ended_at"] < 5
    # The app's pool, the store's pool and one listener: a handful, not one per waiter.
    assert result["connections"] <= 6


def test_waiters_without_listen_share_one_check(make_app: AppFactory, internals: Internals) -> None:
    """On MariaDB (no LISTEN) the waiters share one query per interval and all get 200."""
    app = _small_pool_app(make_app, MARIADB_URL)
    for url in _served(app):
        result = _run_waiters(app, internals.job_store, url)
    assert Counter(status for status, _ in result["plain"]) == {202: 40}
    assert Counter(status for status, _ in result["waited"]) == {200: WAITERS}
    assert max(at for _, at in result["waited"]) - result["ended_at"] < 5


def test_waiters_under_gevent_gunicorn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, internals: Internals
) -> None:
    """Under ``gunicorn -k gevent``, 300 waiters in one process hold no connection each.

    The listener, the waiters' events and the pooled reads all run on greenlets
    there (gevent patches threading and sockets, and psycopg waits through the
    patched selectors): every waiter gets the stored reply when the job ends.
    """
    # libpq names every connection of the server's process by PGAPPNAME.
    env = {**_environment(tmp_path, "redis://127.0.0.1:6379/15"), "PGAPPNAME": GEVENT_APPLICATION}
    project = _load_project(env, monkeypatch)
    with project.app.app_context():
        project.db.drop_all()
        project.db.create_all()
        job = add_job()
        token, job_id = job.token, job.id
        project.db.session.commit()
    port = free_port()
    log = tmp_path / "gunicorn.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "1",
         "--worker-connections", "1000", "-b", f"127.0.0.1:{port}",
         "tests.integration.project:app"],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port(port, log)
        url = f"http://127.0.0.1:{port}/async_request/job"
        waited: list[tuple[int, bytes]] = []

        def long_poll() -> None:
            request = urllib.request.Request(
                url, headers={"X-JOB-AUTHORIZATION": token, "Prefer": "wait=25"}
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as answer:
                    waited.append((answer.status, answer.read()))
            except urllib.error.HTTPError as e:
                waited.append((e.code, e.read()))

        threads = [threading.Thread(target=long_poll) for _ in range(300)]
        for thread in threads:
            thread.start()
        time.sleep(3)  # the polls are held by now: each answers only at the end
        assert waited == []
        plain = [_get(url, token)[0] for _ in range(20)]
        connections = _backends(GEVENT_APPLICATION)
        with project.app.app_context():
            store = internals.job_store(project.app)
            claim = lifecycle.claim(store, job_id, timedelta(minutes=1))
            assert claim is not None
            lifecycle.finish(store, job_id, claim.attempt, Outcome(JobStatus.PROCESSED, 200, "x"))
            store.dispose()
        for thread in threads:
            thread.join(30)
    finally:
        server.terminate()
        server.wait(20)
    assert plain == [202] * 20
    assert Counter(status for status, _ in waited) == {200: 300}
    assert {json.loads(body)["response"]["body"] for _, body in waited} == {"x"}
    # At most the app's pool and the store's pool (5 each, the default) and one
    # listener: the 300 first reads share the pool, and the waits hold nothing.
    assert connections <= 11, log.read_text()
