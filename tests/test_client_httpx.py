"""The httpx client, in threads and in asyncio, against apps served on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from flask import request
from werkzeug.serving import make_server

from flask_async_request import AsyncRequest, AsyncRequestError, Job, accepted
from flask_async_request.client import JobResult
from flask_async_request.client_httpx import async_wait_for, wait_for
from tests.conftest import AppFactory, serving
from tests.workers import Sleep

#: Runs one way of waiting: (base url, cookies, how to start, wait_for options) -> result.
Waiter = Callable[..., JobResult]


def _sync(
    base: str, start: dict[str, Any] | None, cookies: dict[str, str], **options: Any
) -> JobResult:
    with httpx.Client(base_url=base, cookies=cookies) as client:
        started = None if start is None else client.post(**start)
        return wait_for(client, started, **options)


def _async(
    base: str, start: dict[str, Any] | None, cookies: dict[str, str], **options: Any
) -> JobResult:
    async def main() -> JobResult:
        async with httpx.AsyncClient(base_url=base, cookies=cookies) as client:
            started = None if start is None else await client.post(**start)
            return await async_wait_for(client, started, **options)

    return asyncio.run(main())


@pytest.fixture(params=[_sync, _async], ids=["sync", "async"])
def waiter(request: pytest.FixtureRequest) -> Waiter:
    """wait_for with an httpx.Client, or async_wait_for with an httpx.AsyncClient."""
    return request.param  # type: ignore[no-any-return]


def test_wait_for_returns_the_reply(served_example: str, waiter: Waiter) -> None:
    """The job's reply comes back after pending answers that report progress."""
    progress: list[Any] = []
    result = waiter(
        served_example,
        # Long enough (a few seconds) that the 1 s long polls see it pending first.
        {"url": "/primes", "json": {"limit": 200_000_000}},
        {},
        long_poll=1,
        on_progress=lambda fraction, message: progress.append(fraction),
    )
    assert isinstance(result, JobResult)
    assert result.ok
    assert json.loads(result.body)["primes"] == 11078937
    assert progress, "no pending answer was reported"


class _Flaky:
    """A WSGI app: 503 with Retry-After twice, then the finished job; records the requests."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.seen.append(
            {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k[:5] == "HTTP_"}
        )
        if len(self.seen) <= 2:
            start_response("503 Service Unavailable", [("Retry-After", "0")])
            return [b'{"errors": [{"message": "The job store is unavailable; try again later."}]}']
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"status": "processed", "response": {"status_code": 200, "body": "ok"}}']


def test_a_503_is_asked_again(waiter: Waiter) -> None:
    """503 with Retry-After is polled again, then the reply is returned; headers go along."""
    flaky = _Flaky()
    with serving(flaky) as base:
        result = waiter(
            base, None, {}, url="/job", token="t", headers={"Authorization": "Bearer u"}, timeout=10
        )
    assert result.ok and result.body == "ok"
    assert len(flaky.seen) == 3
    assert all(seen["authorization"] == "Bearer u" for seen in flaky.seen)
    assert all(seen["x-job-authorization"] == "Bearer t" for seen in flaky.seen)
    assert all(seen["prefer"].startswith("wait=") for seen in flaky.seen)


def test_a_refused_connection_is_tried_again(waiter: Waiter) -> None:
    """A server that is down for a moment is tried again with a backoff."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flaky = _Flaky()
    flaky.seen.extend([{}, {}])  # no 503 first
    servers: list[Any] = []

    def start() -> None:
        server = make_server("127.0.0.1", port, flaky, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)

    timer = threading.Timer(1.5, start)
    timer.start()
    try:
        result = waiter(f"http://127.0.0.1:{port}", None, {}, url="/job", token="t", timeout=15)
    finally:
        timer.join()
        for server in servers:
            server.shutdown()
    assert result.ok


def test_a_server_that_stays_down(waiter: Waiter) -> None:
    """Connection errors past the timeout are an AsyncRequestError, not httpx's own."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(AsyncRequestError, match="failed") as raised:
        waiter(f"http://127.0.0.1:{port}", None, {}, url="/job", token="t", timeout=2)
    assert isinstance(raised.value.__cause__, httpx.ConnectError)


@pytest.fixture
def owned_app(make_app: AppFactory) -> Iterator[str]:
    """An app whose jobs belong to the ``user`` cookie's identity, run by its embedded worker."""
    extension = AsyncRequest()
    app = make_app(CELERY={}, extension=extension)
    extension.identity_loader(lambda: request.cookies.get("user"))

    @app.post("/naps")
    def nap() -> Any:
        return accepted(Job.create_and_enqueue(Sleep, 0.3))

    with serving(app) as base:
        yield base


def test_a_job_bound_to_a_cookie(owned_app: str, waiter: Waiter) -> None:
    """The client's cookies go with every poll: the job's owner gets its reply."""
    result = waiter(owned_app, {"url": "/naps"}, {"user": "alice"}, long_poll=5, timeout=30)
    assert result.ok
    assert json.loads(result.body)["slept"] == 0.3


def test_a_job_bound_to_a_cookie_is_hidden_from_others(owned_app: str, waiter: Waiter) -> None:
    """Polled without the owner's cookie, the job does not exist."""
    with httpx.Client(base_url=owned_app, cookies={"user": "alice"}) as client:
        started = client.post("/naps").json()
    with pytest.raises(AsyncRequestError, match="answered 404"):
        waiter(owned_app, None, {"user": "mallory"}, url=started["url"], token=started["token"])


def test_a_start_that_is_not_202(waiter: Waiter, served_example: str) -> None:
    """A starting request that failed is reported, not polled."""
    with pytest.raises(AsyncRequestError, match="answered 400, not 202"):
        waiter(served_example, {"url": "/primes", "json": {"limit": "many"}}, {})


def test_the_httpx_client_loads_without_the_server_stack() -> None:
    """Importing the httpx client loads none of Flask, Celery or SQLAlchemy."""
    code = (
        "import sys, flask_async_request.client_httpx\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(loaded & {'flask', 'celery', 'sqlalchemy', 'alembic', 'jwt', 'kombu'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_a_redirect_is_not_followed_even_by_a_following_client() -> None:
    """A client made with follow_redirects=True still does not take the token elsewhere."""
    seen: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["PATH_INFO"])
        if environ["PATH_INFO"] == "/job":
            start_response("302 Found", [("Location", "/steal")])
        else:
            start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]

    with (
        serving(app) as base,
        httpx.Client(base_url=base, follow_redirects=True) as client,
        pytest.raises(AsyncRequestError, match="302"),
    ):
        wait_for(client, url="/job", token="t", timeout=5)
    assert seen == ["/job"]
