"""The Python clients download a job's result: to bytes, a path or a file, checked."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flask import Flask

from flask_async_request import AsyncRequestError, Job, Worker, client_httpx
from flask_async_request import client as stdlib_client
from flask_async_request.client import JobResult
from tests import workers
from tests.conftest import AppFactory, serving

#: What ReturnChunks(4, 100_000) returns.
DATA = b"".join(bytes([i]) * 100_000 for i in range(4))


@pytest.fixture
def served(make_app: AppFactory) -> Iterator[tuple[str, Flask]]:
    app = make_app()
    with serving(app) as base:
        yield base, app


def _finished(base: str, app: Flask, worker: type[Worker], *args: object) -> JobResult:
    with app.app_context():
        token = Job.create_and_enqueue(worker, *args).token
    return stdlib_client.wait_for(url=f"{base}/async_request/job/{token}", token=token, timeout=30)


def test_wait_for_names_a_stored_result(served: tuple[str, Flask]) -> None:
    """A reply in the result store comes back with its size, checksum and href, no body."""
    result = _finished(*served, workers.ReturnChunks, 4, 100_000)
    assert result.ok and result.stored
    assert (result.body, result.size) == ("", len(DATA))
    assert result.sha256 == hashlib.sha256(DATA).hexdigest()
    assert result.headers == (("Link", '<https://a.test/>; rel="x"'),)


def test_download_to_bytes_a_path_and_a_file(served: tuple[str, Flask], tmp_path: Path) -> None:
    """The stdlib client returns the bytes, or writes them to a path or a binary file."""
    result = _finished(*served, workers.ReturnChunks, 4, 100_000)
    assert stdlib_client.download(result) == DATA
    path = tmp_path / "result.bin"
    assert stdlib_client.download(result, path) == len(DATA)
    assert path.read_bytes() == DATA
    sink = io.BytesIO()
    assert stdlib_client.download(result, sink) == len(DATA)
    assert sink.getvalue() == DATA


def test_download_of_a_text_reply_is_its_bytes(served: tuple[str, Flask]) -> None:
    """A reply kept as text downloads as its bytes, in its charset, with no request."""
    result = _finished(*served, workers.ReturnValue, [200, "½", "text/plain; charset=latin-1"])
    assert not result.stored
    assert stdlib_client.download(result) == "½".encode("latin-1")


def test_a_download_that_does_not_match_is_refused_and_removed(
    served: tuple[str, Flask], tmp_path: Path
) -> None:
    """Bytes whose checksum differs raise, and the file begun is removed."""
    result = _finished(*served, workers.ReturnChunks, 4, 100_000)
    wrong = dataclasses.replace(result, sha256="0" * 64)
    path = tmp_path / "result.bin"
    with pytest.raises(AsyncRequestError, match="does not match its SHA-256"):
        stdlib_client.download(wrong, path)
    assert not path.exists()


def test_a_failed_job_has_nothing_to_download(served: tuple[str, Flask]) -> None:
    """Downloading a failed job's result is the library's error."""
    result = _finished(*served, workers.Boom)
    with pytest.raises(AsyncRequestError, match="failed; it has no result"):
        stdlib_client.download(result)


def test_httpx_downloads_in_threads_and_asyncio(served: tuple[str, Flask], tmp_path: Path) -> None:
    """The httpx client streams the result with a Client and with an AsyncClient."""
    result = _finished(*served, workers.ReturnChunks, 4, 100_000)
    with httpx.Client() as client:
        assert client_httpx.download(client, result) == DATA
        path = tmp_path / "sync.bin"
        assert client_httpx.download(client, result, path) == len(DATA)
        assert path.read_bytes() == DATA

    async def main() -> bytes | int:
        async with httpx.AsyncClient() as client:
            return await client_httpx.async_download(client, result, tmp_path / "async.bin")

    assert asyncio.run(main()) == len(DATA)
    assert (tmp_path / "async.bin").read_bytes() == DATA


def test_httpx_download_refused_is_the_librarys_error(served: tuple[str, Flask]) -> None:
    """A refused download is the library's error, naming the answer."""
    base, app = served
    result = _finished(base, app, workers.ReturnChunks, 4, 100_000)
    # The shared result url, whose token is the header's.
    gone = dataclasses.replace(result, href=f"{base}/async_request/result", token="not-a-token")
    with httpx.Client() as client, pytest.raises(AsyncRequestError, match="answered 400"):
        client_httpx.download(client, gone)
