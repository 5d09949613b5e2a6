"""Where callbacks may go: refused inward by default, pinned to the address checked, bounded.

No test here sends a packet anywhere but loopback: the resolver and the connect
step are replaced where a non-loopback address is involved, and a replaced
connect that is reached where it must not be fails the test.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import pytest
from flask import Flask
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.orm import scoped_session

from flask_async_request import Job, JobStatus, webhooks
from flask_async_request.webhooks import CallbackRefused, DeliveryError, deliver, resolve_target
from tests import workers
from tests.conftest import AppFactory, add_job, current_db
from tests.test_idempotency_webhooks import Receiver

INWARD = [
    "127.0.0.1",
    "127.8.9.10",
    "::1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "0.0.0.0",
    "::",
    "224.0.0.1",
    "ff02::1",
    "fe80::1",
    "fc00::1",
    "100.64.0.1",
    "64:ff9b::7f00:1",
    "2002:7f00:1::",
]


def _resolving_to(*addresses: str) -> Callable[..., list[Any]]:
    """A stand-in for getaddrinfo that answers ``addresses`` for any name."""

    def resolve(host: str, port: int, **kwargs: Any) -> list[Any]:
        family = socket.AF_INET
        return [
            (
                socket.AF_INET6 if ":" in address else family,
                socket.SOCK_STREAM,
                6,
                "",
                (address, port),
            )
            for address in addresses
        ]

    return resolve


@pytest.fixture
def no_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any delivery tries to connect."""

    def connect(address: Any, timeout: Any = None) -> Any:
        pytest.fail(f"a refused callback connected to {address}")

    monkeypatch.setattr(webhooks, "_connect", connect)


@pytest.fixture
def guarded(make_app: AppFactory) -> Iterator[Flask]:
    """An app with the default guard: callbacks go to public addresses only."""
    app = make_app(ASYNC_REQUEST_CALLBACK_ALLOW_PRIVATE=False)
    with app.app_context():
        yield app


@pytest.mark.parametrize("address", INWARD)
def test_inward_addresses_are_refused(
    address: str, monkeypatch: pytest.MonkeyPatch, no_connect: None
) -> None:
    """Loopback, private, link-local, multicast, unspecified and mapped forms are refused."""
    monkeypatch.setattr(webhooks, "_resolve", _resolving_to(address))
    with pytest.raises(CallbackRefused, match="public addresses only"):
        resolve_target("https://hooks.example.com/x", allow_private=False)


@pytest.mark.parametrize("literal", ["127.0.0.1", "[::1]", "10.0.0.7", "169.254.169.254"])
def test_literal_inward_urls_are_refused(literal: str, no_connect: None) -> None:
    """A url naming an inward address itself is refused (it resolves to itself)."""
    with pytest.raises(CallbackRefused):
        resolve_target(f"http://{literal}:8080/hook", allow_private=False)


def test_a_name_with_one_inward_address_is_refused(
    monkeypatch: pytest.MonkeyPatch, no_connect: None
) -> None:
    """A name that resolves both outward and inward is refused whole."""
    monkeypatch.setattr(webhooks, "_resolve", _resolving_to("93.184.216.34", "10.0.0.1"))
    with pytest.raises(CallbackRefused, match=re.escape("10.0.0.1 is a private address")):
        resolve_target("https://hooks.example.com/x", allow_private=False)


@given(st.ip_addresses())
def test_refusal_decides_for_every_address(ip: Any) -> None:
    """Any IPv4 or IPv6 address gets a decision, never an error; non-global ones are refused."""
    reason = webhooks.refusal(str(ip))
    if not ip.is_global or ip.is_private or ip.is_loopback or ip.is_multicast:
        assert reason is not None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        assert (reason is None) == (webhooks.refusal(str(ip.ipv4_mapped)) is None)


def test_refused_callback_is_noted_on_the_job_and_logged(
    guarded: Flask,
    monkeypatch: pytest.MonkeyPatch,
    no_connect: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The refusal is logged, never retried, and `flask async-request show` tells why."""
    monkeypatch.setattr(webhooks, "_resolve", _resolving_to("169.254.169.254"))
    job = Job.create_and_enqueue(workers.Echo, callback_url="http://metadata.example/latest")
    assert job.status is JobStatus.PROCESSED
    assert "callback refused" in caplog.text
    result = guarded.test_cli_runner().invoke(args=["async-request", "show", str(job.id)])
    assert "refused: metadata.example resolves to 169.254.169.254 is a link-local" in (
        result.output
    )


def test_delivery_connects_to_the_address_it_checked(
    guarded: Flask, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    """The POST goes to the address resolved and checked, with the name in Host: no rebinding."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])

    def resolve(host: str, port: int, **kwargs: Any) -> list[Any]:
        return _resolving_to(*next(answers))(host, port)

    connected: list[Any] = []
    port = int(receiver.url.rsplit(":", 1)[1].split("/")[0])

    def connect(address: Any, timeout: Any = None) -> socket.socket:
        connected.append(address)
        # Stand in for the public host: the test's receiver on loopback.
        return socket.create_connection(("127.0.0.1", port), timeout)

    monkeypatch.setattr(webhooks, "_resolve", resolve)
    monkeypatch.setattr(webhooks, "_connect", connect)
    job = add_job()
    job.callback_url = f"http://hooks.example.com:{port}/hook"
    current_db().session.commit()
    assert deliver(job.id)
    assert connected == [("93.184.216.34", port)]
    assert receiver.calls[0][1]["Host"] == f"hooks.example.com:{port}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.server.shutdown()


class _Misbehaving(BaseHTTPRequestHandler):
    """Answers a redirect, an endless body, or nothing, by path."""

    requests: list[str]

    def do_POST(self) -> None:
        self.requests.append(self.path)
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/redirect":
            self.send_response(307)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/endless":
            self.send_response(200)
            self.end_headers()
            chunk = b"x" * 65536
            try:
                for _ in range(10_000):
                    self.wfile.write(chunk)
            except OSError:
                pass
        elif self.path == "/silent":
            time.sleep(3)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def misbehaving() -> Iterator[tuple[str, list[str]]]:
    handler = cast("type[_Misbehaving]", type("Handler", (_Misbehaving,), {"requests": []}))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", handler.requests
    server.shutdown()


def _job_calling(url: str) -> int:
    job = add_job(status=JobStatus.PROCESSED, status_code=200, response="ok")
    job.callback_url = url
    current_db().session.commit()
    return job.id


def test_redirects_are_not_followed(app: Flask, misbehaving: tuple[str, list[str]]) -> None:
    """A 3xx is a failed delivery; its Location is never requested."""
    base, requests = misbehaving
    with pytest.raises(DeliveryError, match="got 307"):
        deliver(_job_calling(f"{base}/redirect"))
    assert requests == ["/redirect"]


def test_an_endless_answer_is_read_no_further_than_the_limit(
    app: Flask, misbehaving: tuple[str, list[str]]
) -> None:
    """A receiver streaming a huge body does not hold the delivery."""
    base, _ = misbehaving
    started = time.monotonic()
    assert deliver(_job_calling(f"{base}/endless"))
    assert time.monotonic() - started < 5


def test_a_silent_receiver_times_out(
    app: Flask,
    session: scoped_session[Any],
    misbehaving: tuple[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A receiver that never answers fails the delivery after the timeout."""
    monkeypatch.setattr(webhooks, "TIMEOUT", 0.5)
    base, _ = misbehaving
    job_id = _job_calling(f"{base}/silent")
    started = time.monotonic()
    with pytest.raises(DeliveryError, match="could not be sent"):
        deliver(job_id, attempt=3)
    assert time.monotonic() - started < 2.5
    session.expire_all()
    job = session.get(Job, job_id)
    assert job is not None
    assert (job.callback_status or "").startswith("failed (delivery 3): could not be sent")


def test_private_targets_are_delivered_when_allowed(
    app: Flask, session: scoped_session[Any], receiver: Receiver
) -> None:
    """ASYNC_REQUEST_CALLBACK_ALLOW_PRIVATE lets callbacks reach 127.0.0.1."""
    job_id = _job_calling(receiver.url)
    assert deliver(job_id)
    session.expire_all()
    job = session.get(Job, job_id)
    assert job is not None and job.callback_status == "delivered: 200 (delivery 1)"
