"""The Python client, wait_for(), against the example app served on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, cast

import pytest

from flask_async_request import AsyncRequestError
from flask_async_request.client import JobResult, wait_for


def _start(base: str, limit: int) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{base}/primes",
        data=json.dumps({"limit": limit}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request) as response:
        assert response.status == 202
        return dict(json.loads(response.read()))


class _Response:
    """A requests-like response."""

    def __init__(self, status_code: int, body: dict[str, Any]) -> None:
        self.status_code, self._body = status_code, body
        self.headers: dict[str, str] = {}

    def json(self) -> dict[str, Any]:
        return self._body


def test_wait_for_returns_the_reply(served_example: str) -> None:
    """wait_for(url=, token=) long-polls until the job finishes and returns its reply."""
    # Long enough (a few seconds) that the 1 s long polls see it pending first.
    started = _start(served_example, 200_000_000)
    progress: list[Any] = []
    result = wait_for(
        url=started["url"],
        token=started["token"],
        long_poll=1,
        on_progress=lambda fraction, message: progress.append(fraction),
    )
    assert isinstance(result, JobResult)
    assert result.ok
    assert json.loads(result.body)["primes"] == 11078937
    assert progress, "no pending answer was reported"


def test_wait_for_takes_the_starting_response(served_example: str) -> None:
    """A requests-style 202 response is enough."""
    started = _start(served_example, 1000)
    result = wait_for(_Response(202, started))
    assert (result.status, result.status_code) == ("processed", 200)


def _start_request(base: str, limit: int) -> urllib.request.Request:
    return urllib.request.Request(
        f"{base}/primes",
        data=json.dumps({"limit": limit}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )


def test_wait_for_takes_what_urlopen_returns(served_example: str) -> None:
    """urllib.request.urlopen's response (status in .status, body unread) is a starting response."""
    with urllib.request.urlopen(_start_request(served_example, 1000)) as response:
        result = wait_for(response, timeout=60)
    assert (result.status, result.status_code) == ("processed", 200)


def test_wait_for_says_when_the_body_was_read(served_example: str) -> None:
    """A urlopen response whose body was read already is refused with what to do instead."""
    with urllib.request.urlopen(_start_request(served_example, 1000)) as response:
        response.read()
        with pytest.raises(AsyncRequestError, match="read already"):
            wait_for(response)


def test_wait_for_names_what_it_takes() -> None:
    """Something that is not a response is a TypeError naming what is accepted."""
    with pytest.raises(TypeError, match=r"takes a requests, httpx .* urllib\.request\.urlopen"):
        wait_for({"token": "t", "url": "http://x/job"})


def test_wait_for_times_out(served_example: str) -> None:
    """A job that does not finish in time raises TimeoutError."""
    started = _start(served_example, 400_000_000)
    with pytest.raises(TimeoutError):
        wait_for(url=started["url"], token=started["token"], timeout=1)


def test_wait_for_with_a_bad_token(served_example: str) -> None:
    """A refused token is an AsyncRequestError naming the answer."""
    started = _start(served_example, 1000)
    with pytest.raises(AsyncRequestError, match="answered 400"):
        # The shared endpoint, where the header's token is the one that counts.
        wait_for(url=started["url"].rsplit("/", 1)[0], token="forged")


def test_wait_for_refuses_a_non_202() -> None:
    """A start that failed is reported, not polled."""
    with pytest.raises(AsyncRequestError, match="answered 400, not 202"):
        wait_for(_Response(400, {"errors": []}))


class _Flaky(BaseHTTPRequestHandler):
    """Answers 503 with Retry-After a few times, then the finished job; records headers."""

    unavailable = 2
    seen: list[dict[str, str]]

    def do_GET(self) -> None:
        self.seen.append(dict(self.headers))
        if len(self.seen) <= self.unavailable:
            self.send_response(503)
            self.send_header("Retry-After", "0")
            body = b'{"errors": [{"message": "The job store is unavailable; try again later."}]}'
        else:
            self.send_response(200)
            body = b'{"status": "processed", "response": {"status_code": 200, "body": "ok"}}'
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _serve(handler: type[BaseHTTPRequestHandler], port: int = 0) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_wait_for_waits_out_a_503_with_retry_after() -> None:
    """The server's own 503 + Retry-After is asked again, not given up; extra headers go along."""
    handler = cast("type[_Flaky]", type("Handler", (_Flaky,), {"seen": []}))
    server = _serve(handler)
    try:
        result = wait_for(
            url=f"http://127.0.0.1:{server.server_port}/job",
            token="t",
            headers={"Authorization": "Bearer user"},
            timeout=10,
        )
    finally:
        server.shutdown()
    assert result.ok and result.body == "ok"
    assert len(handler.seen) == 3
    assert all(seen["Authorization"] == "Bearer user" for seen in handler.seen)


def test_wait_for_retries_a_refused_connection() -> None:
    """A server that is down for a moment is tried again with a backoff."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    handler = type("Handler", (_Flaky,), {"seen": [], "unavailable": 0})
    timer = threading.Timer(1.5, lambda: servers.append(_serve(handler, port)))
    servers: list[ThreadingHTTPServer] = []
    timer.start()
    try:
        result = wait_for(url=f"http://127.0.0.1:{port}/job", token="t", timeout=15)
    finally:
        timer.join()
        for server in servers:
            server.shutdown()
    assert result.ok


def test_wait_for_gives_up_on_a_server_that_stays_down() -> None:
    """Connection errors past the timeout are an AsyncRequestError, not a raw URLError."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(AsyncRequestError, match="failed"):
        wait_for(url=f"http://127.0.0.1:{port}/job", token="t", timeout=2)


def test_the_client_loads_without_the_server_stack() -> None:
    """Importing the client loads none of Flask, Celery, SQLAlchemy, Alembic or PyJWT."""
    code = (
        "import sys, flask_async_request.client\n"
        "from flask_async_request import AsyncRequestError\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(loaded & {'flask', 'celery', 'sqlalchemy', 'alembic', 'jwt', 'kombu'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


class _Redirects(BaseHTTPRequestHandler):
    """Redirects every poll to another server, which records what it receives."""

    target = ""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.target)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class _Records(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        _Records.seen.append(dict(self.headers))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_redirect_is_not_followed_with_the_token() -> None:
    """The token and the caller's headers never reach the server a redirect names."""
    elsewhere = _serve(_Records)
    _Redirects.target = f"http://127.0.0.1:{elsewhere.server_address[1]}/steal"
    server = _serve(_Redirects)
    try:
        with pytest.raises(AsyncRequestError, match="302"):
            wait_for(
                url=f"http://127.0.0.1:{server.server_address[1]}/async_request/job",
                token="secret-token",
                headers={"Authorization": "Bearer secret"},
                timeout=5,
            )
    finally:
        server.shutdown()
        elsewhere.shutdown()
    assert _Records.seen == []
