"""The JSON error envelope and its handlers, on the endpoint's urls and in the app's views."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, abort
from werkzeug.exceptions import MethodNotAllowed, NotFound, RequestEntityTooLarge

from flask_async_request import (
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidCallbackUrl,
    Job,
    accepted,
)
from flask_async_request.envelope import (
    UNAVAILABLE_RETRY_AFTER,
    envelope_of,
    error_answer,
    unavailable_answer,
)
from tests import workers
from tests.conftest import AppFactory, json_of


def test_error_answer_is_the_envelope_with_its_status_and_headers(app: Flask) -> None:
    """One message in ``errors``, the status given, and the headers given."""
    with app.test_request_context():
        body, status, headers = error_answer("Invalid token", 400, **{"X-Why": "expired"})
        assert body.get_json() == {"errors": [{"message": "Invalid token"}]}
        assert (status, headers) == (400, {"X-Why": "expired"})


def test_unavailable_answer_asks_to_come_back_later(app: Flask) -> None:
    """503 with Retry-After, the store named, no database detail."""
    with app.test_request_context():
        body, status, headers = unavailable_answer()
        assert status == 503
        assert headers == {"Retry-After": str(UNAVAILABLE_RETRY_AFTER)}
        assert body.get_json()["errors"][0]["message"].startswith("The job store is unavailable")


def test_an_http_error_becomes_the_envelope_with_its_headers(app: Flask) -> None:
    """Its name in sentence case, its code, and its headers but the content type (Allow)."""
    with app.test_request_context():
        body, status, headers = envelope_of(MethodNotAllowed(["GET", "DELETE"]))
        assert body.get_json() == {"errors": [{"message": "Method not allowed"}]}
        assert status == 405
        assert headers == {"Allow": "GET, DELETE"}
        assert envelope_of(NotFound())[1] == 404
        assert envelope_of(RequestEntityTooLarge())[0].get_json()["errors"][0]["message"] == (
            "Request entity too large"
        )


def test_an_http_error_with_its_own_response_keeps_it(app: Flask) -> None:
    """An error that carries a response (abort(response)) is answered with that response."""
    with app.test_request_context():
        response = app.response_class("teapot", status=418)
        assert envelope_of(NotFound(response=response)) is response


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (IdempotencyConflict("The key 'k' was used for job 1 with other arguments.", 1), 422),
        (InvalidCallbackUrl("callback_url is not an absolute http(s) url."), 400),
        (DatabaseUnavailable("Storing the job: the database is out of reach."), 503),
    ],
)
def test_the_librarys_errors_in_any_view_are_the_envelope(
    make_app: AppFactory, error: Exception, status: int
) -> None:
    """An app's own view that raises one of the library's errors answers it in the envelope."""
    app = make_app()

    @app.post("/start")
    def start() -> Any:
        raise error

    response = app.test_client().post("/start")
    assert response.status_code == status
    assert json_of(response)["errors"][0]["message"]
    if status == 503:
        assert response.headers["Retry-After"] == str(UNAVAILABLE_RETRY_AFTER)
    else:
        assert json_of(response)["errors"][0]["message"] == str(error)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/async_request/job/", 404),
        ("GET", "/async_request/", 404),
        ("GET", "/async_request", 404),
        ("GET", "/async_request/nothing/here", 404),
        ("POST", "/async_request/job", 405),
        ("PUT", "/async_request/job/abc", 405),
        ("PATCH", "/async_request/openapi.json", 405),
        ("GET", "/async_request/static/no-such-file.js", 404),
    ],
)
def test_every_error_under_the_prefix_is_the_envelope(
    client: Any, method: str, path: str, status: int
) -> None:
    """Unknown urls and methods under the prefix answer the JSON envelope, 405 with Allow."""
    response = client.open(path, method=method)
    assert response.status_code == status
    assert response.is_json
    assert response.json["errors"][0]["message"] in ("Not found", "Method not allowed")
    if status == 405:
        assert {"GET", "DELETE"} & set(response.headers["Allow"].split(", "))


@pytest.mark.parametrize("status", [406, 413, 415, 431])
def test_an_http_error_the_app_raises_under_the_prefix_is_the_envelope(
    make_app: AppFactory, status: int
) -> None:
    """An error the app's own hooks raise on the endpoint's urls is answered as JSON too."""
    app = make_app()

    @app.before_request
    def refuse() -> None:
        abort(status)

    client = app.test_client()
    for path in ("/async_request/job", "/async_request/job/abc", "/async_request/openapi.json"):
        response = client.get(path)
        assert response.status_code == status
        assert response.is_json, response.data[:100]
        assert json_of(response)["errors"][0]["message"]
    assert not client.get("/elsewhere").is_json


def test_the_apps_own_errors_stay_its_own(make_app: AppFactory) -> None:
    """Outside the prefix, 404 and 405 are the app's: its handlers, or Flask's HTML."""
    app = make_app()

    @app.post("/start")
    def start() -> Any:
        return accepted(Job.create_and_enqueue(workers.Echo))

    client = app.test_client()
    assert client.get("/start").status_code == 405
    assert not client.get("/start").is_json
    assert not client.get("/async_requestx").is_json
    assert not client.get("/nothing").is_json
