"""A client for service-to-service callers: wait for a job another service started.

It needs only the standard library::

    from flask_async_request.client import wait_for

    response = requests.post("https://reports.internal/reports", json={"month": 3})
    result = wait_for(response)            # or wait_for(url=..., token=...)
    if result.ok:
        report = json.loads(result.body)
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .exceptions import AsyncRequestError

DEFAULT_HEADER = "X-JOB-AUTHORIZATION"


@dataclass(frozen=True)
class JobResult:
    """A finished job's answer."""

    #: ``"processed"``, ``"failed"`` or ``"cancelled"``.
    status: str
    #: The status code the worker returned (500 when it failed, 499 when cancelled).
    status_code: int
    #: The body the worker returned.
    body: str

    @property
    def ok(self) -> bool:
        """Whether the job was processed with a 2xx status code."""
        return self.status == "processed" and 200 <= self.status_code < 300


def _from_start(response: Any) -> tuple[str, str]:
    """The status url and token of a starting view's 202 answer (requests, httpx, Flask)."""
    status = getattr(response, "status_code", None)
    if status != 202:
        raise AsyncRequestError(f"The request that should start a job answered {status}, not 202.")
    body = response.json() if callable(getattr(response, "json", None)) else response.json
    token = body.get("token") if isinstance(body, Mapping) else None
    url = (body.get("url") if isinstance(body, Mapping) else None) or response.headers.get(
        "Location"
    )
    if not token or not url:
        raise AsyncRequestError("The 202 answer holds no token, or no url nor Location header.")
    return str(url), str(token)


def wait_for(
    response: Any = None,
    *,
    url: str | None = None,
    token: str | None = None,
    timeout: float = 300.0,
    header: str = DEFAULT_HEADER,
    long_poll: int = 20,
    on_progress: Callable[[float | None, str | None], None] | None = None,
    headers: Mapping[str, str] | None = None,
    max_backoff: float = 30.0,
) -> JobResult:
    """Wait until a job finishes and return its answer.

    Give the 202 ``response`` of the view that started the job (a ``requests``,
    ``httpx`` or Flask test response), or its ``url`` and ``token``. Each poll
    asks the server to hold it for up to ``long_poll`` seconds (``Prefer: wait``),
    so a finished job is seen at once and few requests are made; a server that
    does not hold it is polled again after its ``Retry-After``.

    A server that answers 503 (its database is out of reach) is asked again
    after its ``Retry-After``; a connection that fails (a restart, a network
    blip) is tried again with a backoff doubling up to ``max_backoff`` seconds,
    all within ``timeout``.

    :param on_progress: called with ``(fraction, message)`` on every pending answer.
    :param headers: more headers for every poll, such as ``Authorization`` or
        ``Cookie`` for a job bound to an identity.
    :raises TimeoutError: the job did not finish within ``timeout`` seconds.
    :raises AsyncRequestError: the server refused the token (400), knows no such
        job (404) or answered another error.
    """
    if response is not None:
        url, token = _from_start(response)
    if not url or not token:
        raise TypeError("wait_for() needs the starting response, or url= and token=.")
    deadline = time.monotonic() + timeout
    backoff = 1.0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"The job at {url} did not finish within {timeout} s.")
        wait = max(0, min(long_poll, int(remaining)))
        request = urllib.request.Request(
            url,
            headers={
                header: f"Bearer {token}",
                "Prefer": f"wait={wait}",
                "Accept": "application/json",
            },
        )
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=wait + 30) as answer:
                status, answered, body = answer.status, answer.headers, json.loads(answer.read())
        except urllib.error.HTTPError as e:
            if e.code == 503:
                # The server's own word: try again after its Retry-After.
                _pause(_seconds(e.headers.get("Retry-After"), backoff), deadline)
                continue
            detail = e.read().decode("utf-8", "replace")
            raise AsyncRequestError(f"Polling {url} answered {e.code}: {detail}") from e
        except (urllib.error.URLError, OSError) as e:
            if deadline - time.monotonic() <= backoff:
                raise AsyncRequestError(f"Polling {url} failed: {e}") from e
            _pause(backoff, deadline)
            backoff = min(backoff * 2, max_backoff)
            continue
        backoff = 1.0
        if status == 200:
            reply = body["response"]
            return JobResult(body["status"], int(reply["status_code"]), reply["body"])
        if on_progress is not None:
            on_progress(body.get("progress"), body.get("message"))
        if answered.get("Preference-Applied") is None:
            _pause(_seconds(answered.get("Retry-After"), 1.0), deadline)


def _seconds(retry_after: str | None, default: float) -> float:
    """A ``Retry-After`` in seconds (the HTTP-date form counts as ``default``)."""
    try:
        return max(0.0, float(retry_after)) if retry_after else default
    except ValueError:
        return default


def _pause(seconds: float, deadline: float) -> None:
    time.sleep(max(0.0, min(seconds, deadline - time.monotonic())))
