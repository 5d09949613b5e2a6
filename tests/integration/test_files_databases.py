"""Replies that are files on PostgreSQL (bytea) and MariaDB (LONGBLOB): stored, served, deleted."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, current_app, send_file
from flask_sqlalchemy import SQLAlchemy

from flask_async_request import AsyncRequest, Job, asynchronous, results
from flask_async_request.models import ResultChunk
from flask_async_request.retention import purge_jobs
from tests import workers
from tests.conftest import INTERNALS, SECRET, current_db, json_of, poll

pytestmark = pytest.mark.integration

DATABASE_URL = os.environ.get(
    "FAR_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MARIADB_URL = os.environ.get("FAR_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
TOKEN_HEADER = "X-JOB-AUTHORIZATION"


@pytest.fixture(params=[DATABASE_URL, MARIADB_URL], ids=["postgresql", "mariadb"])
def db_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Flask]:
    """An app on a real database, eager Celery, fresh tables and a view returning send_file."""
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        SECRET_KEY=SECRET,
        SQLALCHEMY_DATABASE_URI=request.param,
        CELERY={"task_always_eager": True},
    )
    db = SQLAlchemy()
    db.init_app(app)
    AsyncRequest(app)
    report = tmp_path / "report.bin"
    report.write_bytes(os.urandom(3 * 1024 * 1024 + 17))

    @app.get("/report")
    @asynchronous
    def make_report() -> Any:
        return send_file(report, as_attachment=True, download_name="report.bin")

    app.config["REPORT"] = report
    with app.app_context():
        db.drop_all()
        db.create_all()
        yield app
        db.session.remove()
        INTERNALS.job_store(current_app).dispose()
        db.engine.dispose()


def _chunks(job_id: int) -> int:
    query = sa.select(sa.func.count()).select_from(ResultChunk).where(ResultChunk.job_id == job_id)
    session = current_db().session
    count = int(session.execute(query).scalar_one())
    # Ended, so the next count sees the rows as they are then (MariaDB's REPEATABLE READ).
    session.commit()
    return count


def _download(client: Any, token: str, **headers: str) -> Any:
    return client.get("/async_request/result", headers={TOKEN_HEADER: token, **headers})


def test_send_file_round_trips_in_real_chunks(db_app: Flask) -> None:
    """A 3 MiB send_file reply, in 1 MiB chunks, comes back byte-identical, headers kept."""
    client = db_app.test_client()
    accepted = client.get("/report")
    token = json_of(accepted)["token"]
    response = json_of(poll(client, token))["response"]
    data = db_app.config["REPORT"].read_bytes()
    assert response["size"] == len(data)
    assert response["sha256"] == hashlib.sha256(data).hexdigest()
    download = _download(client, token)
    assert download.data == data
    assert download.headers["Content-Disposition"] == "attachment; filename=report.bin"
    ranged = _download(client, token, Range="bytes=1048570-1048585")
    assert (ranged.status_code, ranged.data) == (206, data[1048570:1048586])
    etag = download.headers["ETag"]
    assert _download(client, token, **{"If-None-Match": etag}).status_code == 304


def test_postgresql_reads_chunks_in_binary(db_app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """On PostgreSQL each chunk of a download comes in binary format, not hex-encoded as text."""
    if db_app.config["SQLALCHEMY_DATABASE_URI"] != DATABASE_URL:
        pytest.skip("psycopg's result formats are PostgreSQL's")
    import psycopg

    client = db_app.test_client()
    token = json_of(client.get("/report"))["token"]
    poll(client, token)
    formats: list[str] = []
    execute = psycopg.Cursor.execute

    def recording(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        if "async_request_results" in str(query) and "data" in str(query):
            formats.append(cursor.format.name)
        return execute(cursor, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", recording)
    assert _download(client, token).data == db_app.config["REPORT"].read_bytes()
    # 3 MiB and 17 bytes: four chunks, each one read.
    assert formats == ["BINARY"] * 4


def test_chunks_are_compressed_with_lz4_on_postgresql_only(db_app: Flask) -> None:
    """PostgreSQL keeps the chunks with lz4 (the column's and each value's); MariaDB as it was.

    A result that compresses well reads back identical either way.
    """
    client = db_app.test_client()
    job = Job.create_and_enqueue(workers.ReturnChunks, 3, 1024 * 1024)
    expected = b"".join(bytes([i]) * 1024 * 1024 for i in range(3))
    assert _download(client, job.token).data == expected
    session = current_db().session
    if db_app.config["SQLALCHEMY_DATABASE_URI"] == DATABASE_URL:
        column = session.execute(
            sa.text(
                "SELECT attcompression FROM pg_attribute WHERE attname = 'data'"
                " AND attrelid = 'async_request_results'::regclass"
            )
        ).scalar_one()
        values = session.execute(
            sa.text("SELECT DISTINCT pg_column_compression(data) FROM async_request_results")
        ).scalars()
        assert (column, list(values)) == ("l", ["lz4"])
    else:
        created = session.execute(sa.text("SHOW CREATE TABLE async_request_results")).one()[1]
        assert "COMPRESS" not in created.upper()
        assert "`data` longblob NOT NULL" in created
    session.commit()


def test_every_kind_round_trips(db_app: Flask, tmp_path: Path) -> None:
    """Bytes, a path, a file object, chunks and a response: each byte-identical."""
    client = db_app.test_client()
    path = tmp_path / "a.bin"
    path.write_bytes(workers.ALL_BYTES)
    text = "".join(map(chr, range(256)))
    cases = [
        (Job.create_and_enqueue(workers.ReturnBytes), b"raw"),
        (Job.create_and_enqueue(workers.ReturnFile, str(path)), workers.ALL_BYTES),
        (Job.create_and_enqueue(workers.ReturnFileObject, text), text.encode("latin-1")),
        (
            Job.create_and_enqueue(workers.ReturnChunks, 3, 700),
            b"".join(bytes([i]) * 700 for i in range(3)),
        ),
        (Job.create_and_enqueue(workers.ReturnResponse), b"made of parts"),
    ]
    for job, expected in cases:
        download = _download(client, job.token)
        assert download.status_code == 200
        assert download.data == expected


def test_crash_mid_write_then_purge(db_app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker raising mid-write fails its job with no result; the purge deletes its chunks."""
    monkeypatch.setattr(results, "CHUNK_SIZE", 1000)
    monkeypatch.setattr(results, "discard", lambda *args, **kwargs: None)
    client = db_app.test_client()
    job = Job.create_and_enqueue(workers.ReturnChunks, 5, 1000, fail_after=3)
    answer = json_of(poll(client, job.token))
    assert answer["status"] == "failed"
    assert "href" not in answer["response"]
    assert _chunks(job.id) == 3
    purge_jobs(timedelta(days=1))
    assert _chunks(job.id) == 0


def test_purge_deletes_a_finished_jobs_chunks(db_app: Flask) -> None:
    """Purging a job deletes its chunks; its result url then answers 404."""
    client = db_app.test_client()
    job = Job.create_and_enqueue(workers.ReturnChunks, 2, 100)
    job_id, token = job.id, job.token
    current_db().session.commit()
    assert _chunks(job_id) == 1
    purge_jobs(timedelta(seconds=0))
    assert _chunks(job_id) == 0
    assert _download(client, token).status_code == 404
