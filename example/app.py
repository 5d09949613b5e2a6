"""An example app: a prime-number report computed by a worker, with a browser page.

The page starts a report, shows its progress as the worker reports it, lets you
cancel it, and shows the result. It also exports the primes as a ZIP of CSV
files, made by a worker and downloaded by the page under the file's own name.
Run it on the embedded default (SQLite, and a
worker thread in the web process)::

    flask --app example.app run

or against real services, with worker processes beside it::

    export DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1/test
    export CELERY_BROKER_URL=redis://127.0.0.1:6379/0
    flask --app example.app async-request worker --concurrency 2 &
    flask --app example.app run
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from typing import IO, Any

from flask import Flask, render_template, request
from flask_sqlalchemy import SQLAlchemy

from flask_async_request import AsyncRequest, EnqueueError, Job, Worker, accepted

db = SQLAlchemy()
async_request = AsyncRequest()

MAX_LIMIT = 500_000_000
#: The largest limit an export takes: about 1.27 million primes, a ZIP of a few MB.
MAX_EXPORT_LIMIT = 20_000_000
SEGMENT = 1_000_000


def sieve_segments(limit: int) -> Iterator[tuple[int, bytearray]]:
    """The numbers below ``limit`` in segments: ``(low, flags)``, ``flags[i]`` 1 if prime."""
    root = math.isqrt(limit - 1) + 1
    base = bytearray([1]) * root
    base[0:2] = b"\x00\x00"
    for n in range(2, math.isqrt(root - 1) + 1):
        if base[n]:
            base[n * n :: n] = bytes(len(range(n * n, root, n)))
    small = [n for n in range(2, root) if base[n]]
    for low in range(0, limit, SEGMENT):
        high = min(low + SEGMENT, limit)
        segment = bytearray([1]) * (high - low)
        for p in small:
            start = max(p * p, (low + p - 1) // p * p)
            if start < high:
                segment[start - low :: p] = bytes(len(range(start, high, p)))
        for n in range(max(low, 0), min(high, 2)):
            segment[n - low] = 0
        yield low, segment


class PrimeReport(Worker):
    """Counts the primes and twin primes below ``limit`` with a segmented sieve."""

    def execute(self, limit: int) -> tuple[str, str]:
        started = time.perf_counter()
        primes = twins = 0
        largest = previous = None
        for low, segment in sieve_segments(limit):
            high = low + len(segment)
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


def export_filename(limit: int) -> str:
    """The name the export of ``limit`` is downloaded under."""
    return f"primes-below-{limit}.zip"


def write_export(
    limit: int, target: IO[bytes], progress: Callable[[int, int], None] | None = None
) -> None:
    """Write the ZIP of CSV files of the primes below ``limit`` to ``target``.

    ``primes.csv`` (every prime), ``twin_primes.csv`` (each pair), ``gaps.csv``
    (how often each gap between consecutive primes occurs) and ``summary.csv``.
    The same limit gives the same bytes: each member has a fixed date, so that
    an export made twice has the same ETag.
    """
    gaps: Counter[int] = Counter()
    twin_rows = io.StringIO()
    twin_rows.write("p,p_plus_2\r\n")
    primes = twins = 0
    largest = previous = None
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        # One member is written at a time: the primes as they are found, the
        # rest (a tenth of their size and less) once they are all known.
        with archive.open(_member("primes.csv"), "w") as member:
            member.write(b"prime\r\n")
            for low, segment in sieve_segments(limit):
                found = []
                index = segment.find(1)
                while index != -1:
                    n = low + index
                    found.append(n)
                    if previous is not None:
                        gaps[n - previous] += 1
                        if n - previous == 2:
                            twins += 1
                            twin_rows.write(f"{previous},{n}\r\n")
                    previous = largest = n
                    index = segment.find(1, index + 1)
                primes += len(found)
                member.write("".join(f"{n}\r\n" for n in found).encode())
                if progress is not None:
                    progress(low + len(segment), limit)
        archive.writestr(_member("twin_primes.csv"), twin_rows.getvalue())
        archive.writestr(_member("gaps.csv"), _csv(["gap", "count"], sorted(gaps.items())))
        archive.writestr(
            _member("summary.csv"),
            _csv(
                ["limit", "primes", "largest", "twin_prime_pairs"],
                [(limit, primes, largest, twins)],
            ),
        )


def _member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def _csv(header: list[str], rows: list[tuple[Any, ...]]) -> str:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue()


class PrimeExport(Worker):
    """Exports the primes below ``limit`` as a ZIP of CSV files, a file to download.

    The ZIP is written to a temporary file (on disk once it passes 8 MiB) and
    returned as a file object: the library stores it a block at a time and
    closes it, and the client downloads it under the name its
    Content-Disposition gives.
    """

    def execute(self, limit: int) -> tuple[int, IO[bytes], str, dict[str, str]]:
        # Not closed here: the library reads the file after execute returns, then closes it.
        spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)  # noqa: SIM115
        write_export(
            limit,
            spool,
            lambda done, total: self.progress(done, total, f"sieved {done:,} of {total:,}"),
        )
        spool.seek(0)
        return (
            200,
            spool,
            "application/zip",
            {"Content-Disposition": f'attachment; filename="{export_filename(limit)}"'},
        )


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
        return render_template(
            "index.html",
            default_limit=200_000_000,
            max_limit=MAX_LIMIT,
            default_export_limit=1_000_000,
            max_export_limit=MAX_EXPORT_LIMIT,
        )

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

    @app.post("/exports")
    def exports() -> Any:
        """Start an export of the primes as a ZIP; answers 202 with the token and the status url."""
        payload = request.get_json(silent=True) or {}
        limit = payload.get("limit", 1_000_000)
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 2 <= limit <= MAX_EXPORT_LIMIT
        ):
            message = f"limit must be an int from 2 to {MAX_EXPORT_LIMIT:,}"
            return {"errors": [{"message": message}]}, 400
        try:
            job = Job.create_and_enqueue(PrimeExport, limit)
        except EnqueueError as e:
            job = e.job
        return accepted(job)

    with app.app_context():
        db.create_all()
    return app


app = create_app()
celery_app = app.extensions["celery"]
