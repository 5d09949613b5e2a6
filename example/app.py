"""A small app with one slow endpoint: a prime-number report computed by a Celery worker.

Run it on the embedded default (SQLite, a worker thread in the web process)::

    flask --app example.app run

or against real services, with ``celery -A example.app:celery_app worker`` running beside it::

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1/test \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/0 flask --app example.app run
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from flask import Flask, request, url_for
from flask_sqlalchemy import SQLAlchemy

from flask_async_request import AsyncRequest, Job, Worker

db = SQLAlchemy()
async_request = AsyncRequest()

MAX_LIMIT = 50_000_000


class PrimeReport(Worker):
    """Sieves the primes below ``limit`` and reports on them."""

    def execute(self, limit: int) -> tuple[str, str]:
        started = time.perf_counter()
        sieve = bytearray([1]) * limit
        sieve[0:2] = b"\x00\x00"
        for n in range(2, math.isqrt(limit - 1) + 1):
            if sieve[n]:
                sieve[n * n :: n] = bytes(len(range(n * n, limit, n)))
        count = sieve.count(1)
        largest = sieve.rindex(1) if count else None
        twins = sum(1 for p in range(3, limit - 2) if sieve[p] and sieve[p + 2])
        report = {
            "limit": limit,
            "primes": count,
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

    @app.post("/primes")
    def primes() -> Any:
        """Start a prime report; answers 202 with the token and the status url."""
        payload = request.get_json(silent=True) or {}
        limit = payload.get("limit", 10_000_000)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 2 <= limit <= MAX_LIMIT:
            return {"errors": [{"message": f"limit must be an int from 2 to {MAX_LIMIT}"}]}, 400
        job = Job.create_and_enqueue(PrimeReport, limit)
        return {"token": job.token, "url": url_for("async_request.job", _external=True)}, 202

    with app.app_context():
        db.create_all()
    return app


app = create_app()
celery_app = app.extensions["celery"]
