"""Fairness between owners: owner A queues 2,000 jobs, owner B 20 a second later, same workers.

Run as ``python -m bench.fairness``: for each mode, without a running cap and with
``ASYNC_REQUEST_OWNER_MAX_RUNNING``, it makes a fresh jobs table and an empty Redis
database, queues A's jobs, starts real ``celery worker`` processes (prefork) and,
a second after they answer a ping, submits B's jobs, then waits until every job has
finished. B's
wait is each of its jobs' ``finished_at - created_at``, as the jobs table recorded
them. The celery workers import this module: its app reads the cap from
``BENCH_FAIRNESS_CAP``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from bench.settings import DATABASE_URL, REDIS_URL, SECRET_KEY
from flask_async_request import AsyncRequest, Job, JobStatus, Worker

HERE = Path(__file__).resolve().parent
QUEUE = "bench-fairness"
#: Who submits: the benchmark sets it before each owner's jobs.
OWNER: dict[str, str | None] = {"name": None}

db = SQLAlchemy()
async_request = AsyncRequest()


@async_request.identity_loader
def _owner() -> str | None:
    return OWNER["name"]


class Work(Worker):
    """A job that waits on I/O for a while, as a call to another service does."""

    def execute(self, seconds: float) -> tuple[int, str]:
        time.sleep(seconds)
        return 200, "{}"


def create_app(cap: int | None = None) -> Flask:
    """The app; its running cap is ``cap``, else ``BENCH_FAIRNESS_CAP``'s (the workers')."""
    app = Flask(__name__)
    if cap is None and os.environ.get("BENCH_FAIRNESS_CAP"):
        cap = int(os.environ["BENCH_FAIRNESS_CAP"])
    app.config.update(
        ASYNC_REQUEST_ENCODE_KEY=SECRET_KEY,
        ASYNC_REQUEST_DECODE_KEY=SECRET_KEY,
        SQLALCHEMY_DATABASE_URI=DATABASE_URL,
        CELERY={"broker_url": REDIS_URL, "worker_prefetch_multiplier": 1},
        ASYNC_REQUEST_QUEUE=QUEUE,
        ASYNC_REQUEST_CLEAN_JOBS=False,
        ASYNC_REQUEST_OWNER_MAX_RUNNING=cap,
    )
    db.init_app(app)
    async_request.init_app(app)
    return app


app = create_app()
celery_app = app.extensions["celery"]


def _workers(processes: int, concurrency: int, cap: int | None, logs: Path) -> list[Any]:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])),
    )
    env.pop("BENCH_FAIRNESS_CAP", None)
    if cap is not None:
        env["BENCH_FAIRNESS_CAP"] = str(cap)
    started = []
    for n in range(processes):
        log = logs / f"fairness-worker-{cap}-{n}.log"
        command = [
            sys.executable, "-m", "celery", "-A", "bench.fairness:celery_app", "worker",
            "--pool", "prefork", "--concurrency", str(concurrency), "--queues", QUEUE,
            "--loglevel", "WARNING", "--without-mingle", "--without-gossip", "--without-heartbeat",
            "--hostname", f"fairness-{uuid.uuid4().hex[:6]}@%h",
        ]  # fmt: skip
        proc = subprocess.Popen(
            command, cwd=HERE.parent, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
        )
        started.append((proc, log))
    deadline = time.monotonic() + 60
    # Logging at WARNING, a worker says nothing once ready: it is asked.
    procs = [proc for proc, _ in started]
    while len(celery_app.control.ping(timeout=0.5)) < processes:
        for proc, log in started:
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(procs)
                raise RuntimeError(f"celery worker did not start:\n{log.read_text()}")
    return procs


def _stop(procs: list[Any]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _seconds(job: Job) -> float:
    assert job.finished_at is not None
    return (job.finished_at - job.created_at).total_seconds()


def run_mode(cap: int | None, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """One run: A's jobs, B's a second later; B's waits and how long it all took."""
    # The web side holds a backlog back and the workers hold the cap: both have it.
    app = create_app(cap)
    with app.app_context():
        db.drop_all()
        db.create_all()
    redis.Redis.from_url(REDIS_URL).flushdb()
    with app.app_context():
        # Queued before the workers start, so that B finds A's whole backlog ahead of it
        # (submitting 2,000 jobs takes longer than the workers take to run them).
        OWNER["name"] = "A"
        for _ in range(args.a_jobs):
            Job.create_and_enqueue(Work, args.seconds)
    procs = _workers(args.processes, args.concurrency, cap, logs)
    try:
        with app.app_context():
            time.sleep(1.0)
            OWNER["name"] = "B"
            for _ in range(args.b_jobs):
                Job.create_and_enqueue(Work, args.seconds)
            OWNER["name"] = None
            deadline = time.monotonic() + 600
            while True:
                left = (
                    db.session.query(Job)
                    .filter(Job.status.in_([JobStatus.WAITING, JobStatus.PROCESSING]))
                    .count()
                )
                db.session.rollback()
                if not left or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            jobs = db.session.query(Job).all()
            b = sorted(_seconds(job) for job in jobs if job.owner == "B")
            a_ends = [job.finished_at for job in jobs if job.owner == "A" and job.finished_at]
            a_starts = [job.started_at for job in jobs if job.owner == "A" and job.started_at]
            statuses = sorted({job.status.value for job in jobs})
            attempts = max(job.attempts for job in jobs)
    finally:
        _stop(procs)
    return {
        "cap": cap,
        "statuses": statuses,
        "most_attempts": attempts,
        "a_done_s": round((max(a_ends) - min(a_starts)).total_seconds(), 2),
        "b_median_s": round(statistics.median(b), 3),
        "b_max_s": round(max(b), 3),
        "b_within_2s": sum(1 for wait in b if wait <= 2.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a-jobs", type=int, default=2000)
    parser.add_argument("--b-jobs", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=0.05, help="each job's duration")
    parser.add_argument("--processes", type=int, default=2, help="celery worker processes")
    parser.add_argument("--concurrency", type=int, default=4, help="each one's pool size")
    parser.add_argument("--cap", type=int, default=2, help="ASYNC_REQUEST_OWNER_MAX_RUNNING")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the results there")
    parser.add_argument("--logs", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    results = []
    for run in range(args.runs):
        for cap in (None, args.cap) if run % 2 == 0 else (args.cap, None):
            result = run_mode(cap, args, args.logs)
            print(json.dumps(result), flush=True)
            results.append(result)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "python": platform.python_version(),
                    "options": {k: v for k, v in vars(args).items() if k not in ("json", "logs")},
                    "runs": results,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    # As bench.fairness, the module the workers import, so the jobs name its Work class.
    from bench.fairness import main as run_benchmark

    run_benchmark()
