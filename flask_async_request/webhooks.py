"""Completion callbacks: a signed POST to the job's ``callback_url`` when it ends.

Each delivery runs in its own Celery task, with retries and exponential backoff,
so a slow or failing receiver never holds a worker up. The POST's JSON body is
``{"job_id": ..., "status": ..., "response": {"status_code": ..., "body": ...}}``
(with the reply's ``content_type`` when the worker gave one): the status
endpoint's answer for the finished job, with its id in front. It is signed in
the `Standard Webhooks <https://www.standardwebhooks.com/>`_ format:

* ``webhook-id``: the same for every delivery of one end of one job, so a
  receiver drops the duplicates that at-least-once delivery brings;
* ``webhook-timestamp``: seconds since the epoch, when it was signed;
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``
  with ``ASYNC_REQUEST_CALLBACK_KEY`` (default ``SECRET_KEY``).

A Python receiver checks them with :func:`verify_callback`; a receiver in any
language uses its Standard Webhooks library with the secret
:func:`receiver_secret` gives::

    from flask_async_request.webhooks import verify_callback

    @app.post("/hooks/jobs")
    def job_done():
        if not verify_callback(request.get_data(), request.headers, key=SHARED_KEY):
            abort(400)
        ...

Where a callback may go is decided at each delivery, on the address its host
name resolves to then, and the POST connects to that very address (no second
lookup a DNS rebinding could answer differently). Loopback, private,
link-local, multicast, reserved and unspecified addresses are refused unless
``ASYNC_REQUEST_CALLBACK_ALLOW_PRIVATE`` is set; redirects are not followed, a
response body is read no further than :data:`MAX_RESPONSE_BYTES`, and a
delivery takes at most :data:`TIMEOUT` seconds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import http.client
import ipaddress
import logging
import socket
import ssl
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any, NamedTuple

from .exceptions import AsyncRequestError

logger = logging.getLogger("flask_async_request")

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
#: Seconds a receiver accepts between the signing and the check, by default.
TOLERANCE = 300
#: Seconds one delivery may take to connect, and to answer.
TIMEOUT = 10
#: The most of a receiver's answer that is read.
MAX_RESPONSE_BYTES = 64 * 1024
#: The most significant digits a ``webhook-timestamp`` may have (seconds since the epoch).
_TIMESTAMP_DIGITS = 20
#: The prefix of a Standard Webhooks secret given in its base64 form.
SECRET_PREFIX = "whsec_"

# The steps a test replaces, so that no packet leaves the machine.
_resolve = socket.getaddrinfo
_connect = socket.create_connection


class DeliveryError(AsyncRequestError):
    """The receiver could not be reached, or did not answer 2xx; worth another try."""


class NoCallback(AsyncRequestError, ValueError):
    """A job has no callback to redeliver: no url, or it has not ended."""


class CallbackRefused(DeliveryError):
    """The callback url points where callbacks may not go; never retried."""


def secret_bytes(key: str | bytes) -> bytes:
    """The HMAC key of ``key``: a ``whsec_<base64>`` secret decoded, else its UTF-8 bytes."""
    if isinstance(key, bytes):
        return key
    if key.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(key[len(SECRET_PREFIX) :], validate=True)
        except binascii.Error:
            pass
    return key.encode()


def receiver_secret(key: str | bytes) -> str:
    """``key`` as a Standard Webhooks secret (``whsec_<base64>``), for a receiver's library."""
    return SECRET_PREFIX + base64.b64encode(secret_bytes(key)).decode("ascii")


def message_id(uid: str, attempts: int, status: str) -> str:
    """The ``webhook-id`` of one end of a job: the same on every redelivery of it."""
    return f"msg_{uid}_{attempts}_{status}"


def sign(message: str, timestamp: str, payload: bytes, key: str | bytes) -> str:
    """The ``webhook-signature`` value of ``payload`` sent as ``message`` at ``timestamp``."""
    signed = f"{message}.{timestamp}.".encode() + payload
    digest = hmac.new(secret_bytes(key), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def _header(headers: Mapping[str, str], name: str) -> str:
    """A header's value, whatever case the mapping keeps names in; ``""`` when absent."""
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if str(k).lower() == name), None)
    return value if isinstance(value, str) else ""


def verify_callback(
    payload: bytes,
    headers: Mapping[str, str],
    *,
    key: str | bytes,
    tolerance: float = TOLERANCE,
    now: float | None = None,
) -> bool:
    """Whether a received callback is authentic and recent.

    Never raises for what a sender can put in the headers: anything malformed
    (missing, not ASCII, not a number, not base64) is ``False``.

    :param payload: the raw request body, as received.
    :param headers: the request headers (``request.headers``, or any mapping).
    :param key: the shared key, ``ASYNC_REQUEST_CALLBACK_KEY`` of the sender.
    :param tolerance: how old (or how far ahead) the timestamp may be, in seconds.
    """
    message = _header(headers, ID_HEADER)
    timestamp = _header(headers, TIMESTAMP_HEADER)
    signatures = _header(headers, SIGNATURE_HEADER)
    if not (message and timestamp.isascii() and timestamp.isdigit() and signatures.isascii()):
        return False
    if len(timestamp.lstrip("0")) > _TIMESTAMP_DIGITS:
        # No time at all: int() refuses 4,300 digits, and a float a few hundred.
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance:
        return False
    if not isinstance(payload, bytes) or not message.isascii():
        return False
    expected = sign(message, timestamp, payload, key).encode("ascii")
    # A sender may list several signatures (while it rotates keys): one must match.
    return any(
        hmac.compare_digest(expected, candidate.encode("ascii")) for candidate in signatures.split()
    )


# Where a callback may go ------------------------------------------------------------------


class Target(NamedTuple):
    """A callback url, and the one address its POST will connect to."""

    scheme: str
    host: str
    port: int
    path: str
    address: str


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, Teredo or NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in ipaddress.IPv6Network("64:ff9b::/96"):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(address: str) -> str | None:
    """Why callbacks may not go to ``address``, or ``None`` when they may."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
        address.split("%", 1)[0]
    )
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            reason = refusal(str(embedded))
            return None if reason is None else f"{address} stands for {embedded}: {reason}"
    for kind, flag in (
        ("an unspecified", ip.is_unspecified),
        ("a loopback", ip.is_loopback),
        ("a link-local", ip.is_link_local),
        ("a multicast", ip.is_multicast),
        ("a private", ip.is_private),
        ("a reserved", ip.is_reserved),
        ("a non-global", not ip.is_global),
    ):
        if flag:
            return f"{address} is {kind} address"
    return None


def resolve_target(url: str, *, allow_private: bool) -> Target:
    """Resolve the callback url's host now, and choose the address to connect to.

    :raises CallbackRefused: a url that cannot be a callback, or a host with any
        address callbacks may not go to (unless ``allow_private``).
    :raises DeliveryError: the host name cannot be resolved now.
    """
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as e:
        raise CallbackRefused(f"its url has a bad port: {e}") from None
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise CallbackRefused("its url is not an absolute http or https url")
    try:
        found = _resolve(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as e:
        raise DeliveryError(f"its host {host!r} could not be resolved: {e}") from e
    addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
    if not addresses:
        raise DeliveryError(f"its host {host!r} has no address")
    if not allow_private:
        # Every address counts: a name that also resolves inward is refused.
        for address in addresses:
            reason = refusal(address)
            if reason is not None:
                raise CallbackRefused(
                    f"{host} resolves to {reason}; callbacks go to public addresses"
                    " only (ASYNC_REQUEST_CALLBACK_ALLOW_PRIVATE allows others)"
                )
    path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    return Target(parts.scheme, host, port, path, addresses[0])


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to a host name, made to the address chosen for it beforehand."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self.address = target.address

    def connect(self) -> None:
        self.sock = _connect((self.address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection to the chosen address, its certificate checked against the name."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self.address = target.address

    def connect(self) -> None:
        sock = _connect((self.address, self.port), self.timeout)
        self.sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)


def post(target: Target, payload: bytes, headers: Mapping[str, str]) -> int:
    """POST ``payload`` to ``target``; the status of the answer, read within the limits.

    :raises DeliveryError: the receiver could not be reached or did not answer.
    """
    connection_class: Any = (
        _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    )
    connection = connection_class(target, TIMEOUT)
    try:
        connection.request("POST", target.path, body=payload, headers=dict(headers))
        response = connection.getresponse()
        # Read a little, so the connection closes cleanly; never the whole of a
        # huge answer.
        response.read(MAX_RESPONSE_BYTES)
        return int(response.status)
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise DeliveryError(f"could not be sent: {e}") from e
    finally:
        connection.close()
