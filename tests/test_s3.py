"""The object store: multipart uploads seen only when complete, presigned redirects, cleanup."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from flask import Flask, current_app

from flask_async_request import Job, JobStatus, lifecycle, result_stores
from flask_async_request.retention import purge_jobs
from flask_async_request.s3 import PART_SIZE, S3Store
from flask_async_request.storage import ResultMissing, result_name
from flask_async_request.web import cancel_job
from tests import workers
from tests.conftest import INTERNALS, AppFactory, current_db, json_of, poll
from tests.s3server import S3Server

TOKEN_HEADER = "X-JOB-AUTHORIZATION"
MIB = 1024 * 1024


@pytest.fixture
def store(s3_server: S3Server) -> S3Store:
    return S3Store(s3_server.bucket, "results/", client=s3_server.client, stale_after=3600)


def _blocks(count: int) -> Iterator[bytes]:
    for index in range(count):
        yield hashlib.sha256(bytes([index])).digest() * (MIB // 32)


# The store alone -----------------------------------------------------------------------------


def test_multipart_write_is_visible_only_when_complete(s3_server: S3Server, store: S3Store) -> None:
    """Parts go up as they fill, the object appears at the end, with size and SHA-256."""
    seen: list[list[str]] = []

    def chunks() -> Iterator[bytes]:
        for index, block in enumerate(_blocks(17)):
            if index == 10:
                seen.append(s3_server.keys())
            yield block

    written = store.write("3-1", chunks(), content_type="text/csv")
    data = b"".join(_blocks(17))
    assert seen == [[]]
    assert written.size == len(data) == 17 * MIB > 2 * PART_SIZE
    assert written.sha256 == hashlib.sha256(data).hexdigest()
    assert written.location == f"s3://{s3_server.bucket}/results/3-1"
    assert s3_server.keys() == ["results/3-1"]
    assert s3_server.uploads() == []
    assert b"".join(store.read(written.location, 5, 5 + 3 * MIB)) == data[5 : 5 + 3 * MIB]
    head = s3_server.client.head_object(Bucket=s3_server.bucket, Key="results/3-1")
    assert head["ContentType"] == "text/csv"


def test_an_empty_result_is_one_empty_object(s3_server: S3Server, store: S3Store) -> None:
    """No bytes at all still make an object (a single, empty, part)."""
    written = store.write("4-1", iter(()))
    assert (written.size, s3_server.keys()) == (0, ["results/4-1"])


def test_a_write_that_raises_aborts_its_upload(s3_server: S3Server, store: S3Store) -> None:
    """Chunks that raise leave no object and no upload in progress."""

    def chunks() -> Iterator[bytes]:
        yield from _blocks(9)
        raise OSError("the disk went away")

    with pytest.raises(OSError, match="disk went away"):
        store.write("5-1", chunks())
    assert s3_server.keys() == []
    assert s3_server.uploads() == []


def test_read_and_delete_of_an_object_gone(s3_server: S3Server, store: S3Store) -> None:
    """Deleting twice is fine; reading what is gone is ResultMissing."""
    location = store.write("6-1", [b"x"]).location
    assert location is not None
    store.delete(location)
    store.delete(location)
    with pytest.raises(ResultMissing):
        list(store.read(location, 0, 1))
    assert not store.owns("s3://other/results/6-1")
    assert not store.owns(f"s3://{s3_server.bucket}/elsewhere/6-1")


def test_setting_url_and_boto3s_own_configuration(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, make_app: AppFactory
) -> None:
    """An s3:// url makes a store whose client comes from boto3's usual configuration."""
    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    app = make_app(create_tables=False, ASYNC_REQUEST_RESULT_STORE=f"s3://{s3_server.bucket}/r/")
    with app.app_context():
        configured = result_stores.configured()
    assert isinstance(configured, S3Store)
    assert (configured.bucket, configured.prefix) == (s3_server.bucket, "r/")
    written = configured.write("1-1", [b"via the environment"])
    assert s3_server.keys() == ["r/1-1"]
    assert written.size == 19


# Through an app ------------------------------------------------------------------------------


@pytest.fixture
def s3_app(make_app: AppFactory, store: S3Store) -> Iterator[Flask]:
    app = make_app(ASYNC_REQUEST_RESULT_STORE=store)
    with app.app_context():
        yield app


def _download(client: Any, token: str, **headers: str) -> Any:
    return client.get("/async_request/result", headers={TOKEN_HEADER: token, **headers})


def test_result_url_redirects_to_a_presigned_url(s3_app: Flask, s3_server: S3Server) -> None:
    """The result url answers 303 to a presigned url, no token in it, which serves the bytes."""
    client = s3_app.test_client()
    job = Job.create_and_enqueue(workers.ReturnChunks, 5, 500)
    envelope = json_of(poll(client, job.token))["response"]
    data = b"".join(bytes([i]) * 500 for i in range(5))
    assert envelope["size"] == 2500
    assert envelope["sha256"] == hashlib.sha256(data).hexdigest()
    answer = _download(client, job.token)
    assert answer.status_code == 303
    location = answer.headers["Location"]
    assert location.startswith(s3_server.endpoint)
    assert job.token not in location
    assert answer.headers["Cache-Control"] == "no-store"
    assert parse_qs(urlsplit(location).query)["X-Amz-Expires"] == ["300"]
    fetched = httpx.get(location, timeout=10)
    assert fetched.status_code == 200
    assert fetched.content == data
    assert fetched.headers["Content-Type"] == "application/octet-stream"
    ranged = httpx.get(location, headers={"Range": "bytes=10-19"}, timeout=10)
    assert (ranged.status_code, ranged.content) == (206, data[10:20])
    head = client.head("/async_request/result", headers={TOKEN_HEADER: job.token})
    assert head.status_code == 303


def test_kept_headers_ride_on_the_object(s3_app: Flask, s3_server: S3Server) -> None:
    """Content-Type and Content-Disposition are the object's, sent by S3 to the client."""
    disposition = 'attachment; filename="x.bin"'
    job = Job.create_and_enqueue(
        workers.ReturnValue,
        [200, "x" * 300_000, "text/plain", {"Content-Disposition": disposition}],
    )
    location = _download(s3_app.test_client(), job.token).headers["Location"]
    fetched = httpx.get(location, timeout=10)
    assert fetched.content == b"x" * 300_000
    assert fetched.headers["Content-Type"] == "text/plain"
    assert fetched.headers["Content-Disposition"] == disposition


def test_presigned_lifetime_is_the_link_expiration(make_app: AppFactory, store: S3Store) -> None:
    """ASYNC_REQUEST_LINK_EXPIRATION is the presigned url's lifetime too."""
    app = make_app(ASYNC_REQUEST_RESULT_STORE=store, ASYNC_REQUEST_LINK_EXPIRATION=42)
    with app.app_context():
        token = Job.create_and_enqueue(workers.ReturnBytes).token
    location = _download(app.test_client(), token).headers["Location"]
    assert parse_qs(urlsplit(location).query)["X-Amz-Expires"] == ["42"]


def test_download_link_redirects_too(s3_app: Flask) -> None:
    """The signed download link of an object's result is a redirect to it, too."""
    client = s3_app.test_client()
    job = Job.create_and_enqueue(workers.ReturnBytes)
    link = json_of(poll(client, job.token))["response"]["download_href"]
    answer = client.get(link)
    assert answer.status_code == 303
    assert httpx.get(answer.headers["Location"], timeout=10).content == b"raw"


def test_purge_deletes_the_object(s3_app: Flask, s3_server: S3Server) -> None:
    """Purging a processed job deletes its object."""
    job = Job.create_and_enqueue(workers.ReturnBytes)
    assert s3_server.keys() == [f"results/{job.id}-1"]
    current_db().session.commit()
    assert purge_jobs(timedelta(seconds=0), [JobStatus.PROCESSED]) == 1
    assert s3_server.keys() == []


def test_cancel_deletes_the_object_written(s3_app: Flask, s3_server: S3Server) -> None:
    """Cancelling a running job whose worker uploaded its result deletes the object."""
    store = INTERNALS.job_store(current_app)
    job = lifecycle.new_job("tests.workers:ReturnBytes", {"args": [], "kwargs": {}})
    lifecycle.insert(store, job)
    claim = lifecycle.claim(store, job.id, timedelta(minutes=1))
    assert claim is not None
    result_stores.configured().write(result_name(job.id, claim.attempt), [b"x"])
    assert s3_server.keys() == [f"results/{job.id}-1"]
    cancel_job(job.id)
    assert s3_server.keys() == []


def test_a_result_written_after_a_cancel_is_deleted(s3_app: Flask, s3_server: S3Server) -> None:
    """A worker that uploads after its job was cancelled deletes its own object."""
    Job.create_and_enqueue(workers.CancelsThenReturnsBytes)
    assert s3_server.keys() == []


def test_the_purge_aborts_an_upload_cut_short(
    s3_app: Flask, s3_server: S3Server, store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload its process left (it died mid-write) is aborted once no job runs it.

    (moto dates every upload 2010: the age rule is the directory store's test's.)
    """
    failed = Job.create_and_enqueue(workers.Boom)
    jobs = INTERNALS.job_store(current_app)
    running = lifecycle.new_job("tests.workers:ReturnBytes", {"args": [], "kwargs": {}})
    lifecycle.insert(jobs, running)
    assert lifecycle.claim(jobs, running.id, timedelta(minutes=1)) is not None
    # As if the processes died before they could abort them.
    monkeypatch.setattr(store.client, "abort_multipart_upload", lambda **kwargs: None)
    for job_id in (failed.id, running.id):
        with pytest.raises(OSError):
            store.write(result_name(job_id, 1), _raising())
    monkeypatch.undo()
    assert len(s3_server.uploads()) == 2
    purge_jobs(timedelta(days=1))
    assert s3_server.uploads() == [f"results/{running.id}-1"]


def _raising() -> Iterator[bytes]:
    yield b"x" * 10
    raise OSError("killed")


def test_an_object_no_job_recorded_is_deleted_once_stale(
    s3_app: Flask, s3_server: S3Server, store: S3Store
) -> None:
    """An object whose job failed (its end never stored) is deleted; a job's result is kept."""
    failed = Job.create_and_enqueue(workers.Boom)
    store.write(result_name(failed.id, 1), [b"orphan"])
    kept = Job.create_and_enqueue(workers.ReturnBytes)
    store.stale_after = 0
    purge_jobs(timedelta(days=1))
    assert s3_server.keys() == [f"results/{kept.id}-1"]


def test_a_directory_app_still_redirects_an_object_written_before(
    make_app: AppFactory,
    store: S3Store,
    s3_server: S3Server,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Switched from S3 to a directory, an old result is still the object's redirect."""
    url = f"sqlite:///{tmp_path}/shared.db"
    before = make_app(SQLALCHEMY_DATABASE_URI=url, ASYNC_REQUEST_RESULT_STORE=store)
    with before.app_context():
        token = Job.create_and_enqueue(workers.ReturnBytes).token
    # The object's store is found from its location, with boto3's usual configuration.
    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    after = make_app(
        create_tables=False,
        SQLALCHEMY_DATABASE_URI=url,
        ASYNC_REQUEST_RESULT_STORE=str(tmp_path / "results"),
    )
    answer = _download(after.test_client(), token)
    assert answer.status_code == 303
    assert httpx.get(answer.headers["Location"], timeout=10).content == b"raw"


def test_a_store_that_cannot_sign_answers_503(
    s3_app: Flask, store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A presigned url that cannot be made (no credentials) is a 503, never a 500."""
    job = Job.create_and_enqueue(workers.ReturnBytes)

    def no_credentials(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("Unable to locate credentials")

    monkeypatch.setattr(store.client, "generate_presigned_url", no_credentials)
    answer = _download(s3_app.test_client(), job.token)
    assert answer.status_code == 503
    assert "credentials" not in answer.get_data(as_text=True)
