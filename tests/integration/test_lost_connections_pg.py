"""Backends terminated under load, with the default clocks: every job still ends at once, once."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from flask_async_request import DatabaseUnavailable, Job, JobStatus
from flask_async_request.state import get_state
from tests import workers
from tests.integration.conftest import _environment, _load_project, _start_worker, effects

pytestmark = pytest.mark.integration

#: How long backends are terminated, and how often.
CHAOS_FOR = 10.0
TERMINATE_EVERY = 0.5
#: Jobs submitted per second meanwhile.
RATE = 25


def _terminator(database: str, stop: threading.Event, rounds: list[int]) -> None:
    """Terminate every backend of ``database`` (this test's only) each TERMINATE_EVERY s."""
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
        while not stop.wait(TERMINATE_EVERY):
            killed = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            ).fetchall()
            rounds.append(len(killed))


def test_jobs_end_at_once_when_backends_are_terminated_under_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No job waits for a timeout, is failed as lost, or runs twice: claims and replies retry."""
    env = _environment(tmp_path, os.environ.get("FAR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
    env["FAR_TEST_PRE_PING"] = "0"
    monkeypatch.setenv("FAR_TEST_PRE_PING", "0")
    project = _load_project(env, monkeypatch)
    app = project.app
    database = sa.make_url(app.config["SQLALCHEMY_DATABASE_URI"]).database
    with app.app_context():
        project.db.drop_all()
        project.db.create_all()
    worker = _start_worker(env, tmp_path / "worker.log", concurrency=2)
    stop = threading.Event()
    rounds: list[int] = []
    terminator = threading.Thread(target=_terminator, args=(database, stop, rounds))
    refused = 0
    try:
        terminator.start()
        started = time.monotonic()
        with app.app_context():
            submitted = 0
            while (elapsed := time.monotonic() - started) < CHAOS_FOR:
                if submitted < elapsed * RATE:
                    submitted += 1
                    try:
                        Job.create_and_enqueue(workers.Sleep, 0.01, tag=str(submitted))
                    except DatabaseUnavailable:
                        # What a client gets as 503 with Retry-After: nothing stored.
                        refused += 1
                else:
                    time.sleep(0.005)
        stop.set()
        terminator.join()
        chaos_ended = time.monotonic()

        # With the default lease and waiting timeout (60 s, 5 min) only a retry
        # where the work is ends every job within seconds.
        with app.app_context():
            # This process's own pooled connections were cut too.
            project.db.engine.dispose()
            session = get_state().db.session
            deadline = chaos_ended + 20
            while True:
                counts = Counter(status for (status,) in session.query(Job.status))
                session.rollback()
                if counts[JobStatus.WAITING] + counts[JobStatus.PROCESSING] == 0:
                    break
                assert time.monotonic() < deadline, f"{counts}\n{worker.output()[-5000:]}"
                time.sleep(0.2)
            recovered = time.monotonic() - chaos_ended
            jobs = session.query(Job).all()
    finally:
        stop.set()
        with contextlib.suppress(RuntimeError):
            terminator.join()
        worker.stop()

    assert sum(rounds) > 0, "no backend was terminated"
    assert {job.status for job in jobs} == {JobStatus.PROCESSED}, Counter(j.status for j in jobs)
    runs = Counter(int(name.split("-")[0]) for name in effects(tmp_path))
    assert all(runs[job.id] == 1 for job in jobs), {j.id: runs[j.id] for j in jobs}
    assert all(job.attempts == 1 for job in jobs)
    log = worker.output()
    retried = log.count("its connection was lost")
    print(
        f"lost connections: {len(jobs)} jobs processed, {refused} submissions refused;"
        f" {len(rounds)} rounds terminated {sum(rounds)} backends; the worker tried"
        f" {retried} statements again; all ended {recovered:.1f} s after the last round"
    )
