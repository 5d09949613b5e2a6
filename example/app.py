"""An example app: a prime-number report computed by a worker, with a browser page.

The page starts a report, shows its progress as the worker reports it, lets you
cancel it, and shows the result. Run it on the embedded default (SQLite, and a
worker thread in the web process)::

    flask --app example.app run

or against real services, with worker processes beside it::

    export DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1/test
    export CELERY_BROKER_URL=redis://127.0.0.1:6379/0
    flask --app example.app async-request worker --concurrency 2 &
    flask --app example.app run
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from flask import Flask, render_template, request
from flask_sqlalchemy import SQLAlchemy

from flask_async_request import AsyncRequest, EnqueueError, Job, Worker, accepted

db = SQLAlchemy()
async_request = AsyncRequest()

MAX_LIMIT = 500_000_000
SEGMENT = 1_000_000


class PrimeReport(Worker):
    """Counts the primes and twin primes below ``limit`` with a segmented sieve."""

    def execute(self, limit: int) -> tuple[str, str]:
        started = time.perf_counter()
        root = math.isqrt(limit - 1) + 1
        base = bytearray([1]) * root
        base[0:2] = b"\x00\x00"
        for n in range(2, math.isqrt(root - 1) + 1):
            if base[n]:
                base[n * n :: n] = bytes(len(range(n * n, root, n)))
        small = [n for n in range(2, root) if base[n]]

        primes = twins = 0
        largest = previous = None
        for low in range(0, limit, SEGMENT):
            high = min(low + SEGMENT, limit)
            segment = bytearray([1]) * (high - low)
            for p in small:
                start = max(p * p, (low + p - 1) // p * p)
                if start < high:
                    segment[start - low :: p] = bytes(len(range(start, high, p)))
            for n in range(max(low, 0), min(high, 2)):
                segment[n - low] = 0
            index = segment.find(1)
            while index != -1:
                n = low + index
                if previous is not None and n - previous == 2:
                    twins += 1
                previous = largest = n
                primes += 1
                index = segment.find(1, index + 1)
            self.progress(high, limit, f"sieved {high:,} of {limit:,}")

        report = {
            "limit": limit,
            "primes": primes,
            "largest": largest,
            "twin_prime_pairs": twins,
            "seconds": round(time.perf_counter() - started, 3),
        }
        return "ok", json.dumps(report)


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    app.config.update(
        SECRET_KEY=os.environ.get(
            "SECRET_KEY", "dev-only-secret-change-me-in-production-please-0123"
        ),
        SQLALCHEMY_DATABASE_URI=os.environ.get("DATABASE_URL", "sqlite:///example.sqlite3"),
        CELERY={},  # no broker_url: embedded mode, unless CELERY_BROKER_URL is set
    )
    app.config.update(config or {})
    db.init_app(app)
    async_request.init_app(app)

    @app.get("/")
    def index() -> str:
        return render_template("index.html", default_limit=200_000_000, max_limit=MAX_LIMIT)

    @app.post("/primes")
    def primes() -> Any:
        """Start a prime report; answers 202 with the token and the status url."""
        payload = request.get_json(silent=True) or {}
        limit = payload.get("limit", 10_000_000)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 2 <= limit <= MAX_LIMIT:
            return {"errors": [{"message": f"limit must be an int from 2 to {MAX_LIMIT:,}"}]}, 400
        try:
            job = Job.create_and_enqueue(PrimeReport, limit)
        except EnqueueError as e:
            # Stored all the same: the sweeper sends it once the broker is back.
            job = e.job
        return accepted(job)

    with app.app_context():
        db.create_all()
    return app


app = create_app()
celery_app = app.extensions["celery"]
