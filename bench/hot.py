"""HOT updates of the jobs table under a sustained load, with the indexes before and after.

Submits jobs at a steady rate with ``Job.create_and_enqueue`` for ``--duration``
seconds, run by a real ``celery worker`` (prefork, concurrency 2) on PostgreSQL
and Redis, first on the jobs table as it was with an index on ``(status, id)``
(``before``), then as the model makes it now (``after``), each in a fresh
database. When every job has finished and the worker has stopped, it prints, side
by side: the UPDATEs and the HOT ones (``pg_stat_user_tables``, whose counters
were reset as the load began), how much each index and the table grew, in all and
per job (``pg_relation_size``), and the index blocks read or hit per job
(``pg_statio_user_indexes``).

    .venv/bin/python -m bench.hot                       # 4 minutes each, 110 jobs/s
    .venv/bin/python -m bench.hot --duration 30 --schema after

It needs PostgreSQL on 127.0.0.1:5432 (it recreates the database ``far_bench_hot``)
and Redis on 127.0.0.1:6379 (database 12); ``BENCH_DATABASE_URL`` and
``BENCH_REDIS_URL`` point elsewhere.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault(
    "BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/far_bench_hot"
)
os.environ.setdefault("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")

import sqlalchemy as sa

from bench import settings
from bench.harness import celery_worker, database, reset_broker, wait_for

TABLE = "async_request_jobs"

#: The table as it was with an index on (status, id): what the revision of HOT
#: updates' downgrade leaves, on a table the model has just created.
BEFORE = (
    f"DROP INDEX ix_{TABLE}_unfinished_id",
    f"DROP INDEX ix_{TABLE}_finished_at",
    f"CREATE INDEX ix_{TABLE}_finished_at ON {TABLE} (finished_at)",
    f"CREATE INDEX ix_{TABLE}_status_id ON {TABLE} (status, id)",
    f"ALTER TABLE {TABLE} RESET (fillfactor)",
)

_INDEXES = sa.text(
    "SELECT i.indexrelname, pg_relation_size(i.indexrelid), s.idx_blks_read, s.idx_blks_hit,"
    " pg_get_indexdef(i.indexrelid)"
    " FROM pg_stat_user_indexes i JOIN pg_statio_user_indexes s USING (indexrelid)"
    " WHERE i.relname = :table ORDER BY i.indexrelname"
)
_TABLE = sa.text(
    "SELECT n_tup_ins, n_tup_upd, n_tup_hot_upd, pg_relation_size(relid),"
    " pg_total_relation_size(relid) - pg_indexes_size(relid), n_dead_tup, autovacuum_count"
    " FROM pg_stat_user_tables WHERE relname = :table"
)


def reset_database(schema: str) -> None:
    """A fresh database whose jobs table has the ``before`` or ``after`` indexes."""
    url = sa.make_url(settings.DATABASE_URL)
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {url.database} WITH (FORCE)")
        conn.exec_driver_sql(f"CREATE DATABASE {url.database}")
    admin.dispose()
    from bench.far import app, db
    from flask_async_request.state import get_state

    with app.app_context():
        # The drop cut the connections a phase before left in this process's pools.
        db.engine.dispose()
        get_state().store().dispose()
        db.create_all()
        if schema == "before":
            with db.engine.begin() as conn:
                for statement in BEFORE:
                    conn.exec_driver_sql(statement)


def snapshot() -> dict[str, Any]:
    """The table's counters and sizes, and each index's size and block reads, as stored now."""
    engine = database()
    with engine.connect() as conn:
        # A fresh snapshot of the statistics, not one this transaction already read.
        conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
        inserts, updates, hot, heap, table, dead, autovacuums = conn.execute(
            _TABLE, {"table": TABLE}
        ).one()
        indexes = {
            name: {"bytes": size, "blocks": read + hit, "definition": definition}
            for name, size, read, hit, definition in conn.execute(_INDEXES, {"table": TABLE})
        }
        options = conn.exec_driver_sql(
            f"SELECT reloptions FROM pg_class WHERE relname = '{TABLE}'"
        ).scalar()
    engine.dispose()
    return {
        "inserts": inserts,
        "updates": updates,
        "hot": hot,
        "heap_bytes": heap,
        "table_bytes": table,
        "dead": dead,
        "autovacuums": autovacuums,
        "indexes": indexes,
        "options": options or [],
    }


def unfinished() -> int:
    engine = database()
    with engine.connect() as conn:
        count = conn.exec_driver_sql(
            f"SELECT count(*) FROM {TABLE} WHERE status IN ('waiting', 'processing')"
        ).scalar_one()
    engine.dispose()
    return int(count)


def load(duration: float, rate: float, threads: int) -> tuple[int, float]:
    """Submit jobs at ``rate`` a second for ``duration`` seconds; return the count and seconds.

    ``threads`` submit in turn, each at its share of the rate, so that one slow
    submission does not hold the others back.
    """
    from bench.far import Noop, app
    from flask_async_request import Job

    start = time.monotonic()

    def submit(first: int) -> int:
        submitted = 0
        with app.app_context():
            while (now := time.monotonic() - start) < duration:
                due = (first + submitted * threads) / rate
                if due > now:
                    time.sleep(due - now)
                Job.create_and_enqueue(Noop)
                submitted += 1
        return submitted

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        jobs = sum(pool.map(submit, range(threads)))
    return jobs, time.monotonic() - start


def phase(schema: str, duration: float, rate: float, threads: int, logs: Path) -> dict[str, Any]:
    """Run the load on a table with the ``schema`` indexes; return its figures."""
    print(f"{schema}: {duration:.0f} s at {rate:g} jobs/s", flush=True)
    reset_database(schema)
    reset_broker()
    with celery_worker("far", logs):
        # The worker's first job pays for its imports and pools, outside the figures.
        from bench.far import Noop, app
        from flask_async_request import Job

        with app.app_context():
            Job.create_and_enqueue(Noop)
        wait_for(lambda: unfinished() == 0, "the first job", timeout=120)
        engine = database()
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT pg_stat_reset()")
        engine.dispose()
        start = snapshot()
        jobs, seconds = load(duration, rate, threads)
        wait_for(lambda: unfinished() == 0, "the jobs", timeout=600)
    # The worker has stopped: its connections have sent their statistics as they closed.
    time.sleep(1)
    end = snapshot()
    indexes = {
        name: {
            "definition": after["definition"],
            "bytes_before": start["indexes"][name]["bytes"],
            "bytes_after": after["bytes"],
            "blocks": after["blocks"] - start["indexes"][name]["blocks"],
        }
        for name, after in end["indexes"].items()
    }
    return {
        "schema": schema,
        "jobs": jobs,
        "seconds": seconds,
        "rate": jobs / seconds,
        "updates": end["updates"] - start["updates"],
        "hot": end["hot"] - start["hot"],
        "heap_before": start["heap_bytes"],
        "heap_after": end["heap_bytes"],
        "autovacuums": end["autovacuums"] - start["autovacuums"],
        "options": end["options"],
        "indexes": indexes,
    }


def _mb(size: float) -> str:
    return f"{size / 1e6:,.1f}"


def report(phases: list[dict[str, Any]]) -> str:
    """The figures of each phase side by side, as a reST table."""
    names = sorted({name for p in phases for name in p["indexes"]})
    rows: list[tuple[str, ...]] = [("figure", *(p["schema"] for p in phases))]

    def row(label: str, value: Any) -> None:
        rows.append((label, *(value(p) for p in phases)))

    row("jobs (achieved rate, jobs/s)", lambda p: f"{p['jobs']:,} ({p['rate']:.1f})")
    row("UPDATEs", lambda p: f"{p['updates']:,}")
    row("HOT UPDATEs", lambda p: f"{p['hot']:,}")
    row("HOT share of UPDATEs", lambda p: f"{p['hot'] / max(p['updates'], 1):.1%}")
    row("HOT UPDATEs per job", lambda p: f"{p['hot'] / p['jobs']:.2f}")
    row("table fillfactor", lambda p: ",".join(p["options"]) or "default (100)")
    row("table growth (MB)", lambda p: _mb(p["heap_after"] - p["heap_before"]))
    row("table bytes per job", lambda p: f"{(p['heap_after'] - p['heap_before']) / p['jobs']:.0f}")

    def grown(p: dict[str, Any]) -> int:
        return sum(i["bytes_after"] - i["bytes_before"] for i in p["indexes"].values())

    row("all indexes' growth (MB)", lambda p: _mb(grown(p)))
    row("index bytes per job", lambda p: f"{grown(p) / p['jobs']:.0f}")
    row(
        "index blocks read or hit per job",
        lambda p: f"{sum(i['blocks'] for i in p['indexes'].values()) / p['jobs']:.1f}",
    )
    for name in names:

        def one(p: dict[str, Any], name: str = name) -> str:
            index = p["indexes"].get(name)
            if index is None:
                return ".."
            before, after = index["bytes_before"], index["bytes_after"]
            return f"{_mb(before)} -> {_mb(after)} MB, {(after - before) / p['jobs']:.0f} B/job"

        row(name.removeprefix(f"ix_{TABLE}_").removeprefix(f"{TABLE}_"), one)
    row("autovacuum runs", lambda p: str(p["autovacuums"]))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    rule = "  ".join("=" * w for w in widths)
    lines = [
        rule,
        "  ".join(c.ljust(w) for c, w in zip(rows[0], widths, strict=True)).rstrip(),
        rule,
    ]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows[1:]
    ]
    return "\n".join([*lines, rule])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=240, help="seconds of load per phase")
    parser.add_argument("--rate", type=float, default=110, help="jobs submitted a second")
    parser.add_argument("--threads", type=int, default=4, help="threads submitting the jobs")
    parser.add_argument("--schema", choices=["before", "after", "both"], default="both")
    parser.add_argument("--json", type=Path, help="also write the raw figures there")
    args = parser.parse_args()
    schemas = ["before", "after"] if args.schema == "both" else [args.schema]
    with tempfile.TemporaryDirectory(prefix="bench-hot-") as logs:
        phases = [
            phase(schema, args.duration, args.rate, args.threads, Path(logs)) for schema in schemas
        ]
    for p in phases:
        print(f"{p['schema']}:")
        for name, index in p["indexes"].items():
            print(f"  {name}: {index['definition']}")
    print(report(phases))
    if args.json:
        args.json.write_text(json.dumps(phases, indent=2) + "\n")


if __name__ == "__main__":
    main()
