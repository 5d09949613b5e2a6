"""client_events: the Python clients' iterator of a job's events, on urllib and httpx."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from flask import Flask

from flask_async_request import AsyncRequestError, Job, JobStatus, client_events, client_httpx
from flask_async_request import client as stdlib_client
from flask_async_request.client_events import (
    EndEvent,
    JobEvent,
    ProgressEvent,
    RawEvent,
    StatusEvent,
    parse_events,
)
from tests.conftest import AppFactory, add_job, current_db, serving


def test_parse_events_follows_the_event_stream_format() -> None:
    """Comments are skipped, data lines joined, ids kept, a retry alone reported."""
    lines = [
        ": keep-alive\n",
        "\n",
        "retry: 1500\n",
        "\n",
        "id: 4\r\n",
        "event: progress\n",
        'data: {"progress":\n',
        "data:0.5}\n",
        "\n",
        "data: plain\n",
        "\n",
    ]
    assert list(parse_events(lines)) == [
        RawEvent("", "", None, 1500),
        RawEvent("progress", '{"progress":\n0.5}', "4", None),
        RawEvent("message", "plain", "4", None),
    ]


def _steps(app: Flask, job_id: int, steps: list[dict[str, Any]], pause: float) -> threading.Thread:
    """Change the job's row by ``steps``, ``pause`` seconds apart, in a thread."""

    def run() -> None:
        for values in steps:
            time.sleep(pause)
            with app.app_context(), current_db().engine.begin() as conn:
                conn.execute(sa.update(Job).where(Job.id == job_id).values(**values))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


RUN = [
    {"status": JobStatus.PROCESSING, "attempts": 1},
    {"progress": 0.5, "progress_message": "half"},
    {"status": JobStatus.PROCESSED, "status_code": 200, "response": "done", "progress": 1.0},
]
EXPECTED: list[JobEvent] = [
    StatusEvent("waiting", 0),
    StatusEvent("processing", 1),
    ProgressEvent(0.5, "half"),
    # The end stored a last progress, which the stream tells before the end.
    ProgressEvent(1.0, "half"),
]

Follow = Callable[[str, str], Iterator[JobEvent]]


def _stdlib(base: str, token: str, **options: Any) -> Iterator[JobEvent]:
    return stdlib_client.events(url=f"{base}/async_request/job", token=token, **options)


def _httpx(base: str, token: str, **options: Any) -> Iterator[JobEvent]:
    with httpx.Client(base_url=base) as client:
        yield from client_httpx.events(client, url="/async_request/job", token=token, **options)


def _plain(events: list[JobEvent]) -> list[JobEvent]:
    """The events without their ids, which depend on the server's numbering."""
    plain: list[JobEvent] = []
    for event in events:
        if isinstance(event, StatusEvent):
            plain.append(StatusEvent(event.status, event.attempts))
        elif isinstance(event, ProgressEvent):
            plain.append(ProgressEvent(event.progress, event.message))
        else:
            plain.append(EndEvent(event.result))
    return plain


@pytest.mark.parametrize("follow", [_stdlib, _httpx])
def test_events_follow_a_stream_to_the_end(make_app: AppFactory, follow: Follow) -> None:
    """Over a threaded server: status, progress, then the end with the job's result."""
    app = make_app()
    with app.app_context():
        job = add_job()
        job_id, token = job.id, job.token
    with serving(app) as base:
        thread = _steps(app, job_id, RUN, 0.3)
        events = list(follow(base, token))
        thread.join()
    assert _plain(events[:-1]) == EXPECTED
    assert isinstance(events[0], StatusEvent) and events[0].id == "1"
    end = events[-1]
    assert isinstance(end, EndEvent) and end.id == "end"
    assert end.result.ok and end.result.body == "done"


def test_a_stream_that_ends_early_is_resumed_without_repeats(make_app: AppFactory) -> None:
    """After its longest duration the stream is opened again; the restated state is not repeated."""
    app = make_app(ASYNC_REQUEST_STREAM_MAX_DURATION=0.4, ASYNC_REQUEST_RETRY_AFTER=0)
    with app.app_context():
        job = add_job()
        job_id, token = job.id, job.token
    with serving(app) as base:
        thread = _steps(app, job_id, RUN, 0.5)
        events = list(_stdlib(base, token))
        thread.join()
    assert _plain(events[:-1]) == EXPECTED
    assert isinstance(events[-1], EndEvent)


def test_a_server_that_cannot_stream_is_followed_by_long_polls(make_app: AppFactory) -> None:
    """With streams off the JSON answers are long polls: the same events, then the end."""
    app = make_app(ASYNC_REQUEST_STREAMS=False)
    with app.app_context():
        job = add_job()
        job_id, token = job.id, job.token
    with serving(app) as base:
        thread = _steps(app, job_id, RUN, 0.5)
        events = list(_stdlib(base, token))
        thread.join()
    # The long poll is held until the job's end, which is all there is to yield.
    assert len(events) == 1
    assert isinstance(events[0], EndEvent) and events[0].result.body == "done"


def test_a_long_poll_s_pending_answer_gives_status_and_progress(make_app: AppFactory) -> None:
    """A long poll that answers 202 (its wait over) yields the status and progress it says."""
    app = make_app(ASYNC_REQUEST_STREAMS=False, ASYNC_REQUEST_MAX_WAIT=1)
    with app.app_context():
        job = add_job(status=JobStatus.PROCESSING)
        job_id, token = job.id, job.token
    with serving(app) as base:
        thread = _steps(app, job_id, [RUN[1], RUN[2]], 1.3)
        events = list(_stdlib(base, token))
        thread.join()
    assert events[:2] == [StatusEvent("processing"), ProgressEvent(0.5, "half")]
    assert isinstance(events[-1], EndEvent) and len(events) == 3


@pytest.mark.parametrize("follow", [_stdlib, _httpx])
def test_a_refused_token_is_an_error(make_app: AppFactory, follow: Follow) -> None:
    """A 400 (bad token) raises AsyncRequestError, as wait_for does."""
    app = make_app()
    with serving(app) as base, pytest.raises(AsyncRequestError, match="400"):
        list(follow(base, "nonsense"))


def test_a_job_purged_while_followed_is_an_error(make_app: AppFactory) -> None:
    """The stream's gone event raises AsyncRequestError."""
    app = make_app()
    with app.app_context():
        job = add_job()
        job_id, token = job.id, job.token

    def purge() -> None:
        time.sleep(0.3)
        with app.app_context(), current_db().engine.begin() as conn:
            conn.execute(sa.delete(Job).where(Job.id == job_id))

    with serving(app) as base:
        threading.Thread(target=purge, daemon=True).start()
        with pytest.raises(AsyncRequestError, match="no longer exists"):
            list(_stdlib(base, token))


def test_events_take_a_starting_view_s_response(make_app: AppFactory) -> None:
    """Like wait_for, events() takes the 202 of the view that started the job."""
    app = make_app()

    @app.post("/start")
    def start() -> Any:
        from flask_async_request import accepted
        from tests import workers

        return accepted(Job.create_and_enqueue(workers.Reply, "ok", "started"))

    with serving(app) as base, httpx.Client(base_url=base) as client:
        started = client.post("/start")
        assert started.json()["token"]
        events = list(client_httpx.events(client, started))
    end = events[-1]
    assert isinstance(end, EndEvent) and end.result.body == "started"


class _Canned:
    """A canned answer to a GET, as :func:`client_events.follow` reads one."""

    def __init__(self, status: int, headers: dict[str, str], body: str) -> None:
        self.status, self.headers, self.body = status, headers, body

    def lines(self) -> Iterator[str]:
        return iter(self.body.splitlines(keepends=True))

    def text(self) -> str:
        return self.body

    def close(self) -> None:
        pass


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_a_limited_or_unavailable_answer_is_asked_again_after_its_retry_after(
    status: int,
) -> None:
    """A 429 (a limit on requests in front of the server) is waited out like a 503."""
    end = json.dumps({"status": "processed", "response": {"status_code": 200, "body": "done"}})
    answers = [
        _Canned(status, {"Retry-After": "3"}, "Too Many Requests"),
        _Canned(200, {"Content-Type": "text/event-stream"}, f"event: end\ndata: {end}\n\n"),
    ]
    asked: list[dict[str, str]] = []
    slept: list[float] = []

    def open_get(url: str, headers: dict[str, str], timeout: float) -> _Canned:
        asked.append(headers)
        return answers.pop(0)

    events = list(
        client_events.follow(open_get, "http://api.test/job", "t0ken", sleep=slept.append)
    )
    assert len(asked) == 2
    assert slept == [3.0]
    [ended] = events
    assert isinstance(ended, EndEvent) and ended.result.body == "done"
