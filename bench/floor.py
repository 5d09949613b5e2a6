"""The physical budget: what one round trip to each service costs on this machine.

Times, in process and with nothing else of the library around them, the
statements a submission, a poll and a worker's job are made of: a durable
autocommitted INSERT (it waits for PostgreSQL's WAL flush), the same INSERT
with ``synchronous_commit`` off for its transaction, an indexed SELECT by
primary key, and a Redis ``LPUSH`` of a message-sized value. Medians of
``--rounds`` rounds of ``--ops`` calls each.

    .venv/bin/python -m bench.floor
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from typing import Any

import psycopg
import redis

from bench.inprocess import DATABASE_NAME, _timer
from bench.settings import REDIS_URL

_KEY = "bench-floor"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", type=int, default=500)
    args = parser.parse_args()
    pg = psycopg.connect(f"host=127.0.0.1 user=postgres dbname={DATABASE_NAME}", autocommit=True)
    pg.execute("DROP TABLE IF EXISTS bench_floor")
    pg.execute("CREATE TABLE bench_floor (id bigserial PRIMARY KEY, v text)")
    row = pg.execute("INSERT INTO bench_floor (v) VALUES ('x') RETURNING id").fetchone()
    assert row is not None
    broker = redis.Redis.from_url(REDIS_URL)
    value = "x" * 600
    cases: dict[str, Callable[[], Any]] = {
        "INSERT, durable": lambda: pg.execute(
            "INSERT INTO bench_floor (v) VALUES (%s) RETURNING id", (value,)
        ).fetchone(),
        "INSERT, synchronous_commit off": lambda: pg.execute(
            "INSERT INTO bench_floor (v) SELECT %s"
            " WHERE set_config('synchronous_commit', 'off', true) IS NOT NULL RETURNING id",
            (value,),
        ).fetchone(),
        "SELECT by primary key": lambda: pg.execute(
            "SELECT v FROM bench_floor WHERE id = %s", (row[0],)
        ).fetchone(),
        "Redis LPUSH": lambda: broker.lpush(_KEY, value),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for _ in range(args.rounds):
            for name, call in cases.items():
                times[name].append(_timer(call, args.ops))
    finally:
        pg.execute("DROP TABLE bench_floor")
        broker.delete(_KEY)
    for name, values in times.items():
        print(
            f"{name:32} median {statistics.median(values):6.0f} us"
            f"  (min {min(values):.0f}, max {max(values):.0f}, {args.rounds} rounds)"
        )


if __name__ == "__main__":
    main()
