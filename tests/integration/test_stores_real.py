"""The directory and object stores with a real `celery worker` and PostgreSQL: multi-MiB results."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core import PipelineClient
from azure.core.pipeline.policies import RedirectPolicy, RequestIdPolicy
from azure.core.polling import LROPoller
from azure.core.polling.base_polling import LROBasePolling
from azure.core.rest import HttpRequest

from tests.conftest import serving
from tests.integration.conftest import Stack
from tests.s3server import S3Server

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
COUNT = 6
DATA = b"".join(bytes([i]) * MIB for i in range(COUNT))
TOKEN_HEADER = "X-JOB-AUTHORIZATION"


def _finished(base: str, token: str) -> httpx.Response:
    deadline = time.monotonic() + 60
    while True:
        answer = httpx.get(f"{base}/async_request/job/{token}", follow_redirects=False, timeout=10)
        if answer.status_code != 202:
            return answer
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.1)


def _export(base: str) -> str:
    accepted = httpx.post(f"{base}/chunks/{COUNT}", timeout=10)
    assert accepted.status_code == 202, accepted.text
    token: str = accepted.json()["token"]
    return token


def _poller_result(base: str) -> bytes:
    """The bytes azure-core's LROPoller ends with, following Location and the 303s alone.

    The pipeline follows redirects, and leaves out azure-core's content decoding,
    which takes JSON, XML and text only: the poller reads the statuses' JSON itself.
    """
    client: PipelineClient[Any, Any] = PipelineClient(
        base_url=base, policies=[RequestIdPolicy(), RedirectPolicy()]
    )
    initial = client.send_request(
        HttpRequest("POST", f"{base}/chunks/{COUNT}"), _return_pipeline_response=True
    )
    assert initial.http_response.status_code == 202
    poller = LROPoller(
        client, initial, lambda response: response.http_response.read(), LROBasePolling(0.1)
    )
    data: bytes = poller.result(timeout=120)
    return data


def test_directory_store_with_a_real_worker(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker process writes a 6 MiB file; the result url serves it byte-identical."""
    root = tmp_path / "results"
    monkeypatch.setenv("FAR_TEST_RESULT_STORE", str(root))
    app, worker = stack()
    with serving(app) as base:
        token = _export(base)
        envelope = _finished(base, token).json()["response"]
        assert (envelope["size"], envelope["sha256"]) == (
            len(DATA),
            hashlib.sha256(DATA).hexdigest(),
        )
        [name] = [path.name for path in root.iterdir()]
        assert (root / name).read_bytes() == DATA
        download = httpx.get(envelope["href"], timeout=30)
        assert download.status_code == 200, worker.output()
        assert download.content == DATA
        assert download.headers["Link"] == '<https://a.test/>; rel="x"'
        assert download.headers["ETag"] == f'"{envelope["sha256"]}"'
        ranged = httpx.get(envelope["href"], headers={"Range": "bytes=1048570-1048585"}, timeout=10)
        assert (ranged.status_code, ranged.content) == (206, DATA[1048570:1048586])
        head = httpx.head(envelope["href"], timeout=10)
        assert head.headers["Content-Length"] == str(len(DATA))


def test_directory_store_303_mode_with_azure_cores_poller(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A generic client following Location alone ends with the file's bytes."""
    monkeypatch.setenv("FAR_TEST_RESULT_STORE", str(tmp_path / "results"))
    monkeypatch.setenv("FAR_TEST_REDIRECT_FINISHED", "1")
    app, _ = stack()
    with serving(app) as base:
        assert _poller_result(base) == DATA


def test_object_store_with_a_real_worker(
    stack: Stack, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker uploads 6 MiB in parts; the result url redirects to it; the poller follows."""
    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FAR_TEST_RESULT_STORE", f"s3://{s3_server.bucket}/it/")
    monkeypatch.setenv("FAR_TEST_REDIRECT_FINISHED", "1")
    app, worker = stack()
    with serving(app) as base:
        token = _export(base)
        finished = _finished(base, token)
        assert finished.status_code == 303, finished.text
        result_url = finished.headers["Location"]
        redirect = httpx.get(result_url, follow_redirects=False, timeout=10)
        assert redirect.status_code == 303, worker.output()
        presigned = redirect.headers["Location"]
        assert presigned.startswith(s3_server.endpoint)
        assert token not in presigned
        assert httpx.get(presigned, timeout=30).content == DATA
        assert len(s3_server.keys()) == 1
        assert s3_server.uploads() == []
        assert _poller_result(base) == DATA
