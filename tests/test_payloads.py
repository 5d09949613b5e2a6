"""payloads: what a worker or view may return, each kind round-tripped, and the headers kept."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response, request, send_file, stream_with_context

from flask_async_request import Job, JobStatus, asynchronous
from tests import workers
from tests.conftest import (
    TOKEN_HEADER,
    AppFactory,
    chunk_count,
    download_result,
    json_of,
    poll_finished,
)


def test_bytes_round_trip_with_headers(app: Flask, client: Any) -> None:
    """A bytes body is stored, named in the envelope, and downloaded byte-identical."""
    data = workers.ALL_BYTES
    disposition = 'attachment; filename="all.bin"'
    job = Job.create_and_enqueue(
        workers.ReturnValue, [200, None, "application/pdf", {"Content-Disposition": disposition}]
    )
    # None is text: the empty body stays in the row, with its header.
    assert poll_finished(client, job.token)["response"] == {
        "status_code": 200,
        "body": "",
        "content_type": "application/pdf",
        "headers": [["Content-Disposition", disposition]],
    }
    job = Job.create_and_enqueue(workers.ReturnBytes)
    response = poll_finished(client, job.token)["response"]
    assert "body" not in response
    assert response["size"] == 3
    assert response["sha256"] == hashlib.sha256(b"raw").hexdigest()
    assert response["content_type"] == "application/octet-stream"
    assert response["href"] == "http://localhost/async_request/result"
    download = download_result(client, job.token)
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
    response = poll_finished(client, job.token)["response"]
    assert response["size"] == len(workers.ALL_BYTES) * 3
    assert chunk_count(job.id) == -(-response["size"] // small_chunks)
    download = download_result(client, job.token)
    assert download.data == path.read_bytes()
    assert download.headers["Content-Type"] == "image/png"
    assert download.headers["Content-Disposition"] == 'inline; filename="picture.png"'
    assert download.headers["Cache-Control"] == "no-store"


def test_file_object_round_trip(app: Flask, client: Any) -> None:
    """A binary file object is read whole, with the status and content type given."""
    text = "".join(map(chr, range(256)))
    job = Job.create_and_enqueue(workers.ReturnFileObject, text)
    response = poll_finished(client, job.token)["response"]
    assert response["status_code"] == 201
    download = download_result(client, job.token)
    assert download.data == text.encode("latin-1")
    assert download.headers["Content-Type"] == "application/x-test"


def test_chunks_round_trip(app: Flask, client: Any, small_chunks: int) -> None:
    """An iterator of chunks of any size is regrouped into stored chunks and read back whole."""
    job = Job.create_and_enqueue(workers.ReturnChunks, 7, 333)
    expected = b"".join(bytes([i]) * 333 for i in range(7))
    response = poll_finished(client, job.token)["response"]
    assert response["sha256"] == hashlib.sha256(expected).hexdigest()
    assert chunk_count(job.id) == 3
    download = download_result(client, job.token)
    assert download.data == expected
    assert download.headers["Link"] == '<https://a.test/>; rel="x"'


def test_response_round_trip_keeps_only_allowed_headers(app: Flask, client: Any) -> None:
    """A Werkzeug response: status, streamed body and kept headers; no Set-Cookie, no others."""
    job = Job.create_and_enqueue(workers.ReturnResponse)
    response = poll_finished(client, job.token)["response"]
    assert response["status_code"] == 201
    assert response["headers"] == [["Content-Disposition", 'attachment; filename="parts.csv"']]
    download = download_result(client, job.token)
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
        assert poll_finished(client, small.token)["response"] == {
            "status_code": 200,
            "body": "é" * 50,
            "content_type": "text/plain; charset=utf-8",
        }
        response = poll_finished(client, large.token)["response"]
        assert response["size"] == 102
        assert response["headers"] == [["Content-Disposition", "attachment"]]
        assert download_result(client, large.token).data == ("é" * 51).encode()
        assert chunk_count(small.id) == 0


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
    return poll_finished(client, token)["response"], download_result(client, token)


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
