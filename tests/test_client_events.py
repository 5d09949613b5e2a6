"""client_events: the Python clients' iterator of a job's events, on urllib and httpx."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
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
    StatusEvent,
)
from tests.conftest import AppFactory, add_job, current_db, serving


def _steps(
    app: Flask,
    job_id: int,
    steps: list[dict[str, Any]],
    pause: float,
    gate: threading.Semaphore | None = None,
) -> threading.Thread:
    """Change the job's row by ``steps``, ``pause`` seconds apart, in a thread.

    With a ``gate``, each step waits first for the client to release it (at each
    event it gets), so no change comes before the last one was told.
    """

    def run() -> None:
        for values in steps:
            if gate is not None:
                assert gate.acquire(timeout=30)
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

#: Follows the job of ``token`` on the server at ``base``; releases ``told`` at each event.
Follow = Callable[..., Iterator[JobEvent]]


def _told(events: Iterator[JobEvent], told: threading.Semaphore | None) -> Iterator[JobEvent]:
    for event in events:
        if told is not None:
            told.release()
        yield event


def _stdlib(
    base: str, token: str, told: threading.Semaphore | None = None, **options: Any
) -> Iterator[JobEvent]:
    url = f"{base}/async_request/job"
    return _told(stdlib_client.events(url=url, token=token, **options), told)


def _httpx(
    base: str, token: str, told: threading.Semaphore | None = None, **options: Any
) -> Iterator[JobEvent]:
    with httpx.Client(base_url=base) as client:
        events = client_httpx.events(client, url="/async_request/job", token=token, **options)
        yield from _told(events, told)


def _httpx_async(
    base: str, token: str, told: threading.Semaphore | None = None, **options: Any
) -> Iterator[JobEvent]:
    """httpx's asyncio client, its events gathered in an event loop of their own."""

    async def gather() -> list[JobEvent]:
        gathered = []
        async with httpx.AsyncClient(base_url=base) as client:
            follow = client_httpx.async_events(
                client, url="/async_request/job", token=token, **options
            )
            async for event in follow:
                if told is not None:
                    told.release()
                gathered.append(event)
        return gathered

    return iter(asyncio.run(gather()))


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


@pytest.mark.parametrize("follow", [_stdlib, _httpx, _httpx_async])
def test_events_follow_a_stream_to_the_end(make_app: AppFactory, follow: Follow) -> None:
    """Over a threaded server: status, progress, then the end with the job's result."""
    app = make_app()
    with app.app_context():
        job = add_job()
        job_id, token = job.id, job.token
    with serving(app) as base:
        told = threading.Semaphore(0)
        thread = _steps(app, job_id, RUN, 0.3, told)
        events = list(follow(base, token, told))
        thread.join()
    assert _plain(events[:-1]) == EXPECTED
    assert isinstance(events[0], StatusEvent) and events[0].id == "1"
    end = events[-1]
    assert isinstance(end, EndEvent) and end.id == "end"
    assert end.result.ok and end.result.body == "done"


@pytest.mark.parametrize("follow", [_stdlib, _httpx_async])
def test_a_stream_that_ends_early_is_resumed_without_repeats(
    make_app: AppFactory, follow: Follow
) -> None:
    """After its longest duration the stream is opened again; the restated state is not repeated."""
    app = make_app(ASYNC_REQUEST_STREAM_MAX_DURATION=0.4, ASYNC_REQUEST_RETRY_AFTER=0)
    with app.app_context():
        job = add_job()
        job_id, token = job.id, job.token
    with serving(app) as base:
        told = threading.Semaphore(0)
        thread = _steps(app, job_id, RUN, 0.5, told)
        events = list(follow(base, token, told))
        thread.join()
    # Each change came after the stream in which the last one was told had ended. The
    # end's last progress is told where the end lands on a stream that was open before
    # it; a stream opened after the end gets the end alone.
    assert _plain(events[:-1]) in (EXPECTED, EXPECTED[:-1])
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


@pytest.mark.parametrize("follow", [_stdlib, _httpx, _httpx_async])
def test_a_refused_token_is_an_error(make_app: AppFactory, follow: Follow) -> None:
    """A 400 (bad token) raises AsyncRequestError, as wait_for does."""
    app = make_app()
    with serving(app) as base, pytest.raises(AsyncRequestError, match="400"):
        list(follow(base, "nonsense"))


@pytest.mark.parametrize("follow", [_stdlib, _httpx_async])
def test_a_job_purged_while_followed_is_an_error(make_app: AppFactory, follow: Follow) -> None:
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
            list(follow(base, token))


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


class _AsyncCanned:
    """A canned answer to a GET, as :func:`client_events.async_follow` reads one."""

    def __init__(self, status: int, headers: dict[str, str], body: str) -> None:
        self.status, self.headers, self.body = status, headers, body

    async def lines(self) -> AsyncIterator[str]:
        for line in self.body.splitlines(keepends=True):
            yield line

    async def text(self) -> str:
        return self.body

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("status", [429, 503])
def test_the_asyncio_driver_waits_out_a_retry_after_and_streams(
    status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """async_follow performs the same steps: a 429 or 503 waited out, then the stream's end."""
    end = json.dumps({"status": "processed", "response": {"status_code": 200, "body": "done"}})
    answers = [
        _AsyncCanned(status, {"Retry-After": "3"}, "Too Many Requests"),
        _AsyncCanned(
            200,
            {"Content-Type": "text/event-stream"},
            'id: 1\nevent: status\ndata: {"status": "processing", "attempts": 1}\n\n'
            f"event: end\ndata: {end}\n\n",
        ),
    ]
    slept: list[float] = []

    async def no_sleep(seconds: float) -> None:
        slept.append(seconds)

    async def open_get(url: str, headers: dict[str, str], timeout: float) -> _AsyncCanned:
        return answers.pop(0)

    async def gather() -> list[JobEvent]:
        follow = client_events.async_follow(open_get, "http://api.test/job", "t0ken")
        return [event async for event in follow]

    monkeypatch.setattr(asyncio, "sleep", no_sleep)
    events = asyncio.run(gather())
    assert slept == [3.0]
    assert events[0] == StatusEvent("processing", 1, "1")
    assert isinstance(events[1], EndEvent) and events[1].result.body == "done"
