"""Completion callbacks: a signed POST to the job's ``callback_url`` when it ends.

Each delivery runs in its own Celery task, with retries and exponential backoff,
so a slow or failing receiver never holds a worker up. The POST's JSON body is
``{"job_id": ..., "status": ..., "response": {"status_code": ..., "body": ...}}``;
its headers carry a timestamp and an HMAC-SHA256 signature of
``"<timestamp>.<body>"`` with ``ASYNC_REQUEST_CALLBACK_KEY`` (default
``SECRET_KEY``). A receiver checks them with :func:`verify_callback`::

    from flask_async_request.webhooks import verify_callback

    @app.post("/hooks/jobs")
    def job_done():
        if not verify_callback(request.get_data(), request.headers, key=SHARED_KEY):
            abort(400)
        ...
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping

import sqlalchemy as sa

from .exceptions import AsyncRequestError
from .models import Job, JobStatus
from .state import get_state

TIMESTAMP_HEADER = "X-Async-Request-Timestamp"
SIGNATURE_HEADER = "X-Async-Request-Signature"
#: Seconds a receiver accepts between the signing and the check, by default.
TOLERANCE = 300
#: Seconds one delivery may take.
TIMEOUT = 10


class DeliveryError(AsyncRequestError):
    """The receiver could not be reached, or did not answer 2xx."""


def sign(payload: bytes, timestamp: str, key: str | bytes) -> str:
    """The signature header value of ``payload`` sent at ``timestamp``."""
    secret = key.encode() if isinstance(key, str) else key
    digest = hmac.new(secret, timestamp.encode() + b"." + payload, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify_callback(
    payload: bytes,
    headers: Mapping[str, str],
    *,
    key: str | bytes,
    tolerance: float = TOLERANCE,
    now: float | None = None,
) -> bool:
    """Whether a received callback is authentic and recent.

    :param payload: the raw request body, as received.
    :param headers: the request headers (any mapping, such as ``request.headers``).
    :param key: the shared key, ``ASYNC_REQUEST_CALLBACK_KEY`` of the sender.
    :param tolerance: how old (or how far ahead) the timestamp may be, in seconds.
    """
    timestamp = headers.get(TIMESTAMP_HEADER) or ""
    signature = headers.get(SIGNATURE_HEADER) or ""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance:
        return False
    return hmac.compare_digest(sign(payload, timestamp, key), signature)


_CALLBACK = sa.select(Job.callback_url, Job.status, Job.status_code, Job.response).where(
    Job.id == sa.bindparam("job_id")
)


def callback_payload(job_id: int, status: JobStatus, status_code: int | None, body: str) -> bytes:
    """The JSON body announcing job ``job_id``'s end."""
    payload = {
        "job_id": job_id,
        "status": status.value,
        "response": {"status_code": status_code, "body": body},
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def deliver(job_id: int) -> bool:
    """POST job ``job_id``'s end to its callback url (inside an app context).

    :returns: ``False`` when there is nothing to deliver (no such job, no url).
    :raises DeliveryError: the receiver could not be reached or did not answer 2xx.
    :raises sqlalchemy.exc.OperationalError: the database could not be read.
    """
    state = get_state()
    row = state.store().first(_CALLBACK, {"job_id": job_id})
    if row is None or not row.callback_url:
        return False
    key = state.settings.callback_key
    if key is None:
        raise DeliveryError("Callbacks need ASYNC_REQUEST_CALLBACK_KEY (or SECRET_KEY) set.")
    payload = callback_payload(job_id, JobStatus(row.status), row.status_code, row.response or "")
    timestamp = str(int(time.time()))
    request = urllib.request.Request(
        row.callback_url,
        data=payload,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "flask-async-request",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(payload, timestamp, key),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            status = response.status
    except urllib.error.HTTPError as e:
        raise DeliveryError(f"The callback of job {job_id} got {e.code} from its url.") from e
    except (OSError, ValueError) as e:
        raise DeliveryError(f"The callback of job {job_id} could not be sent: {e}") from e
    if not 200 <= status < 300:
        raise DeliveryError(f"The callback of job {job_id} got {status} from its url.")
    return True
