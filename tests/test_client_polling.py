"""The clients' polling, step by step with no I/O, and the reading of a starting view's 202."""

from __future__ import annotations

import io
import json
from typing import Any, ClassVar

import pytest

from flask_async_request import AsyncRequestError
from flask_async_request.client_polling import (
    Answer,
    Get,
    JobResult,
    Sleep,
    Unreachable,
    drive,
    poll_steps,
    start_of,
    target,
)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _pending(**headers: str) -> Any:
    body = {"status": "waiting", "progress": None, "message": None}
    return Answer(202, {"Retry-After": "2", **headers}, json.dumps(body))


def test_a_poll_the_server_did_not_hold_is_followed_by_its_retry_after() -> None:
    """Preference-Applied: wait=0 (long polls off) is not a held poll: no busy loop."""
    steps = poll_steps("http://x/job", "t", timeout=60, clock=_Clock())
    first = next(steps)
    assert isinstance(first, Get) and first.headers["Prefer"] == "wait=20"
    assert steps.send(_pending(**{"Preference-Applied": "wait=0"})) == Sleep(2.0)
    assert isinstance(next(steps), Get)
    # A held poll that comes back pending is followed by the next one at once.
    assert isinstance(steps.send(_pending(**{"Preference-Applied": "wait=20"})), Get)


def test_the_last_second_asks_for_no_wait_and_no_request_outlives_the_deadline() -> None:
    """No ``Prefer: wait=0``; each request's timeout ends about when the wait does."""
    clock = _Clock()
    steps = poll_steps("http://x/job", "t", timeout=10, clock=clock)
    first = next(steps)
    assert isinstance(first, Get) and first.wait == 10 and first.timeout <= 11
    clock.now = 9.5
    last = steps.send(_pending(**{"Preference-Applied": "wait=10"}))
    assert isinstance(last, Get) and "Prefer" not in last.headers and last.timeout <= 1.5
    assert steps.send(_pending()) == Sleep(0.5)


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_errors_are_asked_again_with_a_backoff(status: int) -> None:
    """A proxy's 502 or 504 while the app restarts is retried like the server's 503."""
    steps = poll_steps("http://x/job", "t", timeout=60, clock=_Clock())
    next(steps)
    assert steps.send(Answer(status, {}, "Bad Gateway")) == Sleep(1.0)
    assert isinstance(next(steps), Get)
    assert steps.send(Answer(status, {}, "Bad Gateway")) == Sleep(2.0)


def test_a_429_is_asked_again_after_its_retry_after() -> None:
    """A limit on requests in front of the endpoint (429) is waited out as its Retry-After says."""
    steps = poll_steps("http://x/job", "t", timeout=60, clock=_Clock())
    next(steps)
    assert steps.send(Answer(429, {"Retry-After": "7"}, "Too Many Requests")) == Sleep(7.0)
    assert isinstance(next(steps), Get)


def test_a_finished_answer_ends_the_steps_with_its_result() -> None:
    """A 200 returns the job's status, status code and body; progress is reported before."""
    seen: list[tuple[float | None, str | None]] = []
    steps = poll_steps("http://x/job", "t", clock=_Clock(), on_progress=lambda *p: seen.append(p))
    first = next(steps)
    assert isinstance(first, Get)
    assert first.headers["X-JOB-AUTHORIZATION"] == "Bearer t"
    waiting = {"status": "processing", "progress": 0.5, "message": "half"}
    assert isinstance(
        steps.send(Answer(202, {"Preference-Applied": "wait=20"}, json.dumps(waiting))), Get
    )
    done = {"status": "processed", "response": {"status_code": 201, "body": "made"}}
    with pytest.raises(StopIteration) as stop:
        steps.send(Answer(200, {}, json.dumps(done)))
    assert stop.value.value == JobResult("processed", 201, "made")
    assert seen == [(0.5, "half")]


def test_an_error_answer_ends_the_steps_with_its_status() -> None:
    """A 400 (a refused token) is the library's error, naming the status and the body."""
    steps = poll_steps("http://x/job", "t", clock=_Clock())
    next(steps)
    with pytest.raises(AsyncRequestError, match="400"):
        steps.send(Answer(400, {}, '{"errors": [{"message": "Invalid token"}]}'))


def test_a_2xx_that_is_not_a_job_status_is_refused() -> None:
    """A 200 whose body is not a job's status (a proxy's page) is an error, not a result."""
    steps = poll_steps("http://x/job", "t", clock=_Clock())
    next(steps)
    with pytest.raises(AsyncRequestError, match="not a job's status"):
        steps.send(Answer(200, {}, "<html>welcome</html>"))


def test_an_unreachable_server_is_tried_again_with_a_doubling_backoff() -> None:
    """Failed connections sleep 1, 2, 4 s before the next try, within the deadline."""
    steps = poll_steps("http://x/job", "t", timeout=60, clock=_Clock())
    next(steps)
    for pause in (1.0, 2.0, 4.0):
        assert steps.send(Unreachable("refused")) == Sleep(pause)
        assert isinstance(next(steps), Get)


def test_drive_performs_each_step_with_the_transport_given() -> None:
    """drive() sends each Get's answer back and returns the result; Unreachable is sent too."""
    answers: list[Answer | Unreachable] = [
        Unreachable("refused"),
        Answer(
            200, {}, json.dumps({"status": "failed", "response": {"status_code": 500, "body": "x"}})
        ),
    ]
    gets: list[Get] = []

    def get(step: Get) -> Answer:
        gets.append(step)
        answer = answers.pop(0)
        if isinstance(answer, Unreachable):
            raise answer
        return answer

    steps = poll_steps("http://x/job", "t", timeout=60, max_backoff=0.01)
    result = drive(steps, get)
    assert result == JobResult("failed", 500, "x")
    assert not result.ok
    assert len(gets) == 2


class _Response:
    def __init__(self, status_code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.status_code = status_code
        self._body = body
        self.headers = headers or {}

    def json(self) -> Any:
        return self._body


def test_start_of_reads_the_url_and_token_of_a_202() -> None:
    """The url from the body, or else the Location header; the token from the body."""
    assert start_of(_Response(202, {"token": "t", "url": "http://x/job/t"})) == (
        "http://x/job/t",
        "t",
    )
    located = _Response(202, {"token": "t"}, {"Location": "http://x/job/t"})
    assert start_of(located) == ("http://x/job/t", "t")


def test_start_of_reads_an_unread_urlopen_body() -> None:
    """A response with only ``status`` and ``read()`` (http.client's) is read for its JSON."""

    class Opened(io.BytesIO):
        status = 202
        headers: ClassVar[dict[str, str]] = {}

    assert start_of(Opened(b'{"token": "t", "url": "http://x/job"}')) == ("http://x/job", "t")
    with pytest.raises(AsyncRequestError, match="read already"):
        start_of(Opened(b""))


def test_start_of_refuses_what_is_not_a_started_job() -> None:
    """A non-202, a 202 without a token, and an object with no status code are refused."""
    with pytest.raises(AsyncRequestError, match="answered 500"):
        start_of(_Response(500, {}))
    with pytest.raises(AsyncRequestError, match="no token"):
        start_of(_Response(202, {"url": "http://x/job"}))
    with pytest.raises(TypeError, match="no status code"):
        start_of(object())


def test_target_takes_a_response_or_a_url_and_token() -> None:
    """Either the starting response or both url and token; neither is a TypeError."""
    assert target(None, "http://x/job", "t") == ("http://x/job", "t")
    assert target(_Response(202, {"token": "u", "url": "http://y"}), None, None) == (
        "http://y",
        "u",
    )
    with pytest.raises(TypeError, match="url= and token="):
        target(None, "http://x/job", None)
