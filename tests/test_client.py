"""The Python client, wait_for(), against the example app served on loopback."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

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
        self.status_code, self._body, self.headers = status_code, body, {}

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
