"""Submissions and polls in process, with Flask's test client: this library against its peer.

No HTTP server and no load generator share the two cores here, so the figures
show the code paths themselves. Each round times ``--ops`` requests per system,
the systems alternating round by round; the medians of the rounds and their
ratio are printed. ``--profile`` prints cProfile's top functions of this
library's submission instead.

    .venv/bin/python -m bench.inprocess --rounds 7 --ops 500
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg
import redis

from bench.settings import DATABASE_URL, REDIS_URL

DATABASE_NAME = DATABASE_URL.rsplit("/", 1)[-1]


def _reset() -> None:
    """A fresh benchmark database and empty queues."""
    name = DATABASE_NAME
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    redis.Redis.from_url(REDIS_URL).flushdb()


def _timer(call: Callable[[], Any], ops: int) -> float:
    """Microseconds per call, over ``ops`` calls."""
    started = time.perf_counter()
    for _ in range(ops):
        call()
    return (time.perf_counter() - started) / ops * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--ops", type=int, default=500)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sort", default="cumulative", help="cProfile sort key with --profile")
    args = parser.parse_args()
    if not DATABASE_NAME.startswith("far_"):
        sys.exit("Error: BENCH_DATABASE_URL must name a far_* database, which is reset.")
    _reset()
    from bench import far, peer

    with far.app.app_context():
        far.db.create_all()
    far_client, peer_client = far.app.test_client(), peer.app.test_client()
    with far.app.app_context():
        from flask_async_request import Job

        started = far_client.post("/submit").get_json()
        assert isinstance(started, dict)
        pending = started["token"]
        finished_job = Job.create_and_enqueue(far.Noop)
        far.db.session.execute(
            far.db.text("UPDATE async_request_jobs SET status='processed', status_code=200,"
                        " response='{}' WHERE id = :id"),
            {"id": finished_job.id},
        )  # fmt: skip
        far.db.session.commit()
        finished = finished_job.token
    header = "X-JOB-AUTHORIZATION"
    cases: dict[str, Callable[[], Any]] = {
        "submit: flask-async-request": lambda: far_client.post("/submit"),
        "submit: Flask + Celery": lambda: peer_client.post("/submit"),
        "poll pending: flask-async-request": lambda: far_client.get(
            "/async_request/job", headers={header: pending}
        ),
        "poll finished: flask-async-request": lambda: far_client.get(
            "/async_request/job", headers={header: finished}
        ),
    }
    for call in cases.values():
        call()  # warm up: connections, caches
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        _timer(cases["submit: flask-async-request"], args.ops)
        profile.disable()
        pstats.Stats(profile).sort_stats(args.sort).print_stats(35)
        return
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, call in cases.items():
            times[name].append(_timer(call, args.ops))
    for name, values in times.items():
        print(
            f"{name:40} median {statistics.median(values):8.0f} us"
            f"  (min {min(values):.0f}, max {max(values):.0f}, {args.rounds} rounds)"
        )
    ours = statistics.median(times["submit: flask-async-request"])
    theirs = statistics.median(times["submit: Flask + Celery"])
    print(f"submissions: {theirs / ours:.2f}x the peer's rate")


if __name__ == "__main__":
    main()
