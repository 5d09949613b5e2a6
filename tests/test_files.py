"""Replies that are files: every kind round-trips through the result store and the result url."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, Response, current_app, request, send_file, stream_with_context

from flask_async_request import Job, JobStatus, asynchronous, lifecycle, results
from flask_async_request.models import ResultChunk
from flask_async_request.retention import purge_expired, purge_jobs
from flask_async_request.web import cancel_job
from tests import workers
from tests.conftest import INTERNALS, AppFactory, current_db, json_of, poll

TOKEN_HEADER = "X-JOB-AUTHORIZATION"


def _chunk_count(job_id: int | None = None) -> int:
    query = sa.select(sa.func.count()).select_from(ResultChunk)
    if job_id is not None:
        query = query.where(ResultChunk.job_id == job_id)
    session = current_db().session
    count = int(session.execute(query).scalar_one())
    session.commit()
    return count


def _finished(client: Any, token: str) -> dict[str, Any]:
    answer = poll(client, token)
    assert answer.status_code == 200, answer.data[:300]
    body: dict[str, Any] = json_of(answer)
    return body


def _download(client: Any, token: str, **headers: str) -> Any:
    return client.get("/async_request/result", headers={TOKEN_HEADER: token, **headers})


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    """Chunks of 1000 bytes, so a short result spans several."""
    monkeypatch.setattr(results, "CHUNK_SIZE", 1000)
    return 1000


def test_bytes_round_trip_with_headers(app: Flask, client: Any) -> None:
    """A bytes body is stored, named in the envelope, and downloaded byte-identical."""
    data = workers.ALL_BYTES
    disposition = 'attachment; filename="all.bin"'
    job = Job.create_and_enqueue(
        workers.ReturnValue, [200, None, "application/pdf", {"Content-Disposition": disposition}]
    )
    # None is text: the empty body stays in the row, with its header.
    assert _finished(client, job.token)["response"] == {
        "status_code": 200,
        "body": "",
        "content_type": "application/pdf",
        "headers": [["Content-Disposition", disposition]],
    }
    job = Job.create_and_enqueue(workers.ReturnBytes)
    response = _finished(client, job.token)["response"]
    assert "body" not in response
    assert response["size"] == 3
    assert response["sha256"] == hashlib.sha256(b"raw").hexdigest()
    assert response["content_type"] == "application/octet-stream"
    assert response["href"] == "http://localhost/async_request/result"
    download = _download(client, job.token)
    assert download.status_code == 200
    assert download.data == b"raw"
    assert download.headers["Content-Length"] == "3"
    assert download.headers["ETag"] == f'"{hashlib.sha256(b"raw").hexdigest()}"'
    assert download.headers["Accept-Ranges"] == "bytes"
    assert TOKEN_HEADER in download.headers["Vary"]
    del data


def test_file_path_round_trip(app: Flask, client: Any, tmp_path: Path, small_chunks: int) -> None:
    """A pathlib.Path is read in chunks; its type is guessed from its name, headers kept."""
    path = tmp_path / "picture.png"
    path.write_bytes(workers.ALL_BYTES * 3)
    headers = {"Content-Disposition": 'inline; filename="picture.png"', "Cache-Control": "no-store"}
    job = Job.create_and_enqueue(workers.ReturnFile, str(path), headers)
    response = _finished(client, job.token)["response"]
    assert response["size"] == len(workers.ALL_BYTES) * 3
    assert _chunk_count(job.id) == -(-response["size"] // small_chunks)
    download = _download(client, job.token)
    assert download.data == path.read_bytes()
    assert download.headers["Content-Type"] == "image/png"
    assert download.headers["Content-Disposition"] == 'inline; filename="picture.png"'
    assert download.headers["Cache-Control"] == "no-store"


def test_file_object_round_trip(app: Flask, client: Any) -> None:
    """A binary file object is read whole, with the status and content type given."""
    text = "".join(map(chr, range(256)))
    job = Job.create_and_enqueue(workers.ReturnFileObject, text)
    response = _finished(client, job.token)["response"]
    assert response["status_code"] == 201
    download = _download(client, job.token)
    assert download.data == text.encode("latin-1")
    assert download.headers["Content-Type"] == "application/x-test"


def test_chunks_round_trip(app: Flask, client: Any, small_chunks: int) -> None:
    """An iterator of chunks of any size is regrouped into stored chunks and read back whole."""
    job = Job.create_and_enqueue(workers.ReturnChunks, 7, 333)
    expected = b"".join(bytes([i]) * 333 for i in range(7))
    response = _finished(client, job.token)["response"]
    assert response["sha256"] == hashlib.sha256(expected).hexdigest()
    assert _chunk_count(job.id) == 3
    download = _download(client, job.token)
    assert download.data == expected
    assert download.headers["Link"] == '<https://a.test/>; rel="x"'


def test_response_round_trip_keeps_only_allowed_headers(app: Flask, client: Any) -> None:
    """A Werkzeug response: status, streamed body and kept headers; no Set-Cookie, no others."""
    job = Job.create_and_enqueue(workers.ReturnResponse)
    response = _finished(client, job.token)["response"]
    assert response["status_code"] == 201
    assert response["headers"] == [["Content-Disposition", 'attachment; filename="parts.csv"']]
    download = _download(client, job.token)
    assert download.data == b"made of parts"
    assert download.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert "Set-Cookie" not in download.headers
    assert "X-Internal" not in download.headers


def test_worker_header_not_kept_fails_the_job(app: Flask) -> None:
    """A worker naming a header a reply does not keep fails with the list of those kept."""
    job = Job.create_and_enqueue(workers.ReturnValue, [200, "x", None, {"Set-Cookie": "a=b"}])
    assert job.status is JobStatus.FAILED
    assert job.response is not None
    error = json.loads(job.response)["error"]
    assert "'Set-Cookie', which a reply does not keep" in error
    assert "Content-Disposition" in error


def test_text_above_threshold_goes_to_the_store(make_app: AppFactory) -> None:
    """Text larger than the threshold is downloaded; smaller text stays in the JSON as today."""
    app = make_app(ASYNC_REQUEST_RESULT_STORE_THRESHOLD=100)
    client = app.test_client()
    with app.app_context():
        small = Job.create_and_enqueue(workers.ReturnText, "é", 50)
        large = Job.create_and_enqueue(workers.ReturnText, "é", 51, "attachment")
        assert _finished(client, small.token)["response"] == {
            "status_code": 200,
            "body": "é" * 50,
            "content_type": "text/plain; charset=utf-8",
        }
        response = _finished(client, large.token)["response"]
        assert response["size"] == 102
        assert response["headers"] == [["Content-Disposition", "attachment"]]
        assert _download(client, large.token).data == ("é" * 51).encode()
        assert _chunk_count(small.id) == 0


def test_text_in_the_row_is_served_by_the_result_url(app: Flask, client: Any) -> None:
    """The result url serves a short text reply too, in its own charset."""
    job = Job.create_and_enqueue(workers.ReturnValue, [200, "½ off", "text/plain; charset=latin-1"])
    download = _download(client, job.token)
    assert download.data == "½ off".encode("latin-1")
    assert download.headers["Content-Type"] == "text/plain; charset=latin-1"
    assert download.headers["ETag"] == f'"{hashlib.sha256("½ off".encode("latin-1")).hexdigest()}"'


# Ranges, validators and HEAD ----------------------------------------------------------------


@pytest.fixture
def stored(app: Flask, client: Any, small_chunks: int) -> tuple[str, bytes]:
    """A job whose 2,500-byte result spans three chunks: its token and its bytes."""
    job = Job.create_and_enqueue(workers.ReturnChunks, 5, 500)
    return job.token, b"".join(bytes([i]) * 500 for i in range(5))


@pytest.mark.parametrize(
    ("header", "start", "stop"),
    [("bytes=0-9", 0, 10), ("bytes=990-1010", 990, 1011), ("bytes=-5", 2495, 2500)],
)
def test_single_range_is_206(
    client: Any, stored: tuple[str, bytes], header: str, start: int, stop: int
) -> None:
    """A single range answers 206 with those bytes, across chunk boundaries too."""
    token, data = stored
    answer = _download(client, token, Range=header)
    assert answer.status_code == 206
    assert answer.data == data[start:stop]
    assert answer.headers["Content-Range"] == f"bytes {start}-{stop - 1}/2500"
    assert answer.headers["Content-Length"] == str(stop - start)


def test_range_past_the_end_is_416(client: Any, stored: tuple[str, bytes]) -> None:
    """A range starting past the end answers 416 with the length in Content-Range."""
    answer = _download(client, stored[0], Range="bytes=2500-")
    assert answer.status_code == 416
    assert answer.headers["Content-Range"] == "bytes */2500"


def test_several_ranges_or_a_stale_if_range_get_the_whole(
    client: Any, stored: tuple[str, bytes]
) -> None:
    """Several ranges, or an If-Range of other bytes, answer 200 with the whole result."""
    token, data = stored
    several = _download(client, token, Range="bytes=0-1,5-6")
    assert (several.status_code, several.data) == (200, data)
    stale = _download(client, token, Range="bytes=0-1", **{"If-Range": '"0000"'})
    assert (stale.status_code, stale.data) == (200, data)
    etag = several.headers["ETag"]
    fresh = _download(client, token, Range="bytes=0-1", **{"If-Range": etag})
    assert (fresh.status_code, fresh.data) == (206, data[:2])


def test_if_none_match_is_304(client: Any, stored: tuple[str, bytes]) -> None:
    """The client holding the same bytes gets 304 and no body."""
    token, data = stored
    etag = _download(client, token).headers["ETag"]
    assert etag == f'"{hashlib.sha256(data).hexdigest()}"'
    answer = _download(client, token, **{"If-None-Match": etag})
    assert answer.status_code == 304
    assert answer.data == b""
    assert _download(client, token, **{"If-None-Match": '"other"'}).status_code == 200


def test_head_has_the_headers_and_no_body(client: Any, stored: tuple[str, bytes]) -> None:
    """HEAD answers the length and the ETag, with no body."""
    answer = client.head("/async_request/result", headers={TOKEN_HEADER: stored[0]})
    assert answer.status_code == 200
    assert answer.headers["Content-Length"] == "2500"
    assert answer.data == b""


# The result url's access rules, and the redirect -----------------------------------------


def test_result_url_refuses_as_the_status_url(app: Flask, client: Any) -> None:
    """Bad token 400; a pending or failed job 404; a purged job 404."""
    assert _download(client, "nonsense").status_code == 400
    failed = Job.create_and_enqueue(workers.Boom)
    assert _download(client, failed.token).status_code == 404
    job = Job.create_and_enqueue(workers.ReturnBytes)
    assert _download(client, job.token).status_code == 200
    current_db().session.commit()
    assert purge_jobs(timedelta(seconds=0), [JobStatus.PROCESSED]) >= 1
    assert _download(client, job.token).status_code == 404
    assert _chunk_count() == 0


def test_job_url_has_its_own_result_url(app: Flask, client: Any) -> None:
    """Polled at its own url, a job's href is its own result url, which needs no header."""
    job = Job.create_and_enqueue(workers.ReturnBytes)
    answer = client.get(f"/async_request/job/{job.token}")
    href = json_of(answer)["response"]["href"]
    assert href == f"http://localhost/async_request/job/{job.token}/result"
    download = client.get(href)
    assert download.data == b"raw"
    assert "Vary" not in download.headers


def test_redirect_mode_answers_303_to_the_result(make_app: AppFactory) -> None:
    """With ASYNC_REQUEST_REDIRECT_FINISHED a processed job's poll is 303 to its result url."""
    app = make_app(ASYNC_REQUEST_REDIRECT_FINISHED=True)
    client = app.test_client()
    with app.app_context():
        job = Job.create_and_enqueue(workers.ReturnBytes)
        failed = Job.create_and_enqueue(workers.Boom)
    own = client.get(f"/async_request/job/{job.token}")
    assert own.status_code == 303
    assert own.headers["Location"] == f"http://localhost/async_request/job/{job.token}/result"
    followed = client.get(f"/async_request/job/{job.token}", follow_redirects=True)
    assert (followed.status_code, followed.data) == (200, b"raw")
    shared = poll(client, job.token)
    assert shared.status_code == 303
    assert shared.headers["Location"] == "http://localhost/async_request/result"
    assert poll(client, failed.token).status_code == 200


# What becomes of the chunks ------------------------------------------------------------------


def test_purge_deletes_a_jobs_chunks(app: Flask, client: Any, small_chunks: int) -> None:
    """The periodic purge deletes an expired job's chunks with it."""
    job_id = Job.create_and_enqueue(workers.ReturnChunks, 3, 1000).id
    other_id = Job.create_and_enqueue(workers.ReturnChunks, 2, 1000).id
    assert _chunk_count() == 5
    session = current_db().session
    aged = Job.finished_at - timedelta(days=2)
    session.execute(sa.update(Job).where(Job.id == job_id).values(finished_at=aged))
    session.commit()
    assert purge_expired() == 1
    assert _chunk_count(job_id) == 0
    assert _chunk_count(other_id) == 2


def test_cancel_deletes_the_chunks_written(app: Flask) -> None:
    """Cancelling a running job deletes what its worker wrote of a result."""
    store = INTERNALS.job_store(current_app)
    job = lifecycle.new_job("tests.workers:ReturnBytes", {"args": [], "kwargs": {}})
    lifecycle.insert(store, job)
    claim = lifecycle.claim(store, job.id, timedelta(minutes=1))
    assert claim is not None
    results.write(results.autocommitted(store), job.id, claim.attempt, [b"x" * 10])
    assert _chunk_count(job.id) == 1
    cancel_job(job.id)
    assert _chunk_count(job.id) == 0


def test_crash_mid_write_fails_readably_and_purge_removes_the_chunks(
    app: Flask, client: Any, small_chunks: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker raising after some chunks: failed with its error, no result; the purge cleans up."""
    # As if the process died before it could delete what it wrote.
    monkeypatch.setattr(results, "discard", lambda *args, **kwargs: None)
    job = Job.create_and_enqueue(workers.ReturnChunks, 5, 1000, fail_after=3)
    answer = _finished(client, job.token)
    assert answer["status"] == "failed"
    assert json.loads(answer["response"]["body"]) == {"error": "the disk went away"}
    assert "href" not in answer["response"]
    assert _chunk_count(job.id) == 3
    assert _download(client, job.token).status_code == 404
    purge_jobs(timedelta(days=1))
    assert _chunk_count(job.id) == 0


def test_crash_mid_write_deletes_its_chunks_at_once(
    app: Flask, client: Any, small_chunks: int
) -> None:
    """A worker raising after some chunks leaves none behind when the runner can delete them."""
    job = Job.create_and_enqueue(workers.ReturnChunks, 5, 1000, fail_after=2)
    assert _finished(client, job.token)["status"] == "failed"
    assert _chunk_count(job.id) == 0


def test_purge_deletes_chunks_of_jobs_gone(app: Flask) -> None:
    """Chunks whose job no longer exists (deleted by hand) are deleted by the purge."""
    store = INTERNALS.job_store(current_app)
    results.write(results.autocommitted(store), 12345, 1, [b"orphan"])
    assert _chunk_count(12345) == 1
    purge_jobs(timedelta(days=1))
    assert _chunk_count(12345) == 0


# @asynchronous views ------------------------------------------------------------------------


@pytest.fixture
def file_views(make_app: AppFactory, tmp_path: Path) -> Flask:
    app = make_app()
    path = tmp_path / "report.bin"
    path.write_bytes(workers.ALL_BYTES * 4)

    @app.get("/report")
    @asynchronous
    def report() -> Any:
        return send_file(path, as_attachment=True, download_name="report.bin")

    @app.get("/binary")
    @asynchronous
    def binary() -> Any:
        response = Response(b"\xff\xfe\x00binary", mimetype="application/octet-stream")
        response.set_cookie("session", "secret")
        return response

    @app.get("/stream")
    @asynchronous
    def stream() -> Any:
        def rows() -> Iterator[str]:
            for index in range(3):
                yield f"{request.args['name']},{index}\n"

        return Response(stream_with_context(rows()), mimetype="text/csv")

    @app.get("/text")
    @asynchronous
    def text() -> Any:
        response = Response("plain", mimetype="text/plain")
        response.headers["Content-Disposition"] = 'attachment; filename="a.txt"'
        return response, 201

    return app


def _view_result(app: Flask, url: str, **headers: str) -> tuple[dict[str, Any], Any]:
    client = app.test_client()
    accepted = client.get(url, headers=headers)
    assert accepted.status_code == 202, accepted.data
    token = json_of(accepted)["token"]
    return _finished(client, token)["response"], _download(client, token)


def test_view_returning_send_file(file_views: Flask, tmp_path: Path) -> None:
    """send_file's file is replayed byte-identical with its disposition and Last-Modified."""
    response, download = _view_result(file_views, "/report")
    assert download.data == (tmp_path / "report.bin").read_bytes()
    assert download.headers["Content-Disposition"] == "attachment; filename=report.bin"
    assert "Last-Modified" in download.headers
    assert download.headers["ETag"] == f'"{response["sha256"]}"'


def test_view_returning_binary_drops_set_cookie(file_views: Flask) -> None:
    """A binary body goes to the store; the view's Set-Cookie is not kept."""
    response, download = _view_result(file_views, "/binary")
    assert download.data == b"\xff\xfe\x00binary"
    assert "Set-Cookie" not in download.headers
    assert "headers" not in response


def test_view_returning_a_stream(file_views: Flask) -> None:
    """A streamed response (stream_with_context) is read into the store."""
    _, download = _view_result(file_views, "/stream?name=x")
    assert download.data == b"x,0\nx,1\nx,2\n"
    assert download.headers["Content-Type"] == "text/csv; charset=utf-8"


def test_view_text_stays_in_the_row_with_its_headers(file_views: Flask) -> None:
    """A short text response is in the JSON as today, its kept headers beside it."""
    response, download = _view_result(file_views, "/text")
    assert response == {
        "status_code": 201,
        "body": "plain",
        "content_type": "text/plain; charset=utf-8",
        "headers": [["Content-Disposition", 'attachment; filename="a.txt"']],
    }
    assert download.data == b"plain"


def test_prefer_wait_answers_with_the_file(file_views: Flask, tmp_path: Path) -> None:
    """A view's job done within Prefer: wait answers with the file itself."""
    answer = file_views.test_client().get("/report", headers={"Prefer": "wait=5"})
    assert answer.status_code == 200
    assert answer.data == (tmp_path / "report.bin").read_bytes()
    assert answer.headers["Preference-Applied"] == "wait=5"


# Memory --------------------------------------------------------------------------------------


class _Fifty:
    """50 MiB in 1 MiB chunks, made as they are read."""

    def __iter__(self) -> Iterator[bytes]:
        for index in range(50):
            yield bytes([index]) * (1024 * 1024)


def test_a_large_result_is_written_and_read_in_bounded_memory(app: Flask, client: Any) -> None:
    """50 MiB go in and out with a peak of a few chunks, never the whole result."""
    store = INTERNALS.job_store(current_app)
    job = lifecycle.new_job("tests.workers:ReturnBytes", {"args": [], "kwargs": {}})
    lifecycle.insert(store, job)
    claim = lifecycle.claim(store, job.id, timedelta(minutes=1))
    assert claim is not None
    tracemalloc.start()
    try:
        written = results.write(results.autocommitted(store), job.id, claim.attempt, _Fifty())
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        total = 0
        for piece in results.read(store, job.id, claim.attempt, 0, written.size):
            total += len(piece)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (written.size, total) == (50 * 1024 * 1024, 50 * 1024 * 1024)
    # A generous bound: a handful of 1 MiB chunks, far from 50 MiB.
    assert write_peak < 12 * 1024 * 1024, write_peak
    assert read_peak < 12 * 1024 * 1024, read_peak


def test_transactional_worker_stores_its_result_in_its_transaction(
    app: Flask, client: Any, small_chunks: int
) -> None:
    """A transactional worker's chunks commit with its end, on SQLite's one writer too."""
    job = Job.create_and_enqueue(workers.TransactionalBytes)
    assert job.status is JobStatus.PROCESSED
    assert _chunk_count(job.id) == 3
    assert _download(client, job.token).data == b"".join(bytes([i]) * 1000 for i in range(3))
