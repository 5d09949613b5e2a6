"""@asynchronous: an existing view runs in a worker; its response becomes the reply."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, abort, g, jsonify, request

from flask_async_request import Job, JobStatus, asynchronous
from flask_async_request.asyncview import ViewWorker
from flask_async_request.broker import PROCESS_TASK
from tests.conftest import (
    INTERNALS,
    PG_DATABASE_URL,
    AppFactory,
    current_db,
    json_of,
    poll,
    reload_job,
)


@pytest.fixture
def views_app(make_app: AppFactory) -> Flask:
    app = make_app()

    @app.before_request
    def load_user() -> None:
        g.user = request.headers.get("Accept-Language", "nobody")

    @app.post("/reports/<int:year>")
    @asynchronous
    def report(year: int) -> Any:
        payload = request.get_json(silent=True) or dict(request.form)
        body = {"year": year, "fmt": request.args.get("fmt"), "payload": payload, "user": g.user}
        return jsonify(body), 201

    @app.get("/custom")
    @asynchronous(headers=("X-Custom",))
    def custom() -> Any:
        return {
            "custom": request.headers.get("X-Custom"),
            "lang": request.headers.get("Accept-Language"),
        }

    @app.get("/missing")
    @asynchronous
    def missing() -> Any:
        abort(404)

    @app.get("/plain")
    def plain() -> str:
        return "not asynchronous"

    return app


def _reply(app: Flask, response: Any) -> dict[str, Any]:
    assert response.status_code == 202, response.data
    answer = poll(app.test_client(), response.json["token"])
    assert answer.status_code == 200
    return dict(answer.json["response"])


def test_json_request_is_replayed(views_app: Flask) -> None:
    """Path, query, JSON body and before_request hooks reach the view in the worker."""
    client = views_app.test_client()
    response = client.post(
        "/reports/2026?fmt=pdf", json={"pages": 3}, headers={"Accept-Language": "fr"}
    )
    reply = _reply(views_app, response)
    assert reply["status_code"] == 201
    assert reply["content_type"] == "application/json"
    assert json.loads(reply["body"]) == {
        "year": 2026,
        "fmt": "pdf",
        "payload": {"pages": 3},
        "user": "fr",
    }


@pytest.fixture
def pg_views_app(make_app: AppFactory) -> Iterator[Flask]:
    """An app on PostgreSQL, with an asynchronous view ``POST /exports`` and no app context."""
    app = make_app(create_tables=False, SQLALCHEMY_DATABASE_URI=PG_DATABASE_URL)
    db = app.extensions["sqlalchemy"]
    with app.app_context():
        db.drop_all()
        db.create_all()

    @app.post("/exports")
    @asynchronous
    def export() -> str:
        return "exported"

    yield app
    INTERNALS.job_store(app).dispose()


def test_a_submission_opens_no_session(
    pg_views_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job stored by one autocommitted INSERT is answered 202 with no session opened for it."""
    app = pg_views_app
    db = app.extensions["sqlalchemy"]
    sent: list[Any] = []
    task = app.extensions["celery"].tasks[PROCESS_TASK]
    monkeypatch.setattr(task, "apply_async", lambda args, **options: sent.append(args[0]))
    opened: list[Any] = []
    make_session = db.session.registry.createfunc

    def counted() -> Any:
        opened.append(1)
        return make_session()

    monkeypatch.setattr(db.session.registry, "createfunc", counted)
    response = app.test_client().post("/exports")
    assert response.status_code == 202 and not opened
    monkeypatch.undo()
    with app.app_context():
        assert reload_job(sent[0]).status is JobStatus.WAITING
        answer = poll(app.test_client(), json_of(response)["token"])
        assert answer.status_code == 202
        db.session.remove()


def test_a_submission_whose_publish_fails_is_202(
    pg_views_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job stored with no session whose message the broker refused is answered 202 anyway."""

    def refuse(args: Any, **options: Any) -> None:
        raise ConnectionError("broker down")

    task = pg_views_app.extensions["celery"].tasks[PROCESS_TASK]
    monkeypatch.setattr(task, "apply_async", refuse)
    monkeypatch.setitem(pg_views_app.extensions["celery"].conf, "task_always_eager", False)
    response = pg_views_app.test_client().post("/exports")
    assert response.status_code == 202
    token = json_of(response)["token"]
    assert response.headers["Location"].endswith(token)
    monkeypatch.undo()
    answer = poll(pg_views_app.test_client(), token)
    assert answer.status_code == 202


def test_form_request_is_replayed(views_app: Flask) -> None:
    """A form body is replayed too."""
    response = views_app.test_client().post("/reports/1999", data={"title": "old"})
    assert json.loads(_reply(views_app, response)["body"])["payload"] == {"title": "old"}


def test_only_chosen_headers_are_kept(views_app: Flask) -> None:
    """Headers named in the decorator reach the worker; others do not."""
    response = views_app.test_client().get(
        "/custom", headers={"X-Custom": "yes", "Accept-Language": "de"}
    )
    assert json.loads(_reply(views_app, response)["body"]) == {"custom": "yes", "lang": None}


def test_abort_becomes_the_reply(views_app: Flask) -> None:
    """An HTTP error raised by the view is its reply, as it would be in a request."""
    reply = _reply(views_app, views_app.test_client().get("/missing"))
    assert reply["status_code"] == 404


def test_prefer_wait_answers_with_the_views_own_response(views_app: Flask) -> None:
    """With Prefer: wait=N a fast job answers directly, as the view would have."""
    response = views_app.test_client().post("/reports/2000", json={}, headers={"Prefer": "wait=5"})
    assert response.status_code == 201
    assert response.content_type == "application/json"
    assert json_of(response)["year"] == 2000
    assert response.headers["Preference-Applied"] == "wait=5"


@pytest.mark.parametrize(
    "headers",
    [[("Prefer", "respond-async, wait=5")], [("Prefer", "respond-async"), ("Prefer", "wait=5")]],
    ids=["one header", "two headers"],
)
def test_respond_async_always_gets_202(views_app: Flask, headers: list[tuple[str, str]]) -> None:
    """Prefer: respond-async wins over wait, in one header or in two."""
    response = views_app.test_client().post("/reports/2000", json={}, headers=headers)
    assert response.status_code == 202
    assert response.headers["Location"].startswith("http://localhost/async_request/job/")


def test_idempotency_key_header(views_app: Flask) -> None:
    """The Idempotency-Key header makes a repeated request return the same job."""
    client = views_app.test_client()
    headers = {"Idempotency-Key": "r-1"}
    client.post("/reports/1", json={}, headers=headers)
    client.post("/reports/1", json={}, headers=headers)
    with views_app.app_context():
        assert current_db().session.query(Job).count() == 1
    assert client.post("/reports/2", json={}, headers=headers).status_code == 422


def test_an_empty_idempotency_key_is_400(views_app: Flask) -> None:
    """An empty Idempotency-Key is refused, as create_and_enqueue refuses it; no job is stored."""
    client = views_app.test_client()
    for _ in range(2):
        response = client.post("/reports/1", json={}, headers={"Idempotency-Key": ""})
        assert response.status_code == 400
        assert "Idempotency-Key" in json_of(response)["errors"][0]["message"]
    with views_app.app_context():
        assert current_db().session.query(Job).count() == 0


@pytest.mark.parametrize(
    "prefer",
    [
        'x="respond-async", wait=5',
        "handling=strict; respond-async=, wait=5",
        "wait=5, foo;respond-async",
    ],
)
def test_respond_async_is_a_preference_not_a_substring(views_app: Flask, prefer: str) -> None:
    """Only a respond-async preference of its own asks for the 202; a word elsewhere does not."""
    response = views_app.test_client().post("/reports/2000", json={}, headers={"Prefer": prefer})
    assert response.status_code == 201
    assert response.headers["Preference-Applied"] == "wait=5"


def test_a_wait_that_ends_in_a_202_says_it_was_applied(make_app: AppFactory) -> None:
    """A job not processed within Prefer: wait gets the 202, with the wait it was given."""
    app = make_app(ASYNC_REQUEST_MAX_WAIT=1)

    @app.get("/explode")
    @asynchronous
    def explode() -> Any:
        raise RuntimeError("kaboom")

    client = app.test_client()
    response = client.get("/explode", headers={"Prefer": "wait=5"})
    assert response.status_code == 202
    assert response.headers["Preference-Applied"] == "wait=1"
    assert "Preference-Applied" not in client.get("/explode").headers


def test_worker_replays_only_asynchronous_views(views_app: Flask) -> None:
    """A stored request for an ordinary view is refused by the worker."""
    snapshot = {
        "method": "GET",
        "path": "/plain",
        "base_url": "http://localhost/",
        "query_string": "",
        "headers": {},
        "body": "",
    }
    with views_app.app_context():
        job = Job.create_and_enqueue(ViewWorker, snapshot)
        assert job.status.value == "failed"
        assert job.response is not None
        assert "is not an asynchronous view" in json.loads(job.response)["error"]


def test_raising_view_fails_the_job(make_app: AppFactory) -> None:
    """An unhandled exception in the replayed view fails the job, as a raising worker does."""
    app = make_app()

    @app.get("/explode")
    @asynchronous
    def explode() -> Any:
        raise RuntimeError("kaboom")

    response = app.test_client().get("/explode")
    assert response.status_code == 202
    reply = poll(app.test_client(), json_of(response)["token"]).json
    assert reply["status"] == "failed"
    assert reply["response"] == {"status_code": 500, "body": '{"error": "kaboom"}'}
