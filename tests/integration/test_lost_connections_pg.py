"""Backends terminated under load, with the default clocks: every job still ends at once, once."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from flask import Flask

from flask_async_request import DatabaseUnavailable, Job, JobStatus
from flask_async_request.broker import Message, publish
from flask_async_request.runner import run_job
from tests import workers
from tests.conftest import PG_DATABASE_URL, add_job, current_db, reload_job
from tests.integration.conftest import (
    _environment,
    _load_project,
    _start_worker,
    effects,
    free_port,
)
from tests.test_lost_connections import Faults

pytestmark = pytest.mark.integration

#: How long backends are terminated, and how often.
CHAOS_FOR = 10.0
TERMINATE_EVERY = 0.5
#: Jobs submitted per second meanwhile.
RATE = 25


DATABASE_URL = PG_DATABASE_URL


@pytest.mark.parametrize(("lost", "what"), [(1, "claim"), (2, "finish")])
def test_a_lost_try_that_was_committed_is_found_by_its_own_time(
    pg_app: Flask, monkeypatch: pytest.MonkeyPatch, lost: int, what: str
) -> None:
    """On PostgreSQL's raw statements too: the job runs once and ends processed."""
    job = add_job(args=[what])
    faults = Faults(lambda n: n == lost, after_running=True).install(monkeypatch)
    assert run_job(job.id) is JobStatus.PROCESSED
    assert faults.lost == 1
    stored = reload_job(job.id)
    assert (stored.status, stored.attempts) == (JobStatus.PROCESSED, 1)


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
            session = current_db().session
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
    lines = [line for line in worker.output().splitlines() if "its connection was lost" in line]
    claims = sum("Claiming job" in line for line in lines)
    replies = sum("reply" in line for line in lines)
    print(
        f"lost connections: {len(jobs)} jobs processed, {refused} submissions refused;"
        f" {len(rounds)} rounds terminated {sum(rounds)} backends; the worker tried"
        f" {claims} claims, {replies} replies and {len(lines) - claims - replies} other"
        f" statements again; all ended {recovered:.1f} s after the last round"
    )


#: How long the database is stopped.
OUTAGE = 6.0
#: Jobs whose messages are sent while it is stopped.
QUEUED = 20


class _Relay:
    """A relay to PostgreSQL that stops as its server does: connections cut, connects refused."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.start()

    def start(self) -> None:
        """Accept connections again, on the same port."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Cut every connection, and refuse new ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # Wakes the accept() that waits on it.
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for each in sockets:
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)
            each.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client = listener.accept()[0]
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for each in (source, sink):
                with contextlib.suppress(OSError):
                    each.shutdown(socket.SHUT_RDWR)


def test_jobs_run_as_soon_as_a_stopped_database_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claims refused while it is down are delivered again; none waits for the waiting timeout."""
    parts = urllib.parse.urlsplit(DATABASE_URL)
    relay = _Relay((parts.hostname or "127.0.0.1", parts.port or 5432))
    url = parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{relay.port}").geturl()
    env = _environment(tmp_path, os.environ.get("FAR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
    env.update(FAR_TEST_DATABASE_URL=url, FAR_TEST_PRE_PING="0")
    for key in ("FAR_TEST_DATABASE_URL", "FAR_TEST_PRE_PING"):
        monkeypatch.setenv(key, env[key])
    project = _load_project(env, monkeypatch)
    app = project.app
    with app.app_context():
        project.db.drop_all()
        project.db.create_all()
    worker = _start_worker(env, tmp_path / "worker.log", concurrency=2)
    try:
        with app.app_context():
            # Stored now, sent while the database is down (as the sweeper or a
            # retry would): the worker's idle child claims them then.
            queued = [add_job("tests.workers:Sleep", args=[0.05, str(i)]) for i in range(QUEUED)]
            messages = [Message(job.id, job.uid) for job in queued]
            # One runs when the database stops: its reply is stored once it is back.
            running = Job.create_and_enqueue(workers.Sleep, 1.0, tag="running")
            session = current_db().session
            deadline = time.monotonic() + 30
            while reload_job(running.id).status is not JobStatus.PROCESSING:
                session.rollback()
                assert time.monotonic() < deadline, worker.output()[-5000:]
                time.sleep(0.05)
            session.rollback()

            relay.stop()
            with pytest.raises(DatabaseUnavailable):
                Job.create_and_enqueue(workers.Sleep, 0.2, tag="refused")
            for message in messages:
                publish(message)
            time.sleep(OUTAGE)
            relay.start()
            back = time.monotonic()

            # This process's own pooled connections were cut too.
            project.db.engine.dispose()
            deadline = back + 30
            while True:
                counts = Counter(status for (status,) in session.query(Job.status))
                session.rollback()
                if counts[JobStatus.WAITING] + counts[JobStatus.PROCESSING] == 0:
                    break
                assert time.monotonic() < deadline, f"{counts}\n{worker.output()[-5000:]}"
                time.sleep(0.2)
            recovered = time.monotonic() - back
            jobs = session.query(Job).all()
    finally:
        worker.stop()
        relay.stop()

    assert len(jobs) == QUEUED + 1
    assert {job.status for job in jobs} == {JobStatus.PROCESSED}, Counter(j.status for j in jobs)
    runs = Counter(int(name.split("-")[0]) for name in effects(tmp_path))
    assert all(runs[job.id] == 1 for job in jobs), {j.id: runs[j.id] for j in jobs}
    assert all(job.attempts == 1 for job in jobs)
    log = worker.output()
    redelivered = log.count("Its message comes again")
    assert redelivered > 0, log[-5000:]
    print(
        f"database stopped {OUTAGE:g} s: {len(jobs)} jobs processed, each once;"
        f" {redelivered} claims delivered again; all ended {recovered:.1f} s after it was back"
    )
