"""webhooks: Standard Webhooks signing and checking, where a callback may go, and its delivery.

No test here sends a packet anywhere but loopback: the resolver and the connect
step are replaced where a non-loopback address is involved, and a replaced
connect that is reached where it must not be fails the test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import pytest
from flask import Flask
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from flask_async_request import Job, JobStatus, webhooks
from flask_async_request.callbacks import deliver, give_up
from flask_async_request.webhooks import (
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    TOLERANCE,
    CallbackRefused,
    DeliveryError,
    message_id,
    receiver_secret,
    refusal,
    resolve_target,
    secret_bytes,
    sign,
    verify_callback,
)
from tests import workers
from tests.conftest import SECRET, AppFactory, Receiver, add_job, job_calling, reload_job

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
    "fe80::1%eth0",
    "fc00::1",
    "100.64.0.1",
    "64:ff9b::7f00:1",
    "2002:7f00:1::",
]

#: Addresses callbacks may go to.
PUBLIC = ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:93.184.216.34"]


def _signed_headers(payload: bytes, key: str | bytes = SECRET, **changes: str) -> dict[str, str]:
    """The headers of a callback of ``payload`` signed now with ``key``."""
    message, timestamp = "msg_abc_1_processed", str(int(time.time()))
    headers = {
        ID_HEADER: message,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(message, timestamp, payload, key),
    }
    headers.update(changes)
    return headers


# Signing: the Standard Webhooks format ------------------------------------------------------


def test_sign_is_the_hmac_sha256_of_id_timestamp_and_body() -> None:
    """v1, then the base64 HMAC-SHA256 of "<id>.<timestamp>.<body>" with the key's bytes."""
    digest = hmac.new(b"k3y", b'msg_1.1700000000.{"a":1}', hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(digest).decode()
    assert sign("msg_1", "1700000000", b'{"a":1}', "k3y") == expected


@given(
    key=st.one_of(st.text(min_size=1), st.binary(min_size=1)),
    payload=st.binary(),
    message=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1),
    timestamp=st.integers(min_value=0, max_value=2**33),
)
def test_signatures_are_the_reference_implementation_s(
    key: str | bytes, payload: bytes, message: str, timestamp: int
) -> None:
    """The Standard Webhooks library, given receiver_secret(key), signs every message the same."""
    when = datetime.fromtimestamp(timestamp, timezone.utc)
    reference = Webhook(receiver_secret(key)).sign(message, when, payload)
    assert sign(message, str(timestamp), payload, key) == reference


def test_the_reference_implementation_verifies_a_signed_callback() -> None:
    """Headers signed here pass the reference verifier; a changed body or key does not."""
    payload = b'{"job_id":1,"status":"processed"}'
    headers = _signed_headers(payload)
    assert Webhook(receiver_secret(SECRET)).verify(payload, headers) == json.loads(payload)
    with pytest.raises(WebhookVerificationError):
        Webhook(receiver_secret(SECRET)).verify(payload + b" ", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(receiver_secret("another key")).verify(payload, headers)


def test_verify_callback_accepts_the_reference_implementation_s_signature() -> None:
    """A callback signed by the reference library verifies here with the same secret."""
    payload, now = b'{"x":1}', datetime.now(timezone.utc)
    secret = receiver_secret(SECRET)
    headers = {
        ID_HEADER: "msg_ref",
        TIMESTAMP_HEADER: str(int(now.timestamp())),
        SIGNATURE_HEADER: Webhook(secret).sign("msg_ref", now, payload),
    }
    assert verify_callback(payload, headers, key=SECRET)
    assert verify_callback(payload, headers, key=secret)


def test_secret_bytes_decodes_a_whsec_secret_only() -> None:
    """whsec_<base64> is decoded; bytes are used as they are; any other str is its UTF-8."""
    assert secret_bytes(b"\x00raw") == b"\x00raw"
    assert secret_bytes("whsec_" + base64.b64encode(b"\xffbin").decode()) == b"\xffbin"
    assert secret_bytes("plain key \u00e9") == "plain key \u00e9".encode()
    # Not base64 after the prefix: the whole str is the key.
    assert secret_bytes("whsec_not base64!") == b"whsec_not base64!"


@given(st.one_of(st.text(), st.binary()))
def test_receiver_secret_holds_the_same_key(key: str | bytes) -> None:
    """receiver_secret(key) is a whsec_ secret standing for the very bytes key signs with."""
    secret = receiver_secret(key)
    assert secret.startswith("whsec_")
    assert secret_bytes(secret) == secret_bytes(key)


def test_message_id_is_one_per_end_of_a_job() -> None:
    """The same end gives the same id; another attempt or status another one."""
    assert message_id("u1", 2, "processed") == message_id("u1", 2, "processed")
    ids = {message_id(*end) for end in [("u1", 2, "processed"), ("u1", 3, "processed")]}
    ids |= {message_id("u1", 2, "failed"), message_id("u2", 2, "processed")}
    assert len(ids) == 4


# verify_callback ----------------------------------------------------------------------------


def test_verify_callback_accepts_a_fresh_signed_callback() -> None:
    """A callback signed now with the key verifies."""
    payload = b'{"job_id":7}'
    assert verify_callback(payload, _signed_headers(payload), key=SECRET) is True


def test_signature_checks() -> None:
    """A changed body, id or key, an old timestamp or a missing header does not verify."""
    body = b'{"job_id":7}'
    headers = _signed_headers(body)
    assert not verify_callback(body + b" ", headers, key=SECRET)
    assert not verify_callback(body, headers, key="another key")
    assert not verify_callback(body, {**headers, ID_HEADER: "msg_other"}, key=SECRET)
    later = int(headers[TIMESTAMP_HEADER]) + 3600
    assert not verify_callback(body, headers, key=SECRET, now=later)
    assert not verify_callback(body, {SIGNATURE_HEADER: headers[SIGNATURE_HEADER]}, key=SECRET)


def test_the_tolerance_holds_both_ways() -> None:
    """A timestamp as far as the tolerance, before or after now, verifies; one second more not."""
    body = b"{}"
    headers = _signed_headers(body)
    sent = int(headers[TIMESTAMP_HEADER])
    for now in (sent - TOLERANCE, sent + TOLERANCE):
        assert verify_callback(body, headers, key=SECRET, now=now)
    for now in (sent - TOLERANCE - 1, sent + TOLERANCE + 1):
        assert not verify_callback(body, headers, key=SECRET, now=now)
    assert verify_callback(body, headers, key=SECRET, now=sent + 3600, tolerance=3600)


def test_one_matching_signature_of_several_is_enough() -> None:
    """A sender rotating keys lists several signatures: one of them must match."""
    body = b"{}"
    headers = _signed_headers(body)
    old = sign(headers[ID_HEADER], headers[TIMESTAMP_HEADER], body, "the old key")
    rotated = {**headers, SIGNATURE_HEADER: f"{old} {headers[SIGNATURE_HEADER]}"}
    assert verify_callback(body, rotated, key=SECRET)
    assert verify_callback(body, rotated, key="the old key")
    assert not verify_callback(body, rotated, key="a third key")


def test_header_names_are_found_in_any_case() -> None:
    """Headers kept with capitalised names, as WSGI servers give them, verify too."""
    body = b"{}"
    titled = {name.title(): value for name, value in _signed_headers(body).items()}
    assert "Webhook-Signature" in titled
    assert verify_callback(body, titled, key=SECRET)


def test_verify_callback_takes_a_whsec_secret() -> None:
    """A receiver may hold the key in its Standard Webhooks form."""
    body = b"{}"
    assert verify_callback(body, _signed_headers(body), key=receiver_secret(SECRET))


@pytest.mark.parametrize(
    "signature", ["v1=\u00e9\u00e9", "v1,\u00e9\u00e9", "\u00e9", "v1,", "", "v1,AAAA v2,\u00ff"]
)
def test_non_ascii_signature_is_false_not_an_error(signature: str) -> None:
    """A forged signature header with non-ASCII characters verifies False, never raises."""
    headers = {
        ID_HEADER: "msg_x",
        TIMESTAMP_HEADER: str(int(time.time())),
        SIGNATURE_HEADER: signature,
    }
    assert verify_callback(b"{}", headers, key=SECRET) is False


@pytest.mark.parametrize(
    "changes",
    [
        {TIMESTAMP_HEADER: "-5"},
        {TIMESTAMP_HEADER: "12.5"},
        {TIMESTAMP_HEADER: "\u0661\u0662"},
        {TIMESTAMP_HEADER: ""},
        {ID_HEADER: ""},
        {ID_HEADER: "msg_\u00e9"},
    ],
)
def test_malformed_headers_are_false_not_an_error(changes: dict[str, str]) -> None:
    """A timestamp that is not ASCII digits, or an empty or non-ASCII id, verifies False."""
    body = b"{}"
    assert verify_callback(body, _signed_headers(body, **changes), key=SECRET) is False


@pytest.mark.parametrize("timestamp", ["1" + "0" * 400, "9" * 5000])
def test_a_timestamp_too_long_to_be_a_time_is_false_not_an_error(timestamp: str) -> None:
    """Digits past any float, or past what int() converts, verify False: they never raise."""
    body = b"{}"
    headers = _signed_headers(body)
    forged = {**headers, TIMESTAMP_HEADER: timestamp}
    forged[SIGNATURE_HEADER] = sign(headers[ID_HEADER], timestamp, body, SECRET)
    assert verify_callback(body, forged, key=SECRET) is False


def test_leading_zeros_do_not_change_a_timestamp() -> None:
    """A timestamp is its number: zeros in front of a fresh one still verify when signed so."""
    body = b"{}"
    headers = _signed_headers(body)
    padded = "0" * 30 + headers[TIMESTAMP_HEADER]
    forged = {**headers, TIMESTAMP_HEADER: padded}
    forged[SIGNATURE_HEADER] = sign(headers[ID_HEADER], padded, body, SECRET)
    assert verify_callback(body, forged, key=SECRET) is True


def test_a_payload_that_is_not_bytes_is_false() -> None:
    """The raw body is needed: a str (decoded by the receiver) does not verify."""
    body = b"{}"
    payload: Any = body.decode()
    assert verify_callback(payload, _signed_headers(body), key=SECRET) is False


# Where a callback may go ------------------------------------------------------------------


def _resolving_to(*addresses: str) -> Callable[..., list[Any]]:
    """A stand-in for getaddrinfo that answers ``addresses`` for any name."""

    def resolve(host: str, port: int, **kwargs: Any) -> list[Any]:
        return [
            (
                socket.AF_INET6 if ":" in address else socket.AF_INET,
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


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_chosen(address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name resolving to a public address gets that address to connect to."""
    monkeypatch.setattr(webhooks, "_resolve", _resolving_to(address))
    assert refusal(address) is None
    target = resolve_target("https://hooks.example.com/x", allow_private=False)
    assert target.address == address


@pytest.mark.parametrize("address", INWARD)
def test_inward_addresses_are_allowed_when_private_targets_are(
    address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """allow_private takes any address the name resolves to."""
    monkeypatch.setattr(webhooks, "_resolve", _resolving_to(address))
    assert resolve_target("http://hooks.internal/x", allow_private=True).address == address


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


def test_a_mapped_address_names_what_it_stands_for() -> None:
    """An IPv6 form of an inward IPv4 address is refused, saying which address it stands for."""
    reason = refusal("::ffff:10.0.0.1")
    assert reason is not None
    assert "stands for 10.0.0.1" in reason


@given(st.ip_addresses())
def test_refusal_decides_for_every_address(ip: Any) -> None:
    """Any IPv4 or IPv6 address gets a decision, never an error; non-global ones are refused."""
    reason = refusal(str(ip))
    if not ip.is_global or ip.is_private or ip.is_loopback or ip.is_multicast:
        assert reason is not None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        assert (reason is None) == (refusal(str(ip.ipv4_mapped)) is None)


@pytest.mark.parametrize(
    ("url", "scheme", "port", "path"),
    [
        ("http://hooks.example.com", "http", 80, "/"),
        ("https://hooks.example.com/a/b?x=1&y=2#frag", "https", 443, "/a/b?x=1&y=2"),
        ("https://user:pw@hooks.example.com:8443/h", "https", 8443, "/h"),
    ],
)
def test_a_target_keeps_the_url_s_scheme_port_and_path(
    url: str, scheme: str, port: int, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Default ports by scheme; the path keeps its query and drops the fragment."""
    monkeypatch.setattr(webhooks, "_resolve", _resolving_to("93.184.216.34"))
    target = resolve_target(url, allow_private=False)
    assert (target.scheme, target.host, target.port, target.path) == (
        scheme,
        "hooks.example.com",
        port,
        path,
    )


@pytest.mark.parametrize(
    "url", ["ftp://hooks.example.com/x", "/relative", "http://", "http://hooks.example.com:99999/"]
)
def test_a_url_that_cannot_be_a_callback_is_refused(url: str, no_connect: None) -> None:
    """Another scheme, no host, or a bad port is refused, never retried."""
    with pytest.raises(CallbackRefused):
        resolve_target(url, allow_private=True)


def test_a_name_that_does_not_resolve_is_worth_another_try(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failed lookup is a DeliveryError, not a refusal: DNS may answer later."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror("Temporary failure in name resolution")

    monkeypatch.setattr(webhooks, "_resolve", fail)
    with pytest.raises(DeliveryError, match="could not be resolved") as info:
        resolve_target("https://hooks.example.com/x", allow_private=False)
    assert not isinstance(info.value, CallbackRefused)
    monkeypatch.setattr(webhooks, "_resolve", _resolving_to())
    with pytest.raises(DeliveryError, match="has no address") as info:
        resolve_target("https://hooks.example.com/x", allow_private=False)
    assert not isinstance(info.value, CallbackRefused)


# Delivery ------------------------------------------------------------------------------


def test_a_delivery_posts_the_end_signed(app: Flask, receiver: Receiver) -> None:
    """The POST carries JSON, the job's webhook-id and a signature the reference library accepts."""
    job_id = job_calling(receiver.url)
    assert deliver(job_id) is True
    ((body, headers),) = receiver.calls
    job = reload_job(job_id)
    lowered = {name.lower(): value for name, value in headers.items()}
    assert lowered["content-type"] == "application/json"
    assert lowered[ID_HEADER] == message_id(job.uid, job.attempts, "processed")
    assert abs(int(lowered[TIMESTAMP_HEADER]) - time.time()) < TOLERANCE
    assert Webhook(receiver_secret(SECRET)).verify(body, lowered)["job_id"] == job_id
    assert job.callback_status == "delivered: 200 (delivery 1)"


def test_the_callback_key_signs_instead_of_the_secret_key(
    make_app: AppFactory, receiver: Receiver
) -> None:
    """ASYNC_REQUEST_CALLBACK_KEY, when set, is the key callbacks are signed with."""
    app = make_app(ASYNC_REQUEST_CALLBACK_KEY="a-callback-key-of-its-own")
    with app.app_context():
        assert deliver(job_calling(receiver.url))
    ((body, headers),) = receiver.calls
    assert verify_callback(body, headers, key="a-callback-key-of-its-own")
    assert not verify_callback(body, headers, key=SECRET)


def test_nothing_to_deliver_is_false(app: Flask, no_connect: None) -> None:
    """No such job, or a job with no callback url: False, and no connection."""
    assert deliver(424242) is False
    job_id = add_job(status=JobStatus.PROCESSED).id
    assert deliver(job_id) is False
    assert reload_job(job_id).callback_status is None


def test_a_receiver_answering_an_error_fails_the_delivery(app: Flask) -> None:
    """A non-2xx answer is a DeliveryError, to be tried again, noted with the delivery's number."""
    server = Receiver(status=503)
    try:
        job_id = job_calling(server.url)
        with pytest.raises(DeliveryError, match=f"The callback of job {job_id} got 503"):
            deliver(job_id, attempt=4)
    finally:
        server.server.shutdown()
    assert reload_job(job_id).callback_status == "failed (delivery 4): got 503 from its url"


def test_a_delivery_with_no_key_is_refused(
    make_app: AppFactory, no_connect: None, caplog: pytest.LogCaptureFixture
) -> None:
    """With neither a callback key nor a SECRET_KEY, nothing is sent unsigned: refused, noted."""
    app = make_app(
        SECRET_KEY=None, ASYNC_REQUEST_ENCODE_KEY=SECRET, ASYNC_REQUEST_DECODE_KEY=SECRET
    )
    with app.app_context():
        job_id = job_calling("https://hooks.example.com/x")
        assert deliver(job_id) is False
        status = reload_job(job_id).callback_status or ""
    assert status.startswith("refused: callbacks need ASYNC_REQUEST_CALLBACK_KEY")
    assert "callback refused" in caplog.text


def test_give_up_notes_the_deliveries_and_the_error(app: Flask) -> None:
    """give_up records how many deliveries failed and the last error."""
    job_id = job_calling("https://hooks.example.com/x")
    give_up(job_id, 6, DeliveryError("got 500 from its url"))
    assert reload_job(job_id).callback_status == "gave up after 6 deliveries: got 500 from its url"


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
        connected.append((address, timeout))
        # Stand in for the public host: the test's receiver on loopback.
        return socket.create_connection(("127.0.0.1", port), timeout)

    monkeypatch.setattr(webhooks, "_resolve", resolve)
    monkeypatch.setattr(webhooks, "_connect", connect)
    job_id = job_calling(f"http://hooks.example.com:{port}/hook")
    assert deliver(job_id)
    assert connected == [(("93.184.216.34", port), webhooks.TIMEOUT)]
    assert receiver.calls[0][1]["Host"] == f"hooks.example.com:{port}"


class _Misbehaving(BaseHTTPRequestHandler):
    """Answers a redirect, an endless body, or nothing, by path."""

    requests: list[str]
    #: Bytes of the endless body written before the connection closed.
    written: list[int]
    #: Set when the endless answer has stopped writing.
    stopped: threading.Event
    #: Released when the test ends: until then, /silent answers nothing.
    release: threading.Event

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
            chunk, written = b"x" * 65536, 0
            try:
                for _ in range(ENDLESS_CHUNKS):
                    self.wfile.write(chunk)
                    written += len(chunk)
            except OSError:
                pass
            finally:
                self.written.append(written)
                self.stopped.set()
        elif self.path == "/silent":
            self.release.wait(30)

    def log_message(self, *args: Any) -> None:
        pass


#: 640 MiB: far more than any socket buffer holds for a reader that stopped.
ENDLESS_CHUNKS = 10_000


@pytest.fixture
def misbehaving() -> Iterator[tuple[str, type[_Misbehaving]]]:
    """A receiver that misbehaves, its base url and its handler class."""
    handler = cast(
        "type[_Misbehaving]",
        type(
            "Handler",
            (_Misbehaving,),
            {
                "requests": [],
                "written": [],
                "stopped": threading.Event(),
                "release": threading.Event(),
            },
        ),
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", handler
    handler.release.set()
    server.shutdown()
    server.server_close()


def test_redirects_are_not_followed(
    app: Flask, misbehaving: tuple[str, type[_Misbehaving]]
) -> None:
    """A 3xx is a failed delivery; its Location is never requested."""
    base, handler = misbehaving
    with pytest.raises(DeliveryError, match="got 307"):
        deliver(job_calling(f"{base}/redirect"))
    assert handler.requests == ["/redirect"]


def test_an_endless_answer_is_read_no_further_than_the_limit(
    app: Flask, misbehaving: tuple[str, type[_Misbehaving]]
) -> None:
    """A receiver streaming a huge body is cut off: it could not write the whole of it."""
    base, handler = misbehaving
    assert deliver(job_calling(f"{base}/endless"))
    assert handler.stopped.wait(60)
    assert handler.written[0] < ENDLESS_CHUNKS * 65536


def test_a_silent_receiver_times_out(
    app: Flask, misbehaving: tuple[str, type[_Misbehaving]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver that never answers fails the delivery with a timeout, noted on the job."""
    monkeypatch.setattr(webhooks, "TIMEOUT", 0.5)
    job_id = job_calling(f"{misbehaving[0]}/silent")
    with pytest.raises(DeliveryError, match="could not be sent: timed out"):
        deliver(job_id, attempt=3)
    status = reload_job(job_id).callback_status or ""
    assert status.startswith("failed (delivery 3): could not be sent: timed out")


def test_private_targets_are_delivered_when_allowed(app: Flask, receiver: Receiver) -> None:
    """ASYNC_REQUEST_CALLBACK_ALLOW_PRIVATE lets callbacks reach 127.0.0.1."""
    job_id = job_calling(receiver.url)
    assert deliver(job_id)
    assert reload_job(job_id).callback_status == "delivered: 200 (delivery 1)"


def test_a_receiver_not_listening_fails_the_delivery(app: Flask) -> None:
    """A refused connection is a DeliveryError, worth another try."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    job_id = job_calling(f"http://127.0.0.1:{port}/hook")
    with pytest.raises(DeliveryError, match="could not be sent"):
        deliver(job_id)
