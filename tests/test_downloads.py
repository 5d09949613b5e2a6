"""downloads: the result url's bytes, ranges, validators and HEAD, its refusals and redirect."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from flask_async_request import Job, JobStatus
from flask_async_request.retention import purge_jobs
from tests import workers
from tests.conftest import (
    TOKEN_HEADER,
    AppFactory,
    chunk_count,
    current_db,
    download_result,
    json_of,
    poll,
)


def test_text_in_the_row_is_served_by_the_result_url(app: Flask, client: Any) -> None:
    """The result url serves a short text reply too, in its own charset."""
    job = Job.create_and_enqueue(workers.ReturnValue, [200, "½ off", "text/plain; charset=latin-1"])
    download = download_result(client, job.token)
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
    answer = download_result(client, token, Range=header)
    assert answer.status_code == 206
    assert answer.data == data[start:stop]
    assert answer.headers["Content-Range"] == f"bytes {start}-{stop - 1}/2500"
    assert answer.headers["Content-Length"] == str(stop - start)


def test_range_past_the_end_is_416(client: Any, stored: tuple[str, bytes]) -> None:
    """A range starting past the end answers 416 with the length in Content-Range."""
    answer = download_result(client, stored[0], Range="bytes=2500-")
    assert answer.status_code == 416
    assert answer.headers["Content-Range"] == "bytes */2500"


def test_several_ranges_or_a_stale_if_range_get_the_whole(
    client: Any, stored: tuple[str, bytes]
) -> None:
    """Several ranges, or an If-Range of other bytes, answer 200 with the whole result."""
    token, data = stored
    several = download_result(client, token, Range="bytes=0-1,5-6")
    assert (several.status_code, several.data) == (200, data)
    stale = download_result(client, token, Range="bytes=0-1", **{"If-Range": '"0000"'})
    assert (stale.status_code, stale.data) == (200, data)
    etag = several.headers["ETag"]
    fresh = download_result(client, token, Range="bytes=0-1", **{"If-Range": etag})
    assert (fresh.status_code, fresh.data) == (206, data[:2])


def test_if_none_match_is_304(client: Any, stored: tuple[str, bytes]) -> None:
    """The client holding the same bytes gets 304 and no body."""
    token, data = stored
    etag = download_result(client, token).headers["ETag"]
    assert etag == f'"{hashlib.sha256(data).hexdigest()}"'
    answer = download_result(client, token, **{"If-None-Match": etag})
    assert answer.status_code == 304
    assert answer.data == b""
    assert download_result(client, token, **{"If-None-Match": '"other"'}).status_code == 200


def test_head_has_the_headers_and_no_body(client: Any, stored: tuple[str, bytes]) -> None:
    """HEAD answers the length and the ETag, with no body."""
    answer = client.head("/async_request/result", headers={TOKEN_HEADER: stored[0]})
    assert answer.status_code == 200
    assert answer.headers["Content-Length"] == "2500"
    assert answer.data == b""


# The result url's access rules, and the redirect -----------------------------------------


def test_result_url_refuses_as_the_status_url(app: Flask, client: Any) -> None:
    """Bad token 400; a pending or failed job 404; a purged job 404."""
    assert download_result(client, "nonsense").status_code == 400
    failed = Job.create_and_enqueue(workers.Boom)
    assert download_result(client, failed.token).status_code == 404
    job = Job.create_and_enqueue(workers.ReturnBytes)
    assert download_result(client, job.token).status_code == 200
    current_db().session.commit()
    assert purge_jobs(timedelta(seconds=0), [JobStatus.PROCESSED]) >= 1
    assert download_result(client, job.token).status_code == 404
    assert chunk_count() == 0


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
