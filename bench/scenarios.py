"""The benchmark's scenarios: each figure it measures, on servers the harness has started.

Each function measures one scenario for the systems that take part in it and returns its
raw figures, which ``bench.run`` keeps in ``results.json`` and ``bench.report`` reads.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis
import sqlalchemy as sa

from bench import settings
from bench.harness import (
    HEADER,
    HERE,
    MODULES,
    PORTS,
    Turns,
    bearer,
    celery_worker,
    database,
    env,
    reset_broker,
    rotated,
    wait_for,
    warm_up,
    worker_rss,
    wrk,
)

#: Seconds of ``Prefer: wait=N`` in the long-polling end-to-end figure.
LONG_WAIT = 10
#: End-to-end jobs each system runs before the counted ones.
WARM_UP_JOBS = 10

BASE = {name: f"http://127.0.0.1:{port}" for name, port in PORTS.items()}
FAR_POLL = f"{BASE['far']}/async_request/job"


# --- flask-async-request's and the peers' jobs -----------------------------------------------


def far_truncate() -> None:
    from bench.far import app, db

    with app.app_context():
        db.session.execute(sa.text("TRUNCATE async_request_jobs RESTART IDENTITY"))
        db.session.commit()


def far_pending_token() -> str:
    from bench.far import app, db
    from flask_async_request import Job, JobStatus

    with app.app_context():
        params: dict[str, Any] = {"args": [], "kwargs": {}}
        job = Job(worker="bench.far:Noop", params=params, status=JobStatus.WAITING)
        db.session.add(job)
        db.session.commit()
        return job.token


def far_submit_and_wait(client: httpx.Client, wait: int | None = None) -> str:
    """Submit a job and poll until it is done: every 2 ms, or with ``Prefer: wait=N``."""
    token = str(client.post(f"http://127.0.0.1:{PORTS['far']}/submit").json()["token"])
    url = f"http://127.0.0.1:{PORTS['far']}/async_request/job"
    headers = {HEADER: f"Bearer {token}"}
    if wait:
        headers["Prefer"] = f"wait={wait}"
    while client.get(url, headers=headers).status_code != 200:
        if not wait:
            time.sleep(0.002)
    return token


def peer_submit_and_wait(client: httpx.Client, name: str = "peer") -> str:
    """Submit a task to peer or peer-db and poll its result every 2 ms until it is ready."""
    base = f"http://127.0.0.1:{PORTS[name]}"
    result_id = str(client.post(f"{base}/submit").json()["result_id"])
    while not client.get(f"{base}/result/{result_id}").json()["ready"]:
        time.sleep(0.002)
    return result_id


# --- HTTP: polls and submissions -------------------------------------------------------------


def poll_pending(turns: Turns, load: dict[str, Any]) -> dict[str, Any]:
    """wrk's figures polling a job that is not done; every web process is warmed up first.

    The peers are asked about an id no one submitted (Celery answers ``PENDING``),
    flask-async-request about a stored waiting job.
    """
    far_pending = far_pending_token()
    pending = {
        "bare": (f"{BASE['bare']}/poll", None),
        "peer": (f"{BASE['peer']}/result/{uuid.uuid4()}", None),
        "peer-db": (f"{BASE['peer-db']}/result/{uuid.uuid4()}", None),
        "far": (FAR_POLL, bearer(far_pending)),
    }
    for url, header in pending.values():
        warm_up(url, header)
    return turns(lambda n: wrk(pending[n][0], header=pending[n][1], **load))


def submissions(turns: Turns, load: dict[str, Any]) -> dict[str, Any]:
    """wrk's figures submitting jobs with no worker running: the publishing alone."""
    figures = turns(lambda n: wrk(f"{BASE[n]}/submit", post=True, **load))
    # No worker is to run what was submitted here.
    reset_broker()
    far_truncate()
    return figures


def poll_finished(turns: Turns, load: dict[str, Any], client: httpx.Client) -> dict[str, Any]:
    """wrk's figures polling a finished job, which the systems' running workers finish."""
    finished = {
        "bare": (f"{BASE['bare']}/poll", None),
        "peer": (f"{BASE['peer']}/result/{peer_submit_and_wait(client, 'peer')}", None),
        "peer-db": (
            f"{BASE['peer-db']}/result/{peer_submit_and_wait(client, 'peer-db')}",
            None,
        ),
        "far": (FAR_POLL, bearer(far_submit_and_wait(client))),
    }
    return turns(lambda n: wrk(finished[n][0], header=finished[n][1], **load))


# --- end to end ------------------------------------------------------------------------------


def end_to_end(samples: int, run: int) -> dict[str, dict[str, float]]:
    """Median and p95 of ``samples`` jobs' round trips, polling and long polling, in ms."""
    ways: dict[str, Callable[[httpx.Client], str]] = {
        "peer": lambda client: peer_submit_and_wait(client, "peer"),
        "peer-db": lambda client: peer_submit_and_wait(client, "peer-db"),
        "far": far_submit_and_wait,
        "far-wait": lambda client: far_submit_and_wait(client, LONG_WAIT),
    }
    figures = {}
    with httpx.Client(timeout=LONG_WAIT + 20) as client:
        for name in rotated(tuple(ways), run):
            submit_and_wait = ways[name]
            for _ in range(WARM_UP_JOBS):
                submit_and_wait(client)
            times = []
            for _ in range(samples):
                started = time.perf_counter()
                submit_and_wait(client)
                times.append((time.perf_counter() - started) * 1000)
            times.sort()
            figures[name] = {
                "median_ms": statistics.median(times),
                "p95_ms": times[max(int(len(times) * 0.95) - 1, 0)],
            }
    return {name: figures[name] for name in ways}


# --- worker throughput -----------------------------------------------------------------------


def throughput(turns: Turns, count: int, logs: Path) -> dict[str, tuple[float, dict[str, Any]]]:
    """Each worker system's burst of ``count`` jobs: its jobs per second and its peak RSS."""
    return turns(
        lambda n: far_burst(count, logs) if n == "far" else peer_burst(n, count, logs),
        tuple(MODULES),
    )


def peer_burst(name: str, count: int, logs: Path) -> tuple[float, dict[str, Any]]:
    """Queue ``count`` tasks for peer or peer-db, then let a worker run them all.

    :returns: jobs per second between the first and the last ``date_done``, and the
        worker's peak RSS.
    """
    module = MODULES[name]
    celery_app = importlib.import_module(f"bench.{module}").celery_app
    task = celery_app.tasks[f"bench.{module}.noop"]
    reset_broker()
    engine = database()
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM celery_taskmeta")
    for _ in range(count):
        task.delay()
    client = redis.Redis.from_url(settings.REDIS_URL)

    def finished() -> int:
        if name == "peer":
            return len(client.keys("celery-task-meta-*"))
        with engine.connect() as conn:
            query = "SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'"
            return int(conn.exec_driver_sql(query).scalar_one())

    with celery_worker(name, logs) as worker:
        wait_for(lambda: finished() >= count, f"the {name} burst")
        rss = worker_rss(worker)
    if name == "peer":
        done = [
            dt.datetime.fromisoformat(json.loads(client.get(key))["date_done"])  # type: ignore[arg-type]
            for key in client.keys("celery-task-meta-*")
        ]
        first, last = min(done), max(done)
    else:
        with engine.connect() as conn:
            query = "SELECT min(date_done), max(date_done) FROM celery_taskmeta"
            first, last = conn.exec_driver_sql(query).one()
    engine.dispose()
    return (count - 1) / (last - first).total_seconds(), rss


def far_burst(count: int, logs: Path) -> tuple[float, dict[str, Any]]:
    """Queue ``count`` jobs, then let a worker run them all; as :func:`peer_burst`."""
    from bench.far import Noop, app, db
    from flask_async_request import Job

    reset_broker()
    far_truncate()
    with app.app_context():
        for _ in range(count):
            Job.create_and_enqueue(Noop)
    with celery_worker("far", logs) as worker, app.app_context():
        query = sa.text("SELECT count(*) FROM async_request_jobs WHERE status = 'processed'")

        def finished() -> int:
            processed = int(db.session.execute(query).scalar_one())
            db.session.commit()
            return processed

        wait_for(lambda: finished() >= count, "the far burst")
        rss = worker_rss(worker)
        first, last = db.session.execute(
            sa.text("SELECT min(finished_at), max(finished_at) FROM async_request_jobs")
        ).one()
    return (count - 1) / (last - first).total_seconds(), rss


# --- table size and purge --------------------------------------------------------------------


def poll_by_rows(rows: int, load: dict[str, Any]) -> dict[str, Any]:
    """wrk's figures polling a finished job in a table of 10,000 rows, then of ``rows``."""
    far_truncate()
    figures = {}
    for total in (10_000, rows):
        token = far_fill(total)
        figures[str(total)] = wrk(FAR_POLL, header=bearer(token), **load)
    return figures


def far_fill(total: int) -> str:
    """Grow the table to ``total`` finished rows two days old; return a token for a middle row."""
    from bench.far import app, db
    from flask_async_request import Job
    from flask_async_request.values import utcnow

    with app.app_context():
        have = db.session.execute(sa.text("SELECT count(*) FROM async_request_jobs")).scalar_one()
        old = utcnow() - dt.timedelta(days=2)
        db.session.execute(
            sa.text(
                "INSERT INTO async_request_jobs (uid, worker, params, status, status_code,"
                " response, attempts, created_at, updated_at, due_at, started_at, finished_at)"
                " SELECT md5(random()::text || i::text), 'bench.far:Noop',"
                " '{\"args\": [], \"kwargs\": {}}', 'processed', 200, '{\"ok\": true}', 1,"
                " :old, :old, :old, :old, :old FROM generate_series(1, :n) AS i"
            ),
            {"old": old, "n": total - have},
        )
        db.session.commit()
        db.session.execute(sa.text("ANALYZE async_request_jobs"))
        db.session.commit()
        job = db.session.get(Job, total // 2)
        assert job is not None
        return job.token


def purge() -> dict[str, float]:
    """The purge of the filled table in a fresh process: its time and its peak RSS."""
    command = [sys.executable, str(HERE / "purge.py"), "--child"]
    command += ["--database-url", settings.DATABASE_URL]
    child = subprocess.run(command, capture_output=True, text=True, check=True, env=env())
    figures: dict[str, float] = json.loads(child.stdout.strip().splitlines()[-1])
    return figures
