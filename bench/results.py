"""The result stores under a large result: memory of the writer and the server, download rate.

    python bench/results.py --size-mb 200 --database-url postgresql+psycopg://postgres@127.0.0.1/test
    python bench/results.py --store directory
    python bench/results.py --store s3          # moto's server, started here, on loopback
    python bench/results.py --data random --compression pglz


A worker (run eagerly, in this process) returns a generator of ``--size-mb`` MiB,
which the result store writes (the database's 1 MiB chunks, a directory's file,
an S3 multipart upload); then the result url serves it to curl, in another
process, next to Flask's ``send_file`` of a file of the same size from disk, on
the same server (Werkzeug's threaded one, in this process). For S3, curl follows
the result url's redirect to the presigned url (``-L``), and the redirect alone
is timed too. Memory is this process's resident set: its peak (``VmHWM``) is
reset before each phase (``/proc/self/clear_refs``), and the growth is that peak
less the resident set at the phase's start. Each run is made ``--repeat`` times
(write, then the two downloads in turn); prints one JSON object with every run
and the medians.

The blocks repeat a 32-byte pattern, so they compress very well; ``--data csv``
makes them windows of a CSV export (as compressible as one), ``--data random``
random bytes, the same from one run to the next.
On PostgreSQL, ``--compression pglz`` (or ``lz4``) sets the compression of the
results' ``data`` after the tables are created, in place of the model's.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flask_async_request import Worker  # noqa: E402

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MIB = 1024 * 1024


@functools.cache
def _csv() -> bytes:
    """4 MiB of a CSV export: an id, a name, an amount, a date and a status a row."""
    rows = random.Random(0)
    names = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
    statuses = ["paid", "pending", "refunded", "failed"]
    lines = ["id,customer,amount,created_at,status"]
    size = len(lines[0])
    while size < 4 * MIB:
        lines.append(
            f"{len(lines)},{rows.choice(names)}-{rows.randrange(10_000)},"
            f"{rows.randrange(100_000) / 100:.2f},2024-{rows.randrange(1, 13):02d}-"
            f"{rows.randrange(1, 29):02d}T{rows.randrange(24):02d}:{rows.randrange(60):02d}:00Z,"
            f"{rows.choice(statuses)}"
        )
        size += len(lines[-1]) + 1
    return "\n".join(lines).encode()


def _block(index: int, data: str = "repeated") -> bytes:
    """1 MiB that differs from one index to the next, made without holding the result.

    ``repeated``: a 32-byte pattern over and over; ``csv``: a window of a CSV export, at an
    offset of its own; ``random``: random bytes, seeded by ``index``.
    """
    if data == "random":
        return random.Random(index).randbytes(MIB)
    if data == "csv":
        export = _csv()
        start = index * 7919 % (len(export) - MIB)
        return export[start : start + MIB]
    seed = hashlib.sha256(index.to_bytes(8, "big")).digest()
    return seed * (MIB // len(seed))


class Generate(Worker):
    """Returns ``size_mb`` MiB as a generator of 1 MiB blocks."""

    def execute(self, size_mb: int, data: str = "repeated") -> Any:
        def blocks() -> Iterator[bytes]:
            for index in range(size_mb):
                yield _block(index, data)

        return 200, blocks(), "application/octet-stream"


def _status(field: str) -> int:
    """A field of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _growth(start: int) -> float:
    """MiB the resident set grew to at its peak since ``start`` (its size then)."""
    return round((_status("VmHWM") - start) / MIB, 1)


def _curl(url: str, headers: dict[str, str], *, follow: bool = False) -> dict[str, float]:
    """Download ``url`` with curl to /dev/null: seconds, MiB/s and redirects followed."""
    command = [
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{time_total} %{size_download} %{num_redirects}",
        url,
    ]
    if follow:
        command.append("-L")
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    seconds, size, redirects = subprocess.run(
        command, check=True, capture_output=True, text=True
    ).stdout.split()
    return {
        "seconds": round(float(seconds), 3),
        "mib_per_s": round(float(size) / MIB / float(seconds), 1),
        "bytes": int(float(size)),
        "redirects": int(redirects),
    }


def _moto(port: int) -> subprocess.Popen[bytes]:
    """moto's S3 server in a process of its own (it keeps the objects in its memory, not ours)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("moto's server did not start")


def _s3_store(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    from flask_async_request import S3Store

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name="us-east-1",
        config=Config(signature_version="s3v4"),
    )
    client.create_bucket(Bucket="bench")
    store = S3Store("bench", "results/", client=client)
    # boto3's modules and the client's connections, loaded before memory is measured.
    location = store.write("0-1", [b"warm"]).location
    assert location is not None
    store.delete(location)
    return store


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument(
        "--database-url", default=os.environ.get("FAR_TEST_DATABASE_URL", DEFAULT_URL)
    )
    parser.add_argument("--store", choices=["database", "directory", "s3"], default="database")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", choices=["repeated", "csv", "random"], default="repeated")
    parser.add_argument(
        "--compression",
        choices=["model", "pglz", "lz4"],
        default="model",
        help="the results' compression on PostgreSQL [default: as the model creates it]",
    )
    options = parser.parse_args()

    from flask import Flask, send_file
    from flask_sqlalchemy import SQLAlchemy
    from werkzeug.serving import make_server

    from flask_async_request import AsyncRequest, Job
    from flask_async_request.retention import purge_jobs

    directory = tempfile.TemporaryDirectory()
    path = Path(directory.name) / "result.bin"
    moto = None
    store: Any = "database"
    if options.store == "directory":
        store = str(Path(directory.name) / "results")
    elif options.store == "s3":
        port = _free_port()
        moto = _moto(port)
        store = _s3_store(f"http://127.0.0.1:{port}")

    app = Flask("bench")
    app.config.update(
        SECRET_KEY="bench-secret-key-long-enough-for-hmac-sha256-signatures-here",
        SQLALCHEMY_DATABASE_URI=options.database_url,
        CELERY={"task_always_eager": True},
        ASYNC_REQUEST_RESULT_STORE=store,
    )
    db = SQLAlchemy(app)
    AsyncRequest(app)

    @app.get("/file")
    def from_disk() -> Any:
        return send_file(path, mimetype="application/octet-stream")

    with app.app_context():
        db.drop_all()
        db.create_all()
        if options.compression != "model":
            from flask_async_request.models import results_compression

            db.session.execute(sa.text(results_compression(options.compression)))
            db.session.commit()
        compression = _compression(db)
    with path.open("wb") as file:
        for index in range(options.size_mb):
            file.write(_block(index, options.data))

    # The server's access log is not the figures'.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    runs = []
    try:
        for _ in range(options.repeat):
            runs.append(_run(app, db, Job, base, options, follow=options.store == "s3"))
            with app.app_context():
                purge_jobs(timedelta(0))
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
        directory.cleanup()
        if moto is not None:
            moto.kill()
            moto.wait()
    ratios = [
        run["result_url"]["mib_per_s"] / run["send_file_from_disk"]["mib_per_s"] for run in runs
    ]
    medians: dict[str, Any] = {
        "write_mib_per_s": _median([run["write"]["mib_per_s"] for run in runs]),
        "write_rss_growth_mib": _median([run["write"]["rss_growth_mib"] for run in runs]),
        "result_url_mib_per_s": _median([run["result_url"]["mib_per_s"] for run in runs]),
        "result_url_rss_growth_mib": _median([run["result_url"]["rss_growth_mib"] for run in runs]),
        "send_file_mib_per_s": _median([run["send_file_from_disk"]["mib_per_s"] for run in runs]),
        "ratio_to_send_file": _median(ratios),
    }
    if options.store == "s3":
        medians["redirect_ms"] = _median([run["redirect"]["seconds"] * 1000 for run in runs])
    print(
        json.dumps(
            {
                "store": options.store,
                "database": options.database_url.partition(":")[0],
                "size_mib": options.size_mb,
                "data": options.data,
                "compression": compression,
                "median": medians,
                "runs": runs,
            },
            indent=2,
        )
    )


def _compression(db: Any) -> str | None:
    """The results' compression on PostgreSQL: ``lz4``, ``pglz``, or the server's default."""
    if db.engine.dialect.name != "postgresql":
        return None
    column = db.session.execute(
        sa.text(
            "SELECT attcompression FROM pg_attribute WHERE attname = 'data'"
            " AND attrelid = 'async_request_results'::regclass"
        )
    ).scalar()
    db.session.commit()
    return {"l": "lz4", "p": "pglz"}.get(column or "", "default")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(app: Any, db: Any, job_model: Any, base: str, options: Any, *, follow: bool) -> Any:
    """One run: the worker writes the result, then curl downloads it and the file from disk."""
    with app.app_context():
        _reset_peak()
        start = _status("VmRSS")
        began = time.perf_counter()
        job = job_model.create_and_enqueue(Generate, options.size_mb, options.data)
        write_seconds = time.perf_counter() - began
        write_growth = _growth(start)
        token = job.token
        assert job.result_size == options.size_mb * MIB, job.response
        db.session.remove()

    url = f"{base}/async_request/job/{token}/result"
    # Warm both paths (imports, pools) with a small range first.
    _curl(url, {"Range": "bytes=0-0"}, follow=follow)
    _curl(f"{base}/file", {"Range": "bytes=0-0"})
    redirect = _curl(url, {}) if follow else None
    _reset_peak()
    start = _status("VmRSS")
    served = _curl(url, {}, follow=follow)
    serve_growth = _growth(start)
    _reset_peak()
    start = _status("VmRSS")
    disk = _curl(f"{base}/file", {})
    disk_growth = _growth(start)
    assert served["bytes"] == disk["bytes"] == options.size_mb * MIB, (served, disk)
    run = {
        "write": {
            "seconds": round(write_seconds, 2),
            "mib_per_s": round(options.size_mb / write_seconds, 1),
            "rss_growth_mib": write_growth,
        },
        "result_url": {**served, "rss_growth_mib": serve_growth},
        "send_file_from_disk": {**disk, "rss_growth_mib": disk_growth},
    }
    if redirect is not None:
        run["redirect"] = redirect
    return run


if __name__ == "__main__":
    main()
