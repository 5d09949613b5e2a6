"""Fill the jobs table with finished jobs, then purge them; print the time and the peak memory.

    python bench/purge.py --rows 1000000 --database-url postgresql+psycopg://postgres@127.0.0.1/test

The rows are written with one INSERT ... SELECT on PostgreSQL (generate_series) and in
chunks elsewhere. The purge runs in a fresh child process, so its peak RSS is the purge's own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def make_app(url: str):  # type: ignore[no-untyped-def]
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from flask_async_request import AsyncRequest

    app = Flask("bench")
    app.config.update(
        SECRET_KEY="bench-secret-key-long-enough-for-hmac-sha256-signatures-here",
        SQLALCHEMY_DATABASE_URI=url,
        CELERY={"task_always_eager": True},
    )
    db = SQLAlchemy(app)
    AsyncRequest(app)
    return app, db


def fill(url: str, rows: int) -> float:
    """Recreate the table with ``rows`` finished jobs two days old; return the seconds taken."""
    import sqlalchemy as sa

    from flask_async_request.models import Job, JobStatus
    from flask_async_request.values import utcnow

    app, db = make_app(url)
    started = time.perf_counter()
    with app.app_context():
        db.drop_all()
        db.create_all()
        old = utcnow() - timedelta(days=2)
        if db.engine.dialect.name == "postgresql":
            db.session.execute(
                sa.text(
                    "INSERT INTO async_request_jobs (uid, worker, params, status, status_code,"
                    " response, attempts, created_at, updated_at, due_at, started_at,"
                    " finished_at)"
                    " SELECT md5(i::text), 'bench:Worker', '{\"args\": [], \"kwargs\": {}}',"
                    " :status, 200, '{\"ok\": true}', 1, :old, :old, :old, :old, :old"
                    " FROM generate_series(1, :rows) AS i"
                ),
                {"status": JobStatus.PROCESSED.value, "old": old, "rows": rows},
            )
        else:
            chunk = 10_000
            for start in range(0, rows, chunk):
                db.session.execute(
                    sa.insert(Job),
                    [
                        {
                            "uid": f"{i:032x}",
                            "worker": "bench:Worker",
                            "params": {"args": [], "kwargs": {}},
                            "status": JobStatus.PROCESSED,
                            "status_code": 200,
                            "response": '{"ok": true}',
                            "attempts": 1,
                            "created_at": old,
                            "updated_at": old,
                            "started_at": old,
                            "finished_at": old,
                        }
                        for i in range(start, min(start + chunk, rows))
                    ],
                )
        db.session.commit()
        if db.engine.dialect.name == "postgresql":
            db.session.execute(sa.text("ANALYZE async_request_jobs"))
            db.session.commit()
    return time.perf_counter() - started


def purge_in_this_process(url: str, batch_size: int) -> dict[str, float]:
    from flask_async_request.maintenance import purge_jobs

    app, _ = make_app(url)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with app.app_context():
        started = time.perf_counter()
        deleted = purge_jobs(timedelta(hours=24), batch_size=batch_size)
        seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "deleted": deleted,
        "seconds": seconds,
        "peak_rss_mb": peak / 1024,
        "purge_rss_growth_mb": (peak - base_rss) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    from flask_async_request.maintenance import PURGE_BATCH_SIZE

    batch_size = args.batch_size or PURGE_BATCH_SIZE
    if args.child:
        print(json.dumps(purge_in_this_process(args.database_url, batch_size)))
        return

    fill_seconds = fill(args.database_url, args.rows)
    print(f"filled {args.rows:,} finished jobs in {fill_seconds:.1f} s")
    child = subprocess.run(
        [sys.executable, __file__, "--child", "--database-url", args.database_url,
         "--batch-size", str(batch_size)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(child.stdout.strip().splitlines()[-1])
    rate = result["deleted"] / result["seconds"] if result["seconds"] else float("inf")
    print(
        f"purged {int(result['deleted']):,} rows in {result['seconds']:.1f} s"
        f" ({rate:,.0f} rows/s, batch size {batch_size})"
    )
    print(
        f"peak RSS of the purging process: {result['peak_rss_mb']:.0f} MB"
        f" (growth during the purge: {result['purge_rss_growth_mb']:.1f} MB)"
    )
    met = result["seconds"] < 60 and result["peak_rss_mb"] < 200
    print(f"target: under 60 s and under 200 MB peak -> {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
