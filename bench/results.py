"""The result store under a large result: memory of the writer and the server, download rate.

    python bench/results.py --size-mb 200 --database-url postgresql+psycopg://postgres@127.0.0.1/test

A worker (run eagerly, in this process) returns a generator of ``--size-mb`` MiB,
which the result store writes in 1 MiB chunks; then the result url serves it to
curl, in another process, next to Flask's ``send_file`` of a file of the same
size from disk, on the same server (Werkzeug's threaded one, in this process).
Memory is this process's resident set: its peak (``VmHWM``) is reset before each
phase (``/proc/self/clear_refs``), and the growth is that peak less the resident
set at the phase's start. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flask_async_request import Worker  # noqa: E402

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MIB = 1024 * 1024


def _block(index: int) -> bytes:
    """1 MiB that differs from one index to the next, made without holding the result."""
    seed = hashlib.sha256(index.to_bytes(8, "big")).digest()
    return seed * (MIB // len(seed))


class Generate(Worker):
    """Returns ``size_mb`` MiB as a generator of 1 MiB blocks."""

    def execute(self, size_mb: int) -> Any:
        def blocks() -> Iterator[bytes]:
            for index in range(size_mb):
                yield _block(index)

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


def _curl(url: str, headers: dict[str, str]) -> dict[str, float]:
    """Download ``url`` with curl to /dev/null: seconds and MiB/s."""
    command = ["curl", "-sS", "-o", "/dev/null", "-w", "%{time_total} %{size_download}", url]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    seconds, size = subprocess.run(
        command, check=True, capture_output=True, text=True
    ).stdout.split()
    return {
        "seconds": round(float(seconds), 2),
        "mib_per_s": round(float(size) / MIB / float(seconds), 1),
        "bytes": int(float(size)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument(
        "--database-url", default=os.environ.get("FAR_TEST_DATABASE_URL", DEFAULT_URL)
    )
    options = parser.parse_args()

    from flask import Flask, send_file
    from flask_sqlalchemy import SQLAlchemy
    from werkzeug.serving import make_server

    from flask_async_request import AsyncRequest, Job

    app = Flask("bench")
    app.config.update(
        SECRET_KEY="bench-secret-key-long-enough-for-hmac-sha256-signatures-here",
        SQLALCHEMY_DATABASE_URI=options.database_url,
        CELERY={"task_always_eager": True},
    )
    db = SQLAlchemy(app)
    AsyncRequest(app)
    directory = tempfile.TemporaryDirectory()
    path = Path(directory.name) / "result.bin"

    @app.get("/file")
    def from_disk() -> Any:
        return send_file(path, mimetype="application/octet-stream")

    with app.app_context():
        db.drop_all()
        db.create_all()
    with path.open("wb") as file:
        for index in range(options.size_mb):
            file.write(_block(index))

    # Writing: the worker's generator into the result store.
    with app.app_context():
        _reset_peak()
        start = _status("VmRSS")
        began = time.perf_counter()
        job = Job.create_and_enqueue(Generate, options.size_mb)
        write_seconds = time.perf_counter() - began
        write_growth = _growth(start)
        token = job.token
        assert job.result_size == options.size_mb * MIB, job.response
        sha256 = job.result_sha256
        db.session.remove()

    # The server's access log is not the figures'.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        # Warm both paths (imports, pools) with a small range first.
        _curl(f"{base}/async_request/job/{token}/result", {"Range": "bytes=0-0"})
        _curl(f"{base}/file", {"Range": "bytes=0-0"})
        _reset_peak()
        start = _status("VmRSS")
        served = _curl(f"{base}/async_request/job/{token}/result", {})
        serve_growth = _growth(start)
        _reset_peak()
        start = _status("VmRSS")
        disk = _curl(f"{base}/file", {})
        disk_growth = _growth(start)
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
        directory.cleanup()
    assert served["bytes"] == disk["bytes"] == options.size_mb * MIB
    print(
        json.dumps(
            {
                "database": options.database_url.partition(":")[0],
                "size_mib": options.size_mb,
                "sha256": sha256,
                "write": {
                    "seconds": round(write_seconds, 2),
                    "mib_per_s": round(options.size_mb / write_seconds, 1),
                    "rss_growth_mib": write_growth,
                },
                "result_url": {**served, "rss_growth_mib": serve_growth},
                "send_file_from_disk": {**disk, "rss_growth_mib": disk_growth},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
