"""streams: server-sent events on a job's url, its resume, limits and fallbacks."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import sqlalchemy as sa
from flask import Flask, request

from flask_async_request import AsyncRequest, Job, JobStatus
from flask_async_request.shared_reads import Read
from flask_async_request.statements import JobReply
from flask_async_request.store import JobStore
from flask_async_request.streams import can_hold, next_event_id, stream
from flask_async_request.waiting import Waiters
from tests import workers
from tests.conftest import INTERNALS, SECRET, AppFactory, add_job, current_db, json_of

STREAM = {"Accept": "text/event-stream"}


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    """An app that streams under the test client, with short heartbeats."""
    return make_app(ASYNC_REQUEST_STREAMS=True, ASYNC_REQUEST_STREAM_HEARTBEAT=0.3)


#: The streamed responses a test opened, closed after it (a stream left open holds
#: its request's context until it is closed).
_OPENED: list[Any] = []


@pytest.fixture(autouse=True)
def _close_streams() -> Iterator[None]:
    yield
    while _OPENED:
        _OPENED.pop().close()


def _parse(chunk: str) -> dict[str, Any]:
    """One event block as a dict: id, event, data (decoded), retry, comment."""
    event: dict[str, Any] = {}
    for line in chunk.strip("\n").split("\n"):
        field, _, value = line.partition(": ")
        if field == "":
            event["comment"] = value
        elif field == "data":
            event["data"] = json.loads(value)
        else:
            event[field] = value
    return event


def _events(response: Any) -> Iterator[dict[str, Any]]:
    """The events of a streamed test response, one per block the stream writes."""
    for chunk in response.response:
        text = chunk.decode() if isinstance(chunk, bytes) else chunk
        yield _parse(text)


def _stream(app: Flask, job: Job, **headers: str) -> tuple[Any, Iterator[dict[str, Any]]]:
    response = app.test_client().get(
        f"/async_request/job/{job.token}", headers={**STREAM, **headers}, buffered=False
    )
    _OPENED.append(response)
    return response, _events(response)


def _update(**values: Any) -> None:
    """Change the one job's row as a worker would, in its own transaction."""
    with current_db().engine.begin() as conn:
        conn.execute(sa.update(Job).values(**values))


def _poll_json(app: Flask, job: Job) -> Any:
    return json_of(app.test_client().get(f"/async_request/job/{job.token}"))


def test_a_stream_follows_the_job_to_its_end(app: Flask) -> None:
    """Status, each progress value, then the end carrying the finished poll's JSON."""
    with app.app_context():
        job = add_job()
        response, events = _stream(app, job)
        assert response.status_code == 200
        assert response.mimetype == "text/event-stream"
        assert next(events) == {"retry": "1000"}
        assert next(events) == {
            "id": "1",
            "event": "status",
            "data": {"status": "waiting", "attempts": 0},
        }
        _update(status=JobStatus.PROCESSING, attempts=1)
        assert next(events)["data"] == {"status": "processing", "attempts": 1}
        _update(progress=0.25, progress_message="a quarter")
        assert next(events) == {
            "id": "3",
            "event": "progress",
            "data": {"progress": 0.25, "message": "a quarter"},
        }
        _update(progress=0.5, progress_message=None)
        assert next(events)["data"] == {"progress": 0.5, "message": None}
        _update(status=JobStatus.PROCESSED, status_code=201, response='{"ok": 1}', progress=1.0)
        assert next(events)["data"] == {"progress": 1.0, "message": None}
        end = next(events)
        assert end["id"] == "end" and end["event"] == "end"
        assert end["data"] == _poll_json(app, job)
        assert end["data"]["response"] == {"status_code": 201, "body": '{"ok": 1}'}
        assert list(events) == []


def test_a_finished_job_streams_its_end_at_once(app: Flask) -> None:
    """A job already finished: the end event, with the poll's JSON, and the stream ends."""
    with app.app_context():
        job = Job.create_and_enqueue(workers.Reply, "created", '{"id": 7}')
        _, events = _stream(app, job)
        assert [event.get("event") for event in events] == [None, "end"]
        _, events = _stream(app, job)
        assert list(events)[-1]["data"] == _poll_json(app, job)


def test_the_header_token_streams_too(app: Flask) -> None:
    """The shared url with the token in the header streams as the job's own url does."""
    with app.app_context():
        job = Job.create_and_enqueue(workers.Reply, "ok", "done")
        response = app.test_client().get(
            "/async_request/job",
            headers={**STREAM, "X-JOB-AUTHORIZATION": f"Bearer {job.token}"},
            buffered=False,
        )
        assert [event.get("event") for event in _events(response)] == [None, "end"]


def test_resuming_gives_the_current_state_and_the_next_ids(app: Flask) -> None:
    """With Last-Event-ID the stream restates status and progress, its ids after the last."""
    with app.app_context():
        job = add_job(status=JobStatus.PROCESSING)
        _update(progress=0.5, attempts=1)
        _, events = _stream(app, job, **{"Last-Event-ID": "7"})
        next(events)
        assert next(events) == {
            "id": "8",
            "event": "status",
            "data": {"status": "processing", "attempts": 1},
        }
        assert next(events)["id"] == "9"


def test_resuming_after_the_end_is_204(app: Flask) -> None:
    """A client that read the end and reconnects is told to stop: 204, never the end twice."""
    with app.app_context():
        job = Job.create_and_enqueue(workers.Reply, "ok", "done")
        response, _ = _stream(app, job, **{"Last-Event-ID": "end"})
        assert response.status_code == 204
        assert response.data == b""


@pytest.mark.parametrize(
    "tick",
    [
        # The heartbeat (0.3 s) is under two ticks: the whole wait is timed.
        pytest.param(None, id="timed wait"),
        # Over two ticks: untimed until the ticker ends it as its end nears.
        pytest.param(0.05, id="the ticker"),
    ],
)
def test_a_silent_stream_sends_heartbeats(
    app: Flask, monkeypatch: pytest.MonkeyPatch, tick: float | None
) -> None:
    """After ASYNC_REQUEST_STREAM_HEARTBEAT of silence the stream sends a comment."""
    if tick is not None:
        monkeypatch.setattr("flask_async_request.waiting.TICK", tick)
    with app.app_context():
        job = add_job(status=JobStatus.PROCESSING)
        _, events = _stream(app, job)
        next(events), next(events)
        assert next(events) == {"comment": "keep-alive"}
        assert next(events) == {"comment": "keep-alive"}


def test_a_stream_ends_after_its_longest_duration(make_app: AppFactory) -> None:
    """At ASYNC_REQUEST_STREAM_MAX_DURATION the stream ends with a retry hint."""
    app = make_app(ASYNC_REQUEST_STREAMS=True, ASYNC_REQUEST_STREAM_MAX_DURATION=0.3)
    with app.app_context():
        job = add_job()
        _, events = _stream(app, job)
        rest = list(events)
        assert rest[-1] == {"comment": "the stream's time is up; reconnect", "retry": "1000"}
        assert [event.get("event") for event in rest] == [None, "status", None]


def test_a_job_purged_while_streaming_is_gone(app: Flask) -> None:
    """A job deleted during its stream ends it with a gone event, the 404's body."""
    with app.app_context():
        job = add_job()
        _, events = _stream(app, job)
        next(events), next(events)
        with current_db().engine.begin() as conn:
            conn.execute(sa.delete(Job))
        assert next(events) == {
            "id": "end",
            "event": "gone",
            "data": {"errors": [{"message": "Job not found"}]},
        }


def test_a_stream_holds_no_connection_while_it_waits(app: Flask) -> None:
    """Between events no database connection is checked out of the pool."""
    with app.app_context():
        job = add_job()
        engine = INTERNALS.job_store(app).engine
        response = app.test_client().get(
            f"/async_request/job/{job.token}", headers=STREAM, buffered=False
        )
        _OPENED.append(response)
        current_db().session.close()
        events = _events(response)
        next(events), next(events)
        assert next(events) == {"comment": "keep-alive"}
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("token", "status"), [("nonsense", 400), ("purged", 404), ("missing-table", 503)]
)
def test_streams_refuse_as_polls_do(
    app: Flask, token: str, status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad token is 400, a purged job 404, a database out of reach 503: JSON, not a stream."""
    with app.app_context():
        job = add_job()
        real = job.token
        if token == "purged":
            current_db().session.delete(job)
            current_db().session.commit()
        if token == "missing-table":

            def down(store: JobStore, job_id: int) -> None:
                raise sa.exc.OperationalError("SELECT", {}, Exception("gone"))

            monkeypatch.setattr(JobStore, "fetch_reply", down)
        url = f"/async_request/job/{real if token != 'nonsense' else token}"
        response = app.test_client().get(url, headers=STREAM)
        assert response.status_code == status
        assert response.mimetype == "application/json"
        assert "errors" in json_of(response)


def test_streams_answer_only_the_owner(make_app: AppFactory) -> None:
    """A job bound to an identity streams to it alone; another is told it does not exist."""
    extension = AsyncRequest()
    app = make_app(extension=extension, ASYNC_REQUEST_STREAMS=True)

    @extension.identity_loader
    def current_user() -> str | None:
        return request.headers.get("X-User")

    @app.post("/start")
    def start() -> Any:
        return {"token": Job.create_and_enqueue(workers.Echo, "secret").token}, 202

    token = json_of(app.test_client().post("/start", headers={"X-User": "alice"}))["token"]
    url = f"/async_request/job/{token}"
    assert app.test_client().get(url, headers={**STREAM, "X-User": "bob"}).status_code == 404
    assert app.test_client().get(url, headers={**STREAM, "X-User": "alice"}).status_code == 200


def test_an_expired_token_streams_nothing(app: Flask) -> None:
    """An expired token is 400, as for a poll."""
    with app.app_context():
        job = add_job()
        token = jwt.encode({"job_id": job.id, "jti": job.uid, "exp": 1}, SECRET, algorithm="HS256")
    assert app.test_client().get(f"/async_request/job/{token}", headers=STREAM).status_code == 400


@pytest.mark.parametrize("accept", ["*/*", "application/json", "application/json, */*;q=0.1"])
def test_other_accepts_are_polls(app: Flask, accept: str) -> None:
    """Only a request that prefers text/event-stream gets a stream."""
    with app.app_context():
        token = add_job().token
    response = app.test_client().get(f"/async_request/job/{token}", headers={"Accept": accept})
    assert response.status_code == 202
    assert json_of(response)["status"] == "waiting"


@pytest.mark.parametrize("setting", ["auto", False])
def test_where_streams_cannot_be_held_the_answer_is_a_long_poll(
    make_app: AppFactory, setting: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a sync server (or with streams off) the request is answered as a long poll."""
    app = make_app(ASYNC_REQUEST_STREAMS=setting, ASYNC_REQUEST_MAX_WAIT=7)
    waits: list[float] = []

    def wait(store: JobStore, job_id: int, timeout: float) -> Any:
        waits.append(timeout)
        return store.fetch_reply(job_id)

    monkeypatch.setattr(JobStore, "wait_until_finished", wait)
    with app.app_context():
        token = add_job().token
    response = app.test_client().get(f"/async_request/job/{token}", headers=STREAM)
    assert response.status_code == 202
    assert json_of(response)["status"] == "waiting"
    assert waits == [7]
    assert response.headers["Preference-Applied"] == "wait=7"


def test_a_threaded_server_streams_on_auto(make_app: AppFactory) -> None:
    """With ``"auto"``, a server that says wsgi.multithread gets a stream."""
    app = make_app(ASYNC_REQUEST_MAX_WAIT=7)
    with app.app_context():
        job = Job.create_and_enqueue(workers.Reply, "ok", "done")
    response = app.test_client().get(
        f"/async_request/job/{job.token}",
        headers=STREAM,
        environ_overrides={"wsgi.multithread": True},
    )
    assert response.mimetype == "text/event-stream"


def test_can_hold_sees_gevent_and_eventlet(monkeypatch: pytest.MonkeyPatch) -> None:
    """On auto, a sync environ can hold a stream only where gevent or eventlet patched threads."""
    sync = {"wsgi.multithread": False, "wsgi.multiprocess": True}
    assert not can_hold(sync, "auto")
    assert can_hold(sync, True) and not can_hold({"wsgi.multithread": True}, False)
    gevent = types.SimpleNamespace(is_module_patched=lambda name: name == "threading")
    monkeypatch.setitem(sys.modules, "gevent.monkey", gevent)
    assert can_hold(sync, "auto")
    monkeypatch.delitem(sys.modules, "gevent.monkey")
    eventlet = types.SimpleNamespace(is_monkey_patched=lambda name: name == "thread")
    monkeypatch.setitem(sys.modules, "eventlet.patcher", eventlet)
    assert can_hold(sync, "auto")


@pytest.mark.parametrize(
    ("last", "first"),
    [(None, 1), ("", 1), ("41", 42), ("end", 1), ("-3", 1), ("9" * 30, 1), ("²", 1), ("٣", 1)],
)
def test_next_event_id(last: str | None, first: int) -> None:
    """The first id after Last-Event-ID: one more than a number, else 1."""
    assert next_event_id(last) == first


def test_the_streams_setting_is_validated(make_app: AppFactory) -> None:
    """ASYNC_REQUEST_STREAMS takes True, False or "auto" only."""
    with pytest.raises(Exception, match="ASYNC_REQUEST_STREAMS is 'yes'"):
        make_app(ASYNC_REQUEST_STREAMS="yes")


def test_the_last_report_before_the_end_is_still_told(app: Flask) -> None:
    """A progress stored just before the end, unseen by the stream, comes before the end event."""
    with app.app_context():
        job = add_job(status=JobStatus.PROCESSING)
        _, events = _stream(app, job)
        next(events), next(events)
        _update(
            status=JobStatus.PROCESSED,
            status_code=200,
            response="",
            progress=1.0,
            progress_message="last",
        )
        assert next(events)["data"] == {"progress": 1.0, "message": "last"}
        assert next(events)["event"] == "end"


def test_a_pool_with_no_connection_free_is_503_not_500(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poll or a stream that finds every pooled connection busy answers 503 with Retry-After."""
    with app.app_context():
        job = add_job()
        token = job.token

    def exhausted(self: JobStore, job_id: int) -> None:
        raise sa.exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached")

    monkeypatch.setattr(JobStore, "fetch_reply", exhausted)
    for headers in ({}, STREAM):
        answer = app.test_client().get(f"/async_request/job/{token}", headers=headers)
        assert answer.status_code == 503
        assert "Retry-After" in answer.headers
        assert answer.json == {
            "errors": [{"message": "The job store is unavailable; try again later."}]
        }


def test_a_stream_whose_read_finds_no_connection_free_ends_with_a_retry(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once streaming, a pool with no connection free ends the stream with a retry: hint."""
    with app.app_context():
        job = add_job()
        _, events = _stream(app, job)
        assert next(events)["retry"] == "1000"
        monkeypatch.setattr(JobStore, "fetch_reply", lambda self, job_id: _exhausted())
        assert list(events) == [{"retry": "5000"}]


def _exhausted() -> None:
    raise sa.exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached")


def test_an_ending_stream_lets_the_others_send_their_ends_before_it_closes() -> None:
    """Once its end is sent, a stream pauses (``time.sleep(0)``) before it ends."""
    reply = JobReply("u" * 32, None, JobStatus.PROCESSED, 200, "done", None, None)
    done: Read[JobReply | None] = Read(0.0)
    done.reply = reply
    done.done.set()
    happened: list[str] = []
    texts = stream(
        waiters=Waiters(check=lambda job_ids: []),
        job_id=1,
        uid=reply.uid,
        read=lambda since: done,
        final=lambda finished: {"status": finished.status.value},
        first_id=1,
        heartbeat=60.0,
        max_duration=60.0,
        retry_ms=1000,
        pause=lambda seconds: happened.append(f"pause {seconds}"),
    )
    for text in texts:
        happened.append(text.split("\n", 1)[0])
    assert happened == ["retry: 1000", "id: end", "pause 0"]
