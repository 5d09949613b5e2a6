"""The directory store: written whole then renamed, served with ranges or X-Sendfile, cleaned up."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, current_app

from flask_async_request import Job, JobStatus, lifecycle, result_stores
from flask_async_request.directory import DirectoryStore
from flask_async_request.models import ResultChunk
from flask_async_request.retention import purge_jobs
from flask_async_request.storage import ResultMissing, result_name
from flask_async_request.web import cancel_job
from tests import workers
from tests.conftest import INTERNALS, AppFactory, current_db, json_of, poll

TOKEN_HEADER = "X-JOB-AUTHORIZATION"
DATA = b"".join(bytes([i]) * 500 for i in range(5))


def _files(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir()) if root.exists() else []


def _age(path: Path, seconds: float) -> None:
    """Make ``path`` look last written ``seconds`` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))


# The store alone -----------------------------------------------------------------------------


def test_write_renames_a_complete_file_into_place(tmp_path: Path) -> None:
    """A write leaves the whole file under its name, its size and SHA-256 recorded, no temp file."""
    store = DirectoryStore(tmp_path / "results")
    written = store.write("7-1", [b"ab", b"", b"cd"])
    assert written.size == 4
    assert written.sha256 == hashlib.sha256(b"abcd").hexdigest()
    assert written.location == (tmp_path / "results" / "7-1").as_uri()
    assert _files(tmp_path / "results") == ["7-1"]
    assert stat.S_IMODE((tmp_path / "results" / "7-1").stat().st_mode) == 0o640
    assert b"".join(store.read(written.location, 1, 3)) == b"bc"


def test_write_that_raises_leaves_nothing(tmp_path: Path) -> None:
    """Chunks that raise mid-way leave neither the result nor its temporary file."""

    def chunks() -> Any:
        yield b"x" * 100
        raise OSError("the disk went away")

    store = DirectoryStore(tmp_path)
    with pytest.raises(OSError, match="disk went away"):
        store.write("7-1", chunks())
    assert _files(tmp_path) == []


def test_read_of_a_file_gone_or_foreign_raises_result_missing(tmp_path: Path) -> None:
    """A deleted result, or a location outside the directory, is ResultMissing."""
    store = DirectoryStore(tmp_path / "a")
    location = store.write("1-1", [b"x"]).location
    assert location is not None
    store.delete(location)
    store.delete(location)
    with pytest.raises(ResultMissing):
        list(store.read(location, 0, 1))
    with pytest.raises(ResultMissing):
        list(store.read((tmp_path / "1-1").as_uri(), 0, 1))
    assert not store.owns((tmp_path / "1-1").as_uri())


WRITER = textwrap.dedent(
    """
    import sys, time
    from flask_async_request.directory import DirectoryStore

    def chunks():
        yield b"x" * 1000
        print("writing", flush=True)
        time.sleep(60)
        yield b"never"

    DirectoryStore(sys.argv[1]).write("9-1", chunks())
    """
)


def test_a_writer_killed_mid_write_leaves_only_a_temporary_file(tmp_path: Path) -> None:
    """A process killed while writing leaves a .part file, listed as a write cut short."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert writer.stdout is not None
    assert writer.stdout.readline() == b"writing\n"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    [name] = _files(tmp_path)
    assert name.startswith(".9-1.") and name.endswith(".part")
    [leftover] = DirectoryStore(tmp_path).leftovers()
    assert (leftover.job_id, leftover.attempt, leftover.complete) == (9, 1, False)
    assert leftover.age < 60


# Through an app ------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture
def dir_app(make_app: AppFactory, root: Path) -> Any:
    app = make_app(ASYNC_REQUEST_RESULT_STORE=str(root))
    with app.app_context():
        yield app


def _chunk_count() -> int:
    session = current_db().session
    count = int(session.execute(sa.select(sa.func.count()).select_from(ResultChunk)).scalar_one())
    session.commit()
    return count


def _download(client: Any, token: str, **headers: str) -> Any:
    return client.get("/async_request/result", headers={TOKEN_HEADER: token, **headers})


def test_result_round_trips_through_the_directory(dir_app: Flask, root: Path) -> None:
    """A generator's bytes land in one file, none in the database; downloaded identical."""
    client = dir_app.test_client()
    job = Job.create_and_enqueue(workers.ReturnChunks, 5, 500)
    assert _files(root) == [result_name(job.id, 1)]
    assert (root / result_name(job.id, 1)).read_bytes() == DATA
    assert _chunk_count() == 0
    response = json_of(poll(client, job.token))["response"]
    assert response["size"] == 2500
    assert response["sha256"] == hashlib.sha256(DATA).hexdigest()
    download = _download(client, job.token)
    assert download.status_code == 200
    assert download.data == DATA
    assert download.headers["Content-Length"] == "2500"
    assert download.headers["ETag"] == f'"{hashlib.sha256(DATA).hexdigest()}"'
    assert download.headers["Link"] == '<https://a.test/>; rel="x"'
    assert download.headers["Content-Type"] == "application/octet-stream"
    assert "X-Sendfile" not in download.headers
    row = current_db().session.get(Job, job.id)
    assert row is not None and row.result_location == (root / f"{job.id}-1").as_uri()


@pytest.mark.parametrize(
    ("header", "start", "stop"),
    [("bytes=0-9", 0, 10), ("bytes=990-1010", 990, 1011), ("bytes=-5", 2495, 2500)],
)
def test_range_is_206(dir_app: Flask, header: str, start: int, stop: int) -> None:
    """A single range of a file answers 206 with those bytes."""
    client = dir_app.test_client()
    job = Job.create_and_enqueue(workers.ReturnChunks, 5, 500)
    answer = _download(client, job.token, Range=header)
    assert answer.status_code == 206
    assert answer.data == DATA[start:stop]
    assert answer.headers["Content-Range"] == f"bytes {start}-{stop - 1}/2500"


def test_conditional_and_head(dir_app: Flask) -> None:
    """If-None-Match answers 304, HEAD the headers alone, a range past the end 416."""
    client = dir_app.test_client()
    job = Job.create_and_enqueue(workers.ReturnChunks, 5, 500)
    etag = _download(client, job.token).headers["ETag"]
    assert _download(client, job.token, **{"If-None-Match": etag}).status_code == 304
    head = client.head("/async_request/result", headers={TOKEN_HEADER: job.token})
    assert (head.status_code, head.data, head.headers["Content-Length"]) == (200, b"", "2500")
    assert _download(client, job.token, Range="bytes=2500-").status_code == 416


def test_use_x_sendfile_answers_with_the_files_path(make_app: AppFactory, root: Path) -> None:
    """With Flask's USE_X_SENDFILE the body is left to the front server, headers kept."""
    app = make_app(ASYNC_REQUEST_RESULT_STORE=str(root), USE_X_SENDFILE=True)
    client = app.test_client()
    with app.app_context():
        job = Job.create_and_enqueue(workers.ReturnChunks, 5, 500)
        job_id = job.id
    answer = _download(client, job.token)
    assert answer.status_code == 200
    assert answer.headers["X-Sendfile"] == str(root / f"{job_id}-1")
    assert answer.data == b""
    assert answer.headers["Content-Length"] == "2500"
    assert answer.headers["ETag"] == f'"{hashlib.sha256(DATA).hexdigest()}"'
    assert answer.headers["Link"] == '<https://a.test/>; rel="x"'
    ranged = _download(client, job.token, Range="bytes=0-9")
    assert (ranged.status_code, ranged.headers["Content-Range"]) == (206, "bytes 0-9/2500")
    assert "X-Sendfile" in ranged.headers
    # A 304 sends no file: some front servers would send it anyway.
    unchanged = _download(client, job.token, **{"If-None-Match": answer.headers["ETag"]})
    assert unchanged.status_code == 304
    assert "X-Sendfile" not in unchanged.headers


def test_x_accel_redirect_names_the_internal_location(make_app: AppFactory, root: Path) -> None:
    """With ASYNC_REQUEST_X_ACCEL_REDIRECT the answer names the file under nginx's location."""
    app = make_app(ASYNC_REQUEST_RESULT_STORE=str(root), ASYNC_REQUEST_X_ACCEL_REDIRECT="/files")
    client = app.test_client()
    with app.app_context():
        job = Job.create_and_enqueue(workers.ReturnChunks, 5, 500)
        job_id = job.id
    answer = _download(client, job.token)
    assert answer.headers["X-Accel-Redirect"] == f"/files/{job_id}-1"
    assert answer.data == b""
    assert "X-Sendfile" not in answer.headers


def test_worker_raising_mid_write_leaves_no_file(dir_app: Flask, root: Path) -> None:
    """A generator that raises fails its job readably; neither file nor temp file is left."""
    client = dir_app.test_client()
    job = Job.create_and_enqueue(workers.ReturnChunks, 5, 1000, fail_after=3)
    answer = json_of(poll(client, job.token))
    assert answer["status"] == "failed"
    assert "href" not in answer["response"]
    assert _files(root) == []


def test_purge_deletes_a_write_cut_short_once_stale(dir_app: Flask, root: Path) -> None:
    """A temp file of an attempt that no longer runs is deleted once unwritten for long enough."""
    job = Job.create_and_enqueue(workers.Boom)
    root.mkdir()
    part = root / f".{job.id}-1.abc123.part"
    part.write_bytes(b"half")
    running = root / ".999999-1.def.part"
    running.write_bytes(b"a job gone")
    purge_jobs(timedelta(days=1))
    # Fresh: it may still be written to.
    assert part.exists() and running.exists()
    _age(part, 7200)
    _age(running, 7200)
    purge_jobs(timedelta(days=1))
    assert _files(root) == []


def test_purge_keeps_the_temp_file_of_the_attempt_running(dir_app: Flask, root: Path) -> None:
    """A processing job's own attempt keeps its temp file, however old: its worker holds it."""
    store = INTERNALS.job_store(current_app)
    job = lifecycle.new_job("tests.workers:ReturnBytes", {"args": [], "kwargs": {}})
    lifecycle.insert(store, job)
    assert lifecycle.claim(store, job.id, timedelta(minutes=1)) is not None
    root.mkdir()
    part = root / f".{job.id}-1.abc.part"
    part.write_bytes(b"slow")
    _age(part, 7200)
    purge_jobs(timedelta(days=1))
    assert part.exists()


def test_a_result_no_job_recorded_is_deleted_by_the_purge(dir_app: Flask, root: Path) -> None:
    """A file renamed into place whose job then failed (its end never stored) is deleted."""
    job = Job.create_and_enqueue(workers.Boom)
    store = result_stores.configured()
    written = store.write(result_name(job.id, 1), [b"orphan"])
    assert written.location is not None
    _age(root / f"{job.id}-1", 7200)
    kept = Job.create_and_enqueue(workers.ReturnBytes)
    _age(root / f"{kept.id}-1", 7200)
    purge_jobs(timedelta(days=1))
    assert _files(root) == [f"{kept.id}-1"]


def test_purge_deletes_a_jobs_file(dir_app: Flask, root: Path) -> None:
    """Purging a processed job deletes its file; the result url then answers 404."""
    client = dir_app.test_client()
    job = Job.create_and_enqueue(workers.ReturnChunks, 2, 10)
    assert _files(root) == [f"{job.id}-1"]
    current_db().session.commit()
    assert purge_jobs(timedelta(seconds=0), [JobStatus.PROCESSED]) == 1
    assert _files(root) == []
    assert _download(client, job.token).status_code == 404


def test_cancel_deletes_the_file_written(dir_app: Flask, root: Path) -> None:
    """Cancelling a running job whose worker has written its file deletes the file."""
    store = INTERNALS.job_store(current_app)
    job = lifecycle.new_job("tests.workers:ReturnBytes", {"args": [], "kwargs": {}})
    lifecycle.insert(store, job)
    claim = lifecycle.claim(store, job.id, timedelta(minutes=1))
    assert claim is not None
    result_stores.configured().write(result_name(job.id, claim.attempt), [b"x" * 10])
    assert _files(root) == [f"{job.id}-1"]
    cancel_job(job.id)
    assert _files(root) == []


def test_a_result_written_after_a_cancel_is_deleted_by_its_worker(
    dir_app: Flask, root: Path
) -> None:
    """A worker that finishes writing after its job was cancelled deletes its own file."""
    job = Job.create_and_enqueue(workers.CancelsThenReturnsBytes)
    assert current_db().session.get(Job, job.id).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    assert _files(root) == []


def test_results_stay_where_they_were_when_the_setting_changes(
    make_app: AppFactory, tmp_path: Path, root: Path
) -> None:
    """A result in the database and one in a directory are both served after a change."""
    url = f"sqlite:///{tmp_path}/shared.db"
    before = make_app(SQLALCHEMY_DATABASE_URI=url)
    with before.app_context():
        in_database = Job.create_and_enqueue(workers.ReturnBytes).token
    to_dir = make_app(
        create_tables=False,
        SQLALCHEMY_DATABASE_URI=url,
        **{"ASYNC_REQUEST_RESULT_STORE": root.as_uri()},
    )
    with to_dir.app_context():
        in_directory = Job.create_and_enqueue(workers.ReturnChunks, 5, 500).token
    client = to_dir.test_client()
    assert _download(client, in_database).data == b"raw"
    assert _download(client, in_directory).data == DATA
    # And back: the directory's result is still read from its file.
    after = make_app(create_tables=False, SQLALCHEMY_DATABASE_URI=url)
    client = after.test_client()
    assert _download(client, in_directory).data == DATA
    assert _download(client, in_database).data == b"raw"
    with after.app_context():
        current_db().session.commit()
        assert purge_jobs(timedelta(seconds=0), [JobStatus.PROCESSED]) == 2
    assert _files(root) == []


@pytest.mark.parametrize("value", ["relative/dir", 42, "s3://", "ftp://x/y"])
def test_a_bad_setting_is_refused_naming_the_key(make_app: AppFactory, value: object) -> None:
    """A value that is no store fails init_app with the key's name."""
    from flask_async_request import ConfigurationError

    with pytest.raises(ConfigurationError, match="ASYNC_REQUEST_RESULT_STORE"):
        make_app(create_tables=False, ASYNC_REQUEST_RESULT_STORE=value)


def test_setting_forms(make_app: AppFactory, root: Path) -> None:
    """A path, a Path, a file:// url and a store object all name the directory store."""
    for value in (str(root), root, root.as_uri(), DirectoryStore(root)):
        app = make_app(create_tables=False, ASYNC_REQUEST_RESULT_STORE=value)
        with app.app_context():
            assert result_stores.configured() == DirectoryStore(root)


def test_a_location_edited_by_hand_is_a_404_not_a_500(
    dir_app: Flask, root: Path, make_app: AppFactory
) -> None:
    """A result_location that names no result (a row edited by hand) answers 404."""
    # Another process's view of the rows: this one keeps the replies it ended.
    other = make_app(
        create_tables=False,
        **{
            key: dir_app.config[key]
            for key in ("SQLALCHEMY_DATABASE_URI", "ASYNC_REQUEST_RESULT_STORE")
        },
    )
    client = other.test_client()
    session = current_db().session
    for location, code in (("file:///etc/passwd", 404), ("gopher://x/1-1", 404)):
        job = Job.create_and_enqueue(workers.ReturnBytes)
        session.execute(sa.update(Job).where(Job.id == job.id).values(result_location=location))
        session.commit()
        assert _download(client, job.token).status_code == code


def test_a_transactional_worker_writes_its_file_too(dir_app: Flask, root: Path) -> None:
    """A transactional worker's result goes to the directory, recorded with its commit."""
    job = Job.create_and_enqueue(workers.TransactionalBytes)
    assert _files(root) == [f"{job.id}-1"]
    data = b"".join(bytes([i]) * 1000 for i in range(3))
    assert _download(dir_app.test_client(), job.token).data == data


def test_database_chunks_of_a_job_whose_result_is_elsewhere_are_stale(
    dir_app: Flask, root: Path
) -> None:
    """Chunks left in the database for a job whose result is a file are deleted by the purge."""
    from flask_async_request import results

    job = Job.create_and_enqueue(workers.ReturnBytes)
    store = INTERNALS.job_store(current_app)
    results.write(results.autocommitted(store), job.id, 1, [b"left behind"])
    assert _chunk_count() == 1
    purge_jobs(timedelta(days=1))
    assert _chunk_count() == 0
    assert _files(root) == [f"{job.id}-1"]
